"""The Helm chart (charts/session-manager) checked without a cluster.

`helm lint --strict` with its defaults and with every values file in ci/; each of those
renderings, and one with session templates given as values, validated and checked object by
object exactly like k8s-manifests/ (tests/deployed.py: strict schemas, KEDA's and
cert-manager's CRDs included, RBAC, Pod Security, settings the service accepts, Secrets that
exist); wrong values refused by values.schema.json or by the chart's own checks; k8s-manifests/
equal to the chart's rendering. helm is built from its Go module by
scripts/build-cluster-binaries.sh when missing, and a failed build is an error, never a skip.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import chart, paths
from service.core.config import REPO_ROOT
from service.core.config.environment import read_settings

from . import deployed as checks

CI_VALUES = sorted((chart.CHART / "ci").glob("*-values.yaml"))
LIGHT_TEMPLATES = REPO_ROOT / "templates-light"
WORKSPACE_TEMPLATES = REPO_ROOT / "templates-workspace"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way to install: values files, template files given with --set-file, and what the
    user makes by hand (Secrets and ConfigMaps the values name)."""

    name: str
    values: tuple[Path, ...] = ()
    set_files: tuple[tuple[str, Path], ...] = ()
    made_by_hand: frozenset[tuple[str, str]] = frozenset()
    sessions: str = "sessions"
    fullname: str = "session-manager"
    # Template files standing in for a ConfigMap made by hand (sessionTemplates.existingConfigMap).
    hand_templates: Path | None = None
    redis_url: str | None = None  # REDIS_URL as an existing Secret would hold it
    templates: Path = REPO_ROOT / "templates"  # the set the sessions' bundles come from


def _ci(name: str) -> Path:
    return chart.CHART / "ci" / f"{name}-values.yaml"


VARIANTS = [
    Variant("defaults"),
    Variant("manifests", (_ci("manifests"),), made_by_hand=frozenset({
        ("session-manager", "api-keys"), ("session-manager", "redis-credentials"),
        ("session-manager", "session-manager-scaler-tls"),
        ("sessions", "session-manager-scaler-client"),
    })),
    Variant("external-redis", (_ci("external-redis"),), made_by_hand=frozenset({
        ("session-manager", "managed-redis"), ("sessions", "managed-redis-password"),
    }), redis_url="rediss://:secret@redis.example.internal:6380/0"),
    Variant("external-redis-url", (_ci("external-redis-url"),), made_by_hand=frozenset({
        ("session-manager", "my-scaler-tls"), ("sessions", "my-scaler-client"),
    }), redis_url="rediss://:not-a-real-password@redis.example.internal:6380/2"),
    Variant("cert-manager", (_ci("cert-manager"),), sessions="agent-sessions"),
    Variant("ingress", (_ci("ingress"),), fullname="chat-control"),
    Variant("no-network-policies", (_ci("no-network-policies"),),
            hand_templates=LIGHT_TEMPLATES),
    Variant("redis-scaler", (_ci("redis-scaler"),)),
    Variant("templates-from-values", set_files=tuple(
        (f"sessionTemplates.files.{path.name.replace('.', chr(92) + '.')}", path)
        for path in sorted(LIGHT_TEMPLATES.glob("*.yaml")))),
    Variant("workspace", (_ci("workspace"),), set_files=tuple(
        (f"sessionTemplates.files.{path.name.replace('.', chr(92) + '.')}", path)
        for path in sorted(WORKSPACE_TEMPLATES.glob("*.yaml"))), templates=WORKSPACE_TEMPLATES),
]
BY_NAME = {variant.name: variant for variant in VARIANTS}


def test_every_ci_values_file_is_a_variant() -> None:
    assert {v for variant in VARIANTS for v in variant.values} == set(CI_VALUES)


@functools.cache
def _render(name: str) -> str:
    variant = BY_NAME[name]
    return chart.template(variant.values, set_files=dict(variant.set_files))


@functools.cache
def _deployed(name: str) -> checks.Deployed:
    variant = BY_NAME[name]
    objects = [doc for doc in yaml.safe_load_all(_render(name)) if doc]
    return checks.Deployed(objects, sessions=variant.sessions, fullname=variant.fullname)


variants = pytest.mark.parametrize("name", [v.name for v in VARIANTS])


# -- helm lint ------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(chart.CHART)] + (["--values", str(values)] if values else [])
    result = chart.helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_helm_is_the_built_one() -> None:
    result = subprocess.run([paths.helm(), "version", "--template", "{{ .Version }}"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == (paths.BIN_DIR / "helm.version").read_text().strip()


@variants
def test_helm_install_dry_run_without_a_cluster(name: str, tmp_path: Path) -> None:
    """The install path (kubeVersion, hooks, NOTES.txt) with no cluster to talk to."""
    variant = BY_NAME[name]
    args = ["install", chart.RELEASE, str(chart.CHART), "--namespace", chart.NAMESPACE,
            "--dry-run=client", "--kubeconfig", str(tmp_path / "none")]
    for path in variant.values:
        args += ["--values", str(path)]
    for key, path in variant.set_files:
        args += ["--set-file", f"{key}={path}"]
    result = chart.helm(*args)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.partition("\nNOTES:\n")[2]
    assert f"rollout status deployment/{variant.fullname}-worker" in notes
    assert "WARNING" not in notes


# -- every rendering, checked like k8s-manifests --------------------------------------------


@variants
def test_every_object_is_valid_for_the_newest_kubernetes(name: str) -> None:
    problems = {}
    for doc in _deployed(name).objects:
        found = checks.schema_problems(doc)
        if found:
            problems[_deployed(name).where(doc)] = found
    assert problems == {}


@variants
def test_objects_are_in_the_two_namespaces_and_images_pinned(name: str) -> None:
    checks.check_namespaces(_deployed(name))
    checks.check_images_pinned(_deployed(name))


@variants
def test_role_grants_exactly_what_the_service_uses(name: str) -> None:
    checks.check_role_grants_exactly_what_the_service_uses(_deployed(name),
                                                           BY_NAME[name].templates)
    checks.check_role_is_bound_to_the_account_the_pods_run_as(_deployed(name))


@variants
def test_workloads(name: str) -> None:
    deployed = _deployed(name)
    checks.check_probes(deployed)
    checks.check_requests_and_limits(deployed)
    checks.check_api_and_worker_shape(deployed)
    checks.check_selectors_match_their_pods(deployed)
    checks.check_services_target_named_container_ports(deployed)
    checks.check_control_plane_pods_are_locked_down(deployed)


def _templates_dir(name: str, tmp_path: Path) -> Path | None:
    """The session templates the pods would see at TEMPLATES_DIR, as local files."""
    variant, deployed = BY_NAME[name], _deployed(name)
    if variant.hand_templates:
        return variant.hand_templates
    configmap = deployed.find("ConfigMap", f"{variant.fullname}-session-templates")
    if configmap is None:
        return None
    for file, text in configmap["data"].items():
        (tmp_path / file).write_text(text, encoding="utf-8")
    return tmp_path


def _redis_url(name: str) -> str | None:
    variant, deployed = BY_NAME[name], _deployed(name)
    secret = deployed.find("Secret", f"{variant.fullname}-redis-url")
    if secret is not None:
        return base64.b64decode(secret["data"]["url"]).decode()
    return variant.redis_url


@variants
def test_settings_are_accepted_and_sessions_render_valid(name: str, tmp_path: Path) -> None:
    deployed = _deployed(name)
    settings = checks.settings_of(deployed, templates_dir=_templates_dir(name, tmp_path),
                                  redis_url=_redis_url(name))
    checks.check_settings_deploy_valid_sessions(deployed, settings)
    for deployment in (deployed.api, deployed.worker):
        env = {v["name"] for c in checks.containers(deployment) for v in c.get("env", [])}
        assert ("REDIS_URL" in env) == (_redis_url(name) is not None)
        assert ("REDIS_PASSWORD" in env) == (_redis_url(name) is None)


@variants
def test_every_secret_read_is_made_by_the_chart_or_named_by_the_values(name: str) -> None:
    checks.check_secrets_are_deployed_or_named(_deployed(name), set(BY_NAME[name].made_by_hand))


@variants
def test_network_policies(name: str) -> None:
    deployed = _deployed(name)
    if not deployed.of_kind("NetworkPolicy"):
        assert name == "no-network-policies"
        return
    checks.check_session_pods_only_talk_to_the_control_plane_and_dns(
        deployed, int(deployed.config["USER_POD_PORT"]))
    if deployed.find("Deployment", "redis"):
        checks.check_redis_accepts_only_the_control_plane_and_keda(deployed)
    scaler = deployed.one("NetworkPolicy", f"{deployed.fullname}-scaler-ingress")
    ports = {port["port"] for rule in scaler["spec"]["ingress"] for port in rule["ports"]}
    expected = {int(deployed.config["WORKER_HEALTH_PORT"])}
    if deployed.config["KEDA_SCALER"] == "push":
        expected.add(int(deployed.config["SCALER_ADDRESS"].rpartition(":")[2]))
    assert ports == expected


@variants
def test_bundled_redis_is_sized_for_aof_rewrites(name: str) -> None:
    deployed = _deployed(name)
    if deployed.find("Deployment", "redis") is None:
        assert "REDIS_HOST" not in deployed.config
        assert not deployed.of_kind("PersistentVolumeClaim")
        return
    checks.check_redis_memory_leaves_room_for_an_aof_rewrite(deployed)


# -- what the chart makes -------------------------------------------------------------------


def _secret_data(deployed: checks.Deployed, name: str, namespace: str) -> dict[str, str]:
    secret = deployed.one("Secret", name, namespace)
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def _openssl(*args: str, stdin: str = "") -> str:
    result = subprocess.run(["openssl", *args], input=stdin, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_generated_secrets_and_certificates(tmp_path: Path) -> None:
    deployed = _deployed("defaults")
    keys = _secret_data(deployed, "session-manager-api-keys", "session-manager")["keys"]
    assert len(keys) >= 16 and "," not in keys
    password = _secret_data(deployed, "session-manager-redis-credentials", "session-manager")
    assert len(password["password"]) >= 32
    server = _secret_data(deployed, "session-manager-scaler-tls", "session-manager")
    client = _secret_data(deployed, "session-manager-scaler-client", "sessions")
    assert server["ca.crt"] == client["ca.crt"], "one CA signs both sides"
    for side, data in (("server", server), ("client", client)):
        for key, text in data.items():
            (tmp_path / f"{side}-{key}").write_text(text)
        verified = _openssl("verify", "-CAfile", str(tmp_path / f"{side}-ca.crt"),
                            str(tmp_path / f"{side}-tls.crt"))
        assert verified.strip().endswith("OK")
    names = _openssl("x509", "-noout", "-ext", "subjectAltName", stdin=server["tls.crt"])
    host = deployed.config["SCALER_ADDRESS"].rpartition(":")[0]
    assert f"DNS:{host}" in names


def test_the_redis_scaler_gets_the_generated_password_in_the_sessions_namespace() -> None:
    deployed = _deployed("redis-scaler")
    name = deployed.config["REDIS_SECRET_NAME"]
    control = _secret_data(deployed, name, "session-manager")
    assert _secret_data(deployed, name, "sessions") == control
    assert deployed.find("Service", "session-manager-scaler") is None
    assert not any("scaler" in s["metadata"]["name"] for s in deployed.of_kind("Secret"))


def test_generated_secrets_come_only_with_generated_values() -> None:
    """Existing Secrets named in the values: the chart makes none of its own."""
    assert _deployed("manifests").of_kind("Secret") == []
    (api_keys,) = _deployed("external-redis").of_kind("Secret")  # no Redis Secret of its own
    assert api_keys["metadata"]["name"] == "session-manager-api-keys"


def test_cert_manager_issues_both_sides_from_one_issuer() -> None:
    deployed = _deployed("cert-manager")
    server = deployed.one("Certificate", "session-manager-scaler-tls", "session-manager")
    client = deployed.one("Certificate", "session-manager-scaler-client", "agent-sessions")
    assert server["spec"]["issuerRef"] == client["spec"]["issuerRef"]
    assert deployed.config["SCALER_ADDRESS"].rpartition(":")[0] in server["spec"]["dnsNames"]
    assert "client auth" in client["spec"]["usages"]
    assert not deployed.of_kind("Secret") or all(
        "scaler" not in s["metadata"]["name"] for s in deployed.of_kind("Secret"))
    assert deployed.find("Namespace", "agent-sessions") is None  # create: false


def test_ingress_and_service_type() -> None:
    deployed = _deployed("ingress")
    ingress = deployed.one("Ingress", "chat-control")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "sessions.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "chat-control", "port": {"name": "http"}}
    service = deployed.one("Service", "chat-control")
    assert service["spec"]["type"] == "LoadBalancer"
    assert deployed.config["TRUSTED_PROXIES"] == "1"
    assert deployed.api["spec"]["replicas"] == 3
    assert deployed.api["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert deployed.config["USER_POD_IMAGE"] == "registry.example.com/platform/agent:2026.12.1"


def test_session_templates_from_values_are_mounted_at_templates_dir() -> None:
    deployed = _deployed("templates-from-values")
    configmap = deployed.one("ConfigMap", "session-manager-session-templates")
    assert configmap["data"] == {p.name: p.read_text() for p in LIGHT_TEMPLATES.glob("*.yaml")}
    for deployment in (deployed.api, deployed.worker):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["session-templates"] == deployed.config["TEMPLATES_DIR"]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert "checksum/session-templates" in annotations


def _pod_annotations(rendered: str) -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: doc["spec"]["template"]["metadata"].get("annotations", {})
            for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "Deployment"}


def test_a_changed_setting_rolls_the_api_and_the_worker_and_nothing_else() -> None:
    """`helm upgrade` rolls a Deployment only when its pod template changes."""
    before = _pod_annotations(_render("manifests"))
    after = _pod_annotations(chart.template(
        [_ci("manifests")], set_values={"config.LOG_LEVEL": "DEBUG"}))
    assert after["redis"] == before["redis"]
    for name in ("session-manager", "session-manager-worker"):
        assert after[name]["checksum/config"] != before[name]["checksum/config"], name


# -- the values schema and the chart's own checks -------------------------------------------


@pytest.mark.parametrize(("setting", "message"), [
    ("config.SESSION_TTL=abc", "/config/SESSION_TTL': got string, want integer"),
    ("config.IDLE_TIMEOUT=0", "/config/IDLE_TIMEOUT"),
    ("config.LOG_LEVEL=LOUD", "/config/LOG_LEVEL"),
    ("config.NO_SUCH_SETTING=1", "additional properties 'NO_SUCH_SETTING' not allowed"),
    ("config.NAMESPACE=elsewhere", "/config/NAMESPACE"),
    ("config.RATE_LIMIT_CHAT=lots", "/config/RATE_LIMIT_CHAT"),
    ("api.replicas=two", "/api/replicas': got string, want integer"),
    ("api.service.type=Internal", "/api/service/type"),
    ("image.tag=latest", "/image/tag"),
    ("namespaces.sessions.name=Not_A_Name", "/namespaces/sessions/name"),
    ("scaler.tls.source=vault", "/scaler/tls/source"),
    ("redis.bundled.maxmemory=half", "/redis/bundled/maxmemory"),
    ("containerSecurityContext.allowPrivilegeEscalation=true",
     "/containerSecurityContext/allowPrivilegeEscalation"),
    ("worker.replica=3", "additional properties 'replica' not allowed"),
])
def test_a_wrong_value_fails_against_the_schema(setting: str, message: str) -> None:
    key, _, value = setting.partition("=")
    with pytest.raises(chart.ChartError) as failure:
        chart.template(set_values={key: value})
    assert "values don't meet the specifications of the schema" in str(failure.value)
    assert message in str(failure.value)


def test_a_wrong_value_fails_helm_lint_too() -> None:
    result = chart.helm("lint", "--strict", str(chart.CHART), "--set", "config.SESSION_TTL=abc")
    assert result.returncode != 0
    assert "/config/SESSION_TTL" in result.stdout + result.stderr


@pytest.mark.parametrize(("values", "message"), [
    ({"config.KEDA_COOLDOWN_PERIOD": "200"}, "KEDA_COOLDOWN_PERIOD must be smaller"),
    ({"config.ARCHIVE_AFTER_SECONDS": "60"}, "ARCHIVE_AFTER_SECONDS must be 0"),
    ({"redis.bundled.enabled": "false"}, "set redis.external.url or redis.external."),
    ({"redis.external.url": "redis://r:6379/0"}, "disable the bundled Redis"),
    ({"redis.bundled.enabled": "false", "redis.external.url": "redis://r:6379/0",
      "config.KEDA_SCALER": "redis"}, "set redis.auth.password or redis.auth.existingSecret"),
    ({"scaler.tls.source": "existingSecret"}, "set scaler.tls.existingServerSecret"),
    ({"scaler.tls.source": "certManager"}, "set scaler.tls.certManager.issuerRef.name"),
    ({"api.replicas": "1"}, "api.podDisruptionBudget.minAvailable must be below api.replicas"),
    ({"api.ingress.enabled": "true"}, "set api.ingress.host"),
    ({"sessionTemplates.existingConfigMap": "x", "sessionTemplates.files.a\\.yaml": "x"},
     "set files or existingConfigMap, not both"),
])
def test_a_contradiction_fails_the_chart(values: dict[str, str], message: str) -> None:
    with pytest.raises(chart.ChartError) as failure:
        chart.template(set_values=values)
    assert message in str(failure.value)


def _settings_the_service_reads() -> set[str]:
    """Every environment variable read_settings looks at."""
    seen: set[str] = set()

    class Recording(dict):
        def get(self, key: str, default: Any = None) -> Any:
            seen.add(key)
            return super().get(key, default)

        def __getitem__(self, key: str) -> Any:
            seen.add(key)
            return super().__getitem__(key)

    read_settings(Recording())
    return seen


def test_the_schema_knows_every_setting_of_the_service() -> None:
    """config's schema lists exactly what the service reads: a setting added to the service
    needs its type in values.schema.json (unknown names fail there, catching typos)."""
    schema = json.loads((chart.CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]
    read = _settings_the_service_reads()
    rate_limits = {name for name in read if name.startswith("RATE_LIMIT_")}
    assert set(config["properties"]) == read - rate_limits
    assert list(config["patternProperties"]) == ["^RATE_LIMIT_[A-Z]+$"]
    assert config["additionalProperties"] is False


# Kubernetes' own structures: documented as a whole, not field by field.
FREE_FORM = {"resources", "podSecurityContext", "containerSecurityContext"}


def test_every_value_is_documented_in_values_yaml() -> None:
    """Each field of values.yaml has a comment right above it (or is inside a documented
    map), and each is in the schema."""
    lines = (chart.CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((chart.CHART / "values.schema.json").read_text())
    undocumented, unknown = [], []
    stack: list[tuple[int, str, dict | None]] = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")):
            continue  # comments, blank lines, list items
        indent = len(line) - len(line.lstrip())
        key = stripped.split(":", 1)[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][2] if stack else schema
        if parent is None:  # inside a free-form map or list (resources, annotations...)
            continue
        node = parent.get("properties", {}).get(key)
        if node is None:
            unknown.append(".".join([*(s[1] for s in stack), key]))
            continue
        previous = lines[index - 1].strip()
        if not previous.startswith("#"):
            undocumented.append(".".join([*(s[1] for s in stack), key]))
        free_form = "properties" not in node or key in FREE_FORM
        stack.append((indent, key, None if free_form else node))
    assert unknown == [], "values the schema does not know"
    assert undocumented == [], "values without a comment above them"


# -- k8s-manifests/ is the chart's rendering ------------------------------------------------


def test_k8s_manifests_are_the_charts_rendering() -> None:
    assert chart.drift() == [], "run scripts/render-manifests.sh"


def test_k8s_manifests_render_every_template_that_renders_with_defaults() -> None:
    rendered = set(chart.manifests())
    kustomization = yaml.safe_load((chart.MANIFESTS / "kustomization.yaml").read_text())
    assert rendered == set(kustomization["resources"])
    assert {p.name for p in chart.generated_files()} == rendered


def test_kubectl_kustomize_builds_the_charts_objects() -> None:
    """`kubectl apply -k k8s-manifests` applies exactly what the chart renders."""
    kubectl = paths.binary("kubectl", build_part="kube")
    built = subprocess.run([kubectl, "kustomize", str(chart.MANIFESTS)], capture_output=True,
                           text=True, check=True).stdout

    def key(doc: dict[str, Any]) -> tuple[str, str, str]:
        return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]

    from_kustomize = {key(doc): doc for doc in yaml.safe_load_all(built) if doc}
    from_chart = {key(doc): doc for doc in _deployed("manifests").objects}
    assert from_kustomize == from_chart

