"""k8s-manifests/ checked without a cluster: schema, RBAC, probes, security, secrets.

Every document is validated strictly (unknown fields are errors) against the newest
Kubernetes the installed kubernetes-validate knows. The Role must grant exactly what
service/kube.py uses for the default templates, and the session pods the templates render
must pass the restricted Pod Security Standard's rules that can be checked statically.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service import bundle, kube, store
from service.config import REPO_ROOT, Settings

MANIFESTS = REPO_ROOT / "k8s-manifests"
KUSTOMIZATION = MANIFESTS / "kustomization.yaml"
EXAMPLE_SECRETS = MANIFESTS / "redis-credentials.example.yaml"
CONTROL_NAMESPACE = "session-manager"
SESSIONS_NAMESPACE = "sessions"
SESSION_ID = "s" + "a" * 16

# (Deployment, container) -> why it has no liveness/readiness probe. See worker.yaml.
NO_PROBES: dict[tuple[str, str], str] = {}  # (deployment, container) -> why it has none


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p != KUSTOMIZATION)


def _kustomization() -> dict[str, Any]:
    (doc,) = _documents(KUSTOMIZATION)
    return doc


def _deployed() -> list[dict[str, Any]]:
    """Every object `kubectl apply -k k8s-manifests` creates."""
    return [doc for name in _kustomization()["resources"] for doc in _documents(MANIFESTS / name)]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _deployed() if doc["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in _of_kind(kind) if doc["metadata"]["name"] == name]
    return found


def _all_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in _manifest_files():
        for index, doc in enumerate(_documents(path)):
            yield f"{path.name}#{index}:{doc.get('kind')}/{doc['metadata']['name']}", doc


def _session_bundle() -> bundle.Bundle:
    return bundle.render(SESSION_ID, Settings(auth_disabled=True), store.keda_keys(SESSION_ID))


def _configmap_data() -> dict[str, str]:
    return _one("ConfigMap", "session-manager-config")["data"]


# -- schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "doc"), [pytest.param(where, doc, id=where) for where, doc in _all_documents()]
)
def test_document_is_valid_for_the_newest_kubernetes(where: str, doc: dict[str, Any]) -> None:
    version = kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(part) for part in err.path)
        pytest.fail(f"{where} is not valid Kubernetes {version}: {path}: {err.message}")
    except kubernetes_validate.SchemaNotFoundError as err:
        pytest.fail(f"{where}: {err.message}")


def test_every_object_is_in_one_of_the_two_namespaces() -> None:
    for where, doc in _all_documents():
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] in (CONTROL_NAMESPACE, SESSIONS_NAMESPACE), where
        else:
            assert doc["metadata"].get("namespace") in (CONTROL_NAMESPACE, SESSIONS_NAMESPACE), (
                f"{where} has no explicit namespace"
            )


# -- kustomization --------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_except_the_example() -> None:
    listed = _kustomization()["resources"]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    expected = {p.name for p in _manifest_files()} - {EXAMPLE_SECRETS.name}
    assert set(listed) == expected
    assert EXAMPLE_SECRETS.exists()


def test_no_secret_with_a_literal_value_is_deployed() -> None:
    kustomization = _kustomization()
    assert "secretGenerator" not in kustomization, "secrets are created by hand, never generated"
    for doc in _deployed():
        if doc["kind"] == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), (
                f"Secret {doc['metadata']['name']} carries a literal value"
            )


def test_images_are_pinned() -> None:
    for deployment in _of_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{image}: pin a tag"


# -- RBAC -----------------------------------------------------------------------------------


def _resource_of(kind: bundle.KindRef) -> tuple[str, str]:
    """(API group, resource plural) of a kind: apps/v1 Deployment -> (apps, deployments)."""
    group = kind.api_version.rpartition("/")[0]
    return group, kind.kind.lower() + "s"


def test_role_grants_exactly_what_the_service_uses() -> None:
    kinds = _session_bundle().kinds()
    required = {
        (*_resource_of(kind), verb)
        for kind, verbs in kube.required_permissions(kinds).items()
        for verb in verbs
    }
    (role,) = _of_kind("Role")
    assert role["metadata"]["namespace"] == SESSIONS_NAMESPACE
    granted = set()
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        granted |= {
            (group, resource, verb)
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
    assert granted - required == set(), "the Role grants more than the service uses"
    assert required - granted == set(), "the Role misses permissions the service uses"
    assert {resource for _, resource, _ in required} == {
        "deployments", "services", "pods", "scaledobjects", "triggerauthentications",
    }


def test_role_is_bound_to_the_account_the_pods_run_as() -> None:
    assert not _of_kind("ClusterRole") and not _of_kind("ClusterRoleBinding")
    (binding,) = _of_kind("RoleBinding")
    (role,) = _of_kind("Role")
    (account,) = _of_kind("ServiceAccount")
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": account["metadata"]["namespace"],
    }]
    for name in ("session-manager", "session-manager-worker"):
        pod = _one("Deployment", name)["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is True, f"{name} needs the API"


# -- workloads ------------------------------------------------------------------------------


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    pod = deployment["spec"]["template"]["spec"]
    return pod["containers"] + pod.get("initContainers", [])


def test_every_deployment_has_probes_unless_exempted() -> None:
    seen_exemptions = set()
    for deployment in _of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            key = (name, container["name"])
            if key in NO_PROBES:
                seen_exemptions.add(key)
                continue
            assert "livenessProbe" in container, f"{key}: no livenessProbe"
            assert "readinessProbe" in container, f"{key}: no readinessProbe"
    assert seen_exemptions == set(NO_PROBES), "an exemption names a container that is gone"


def test_every_container_has_requests_and_limits() -> None:
    for deployment in _of_kind("Deployment"):
        for container in _containers(deployment):
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), (
                    f"{deployment['metadata']['name']}/{container['name']}: {bound}"
                )


def test_api_deployment_shape() -> None:
    api = _one("Deployment", "session-manager")
    spec = api["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = spec["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert {p["containerPort"] for p in container["ports"]} == {8080}
    preferred = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    worker = _one("Deployment", "session-manager-worker")
    (worker_container,) = worker["spec"]["template"]["spec"]["containers"]
    assert worker_container["image"] == container["image"]
    assert worker_container["command"] == ["python3", "-m", "service", "worker"]


def test_selectors_match_their_pods() -> None:
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in _of_kind("Deployment")
    }

    def selects(selector: dict[str, str]) -> list[str]:
        return [name for name, labels in pods.items() if selector.items() <= labels.items()]

    for deployment in _of_kind("Deployment"):
        assert selects(deployment["spec"]["selector"]["matchLabels"]) == [
            deployment["metadata"]["name"]
        ]
    assert selects(_one("Service", "session-manager")["spec"]["selector"]) == ["session-manager"]
    assert selects(_one("Service", "redis")["spec"]["selector"]) == ["redis"]
    for pdb in _of_kind("PodDisruptionBudget"):
        assert pdb["spec"]["minAvailable"] == 1
        assert len(selects(pdb["spec"]["selector"]["matchLabels"])) == 1
    assert selects(_one("PodDisruptionBudget", "session-manager")["spec"]["selector"][
        "matchLabels"]) == ["session-manager"]


def test_services_target_named_container_ports() -> None:
    for service, deployment in (("session-manager", "session-manager"), ("redis", "redis")):
        ports = {
            port["name"]
            for container in _containers(_one("Deployment", deployment))
            for port in container.get("ports", [])
        }
        for port in _one("Service", service)["spec"]["ports"]:
            assert port["targetPort"] in ports
    assert _one("Service", "session-manager")["spec"]["ports"][0]["port"] == 80


# -- Pod Security ---------------------------------------------------------------------------


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The restricted Pod Security Standard's rules that a manifest alone decides.

    https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted
    """
    problems = []
    pod_context = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field} is set")
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret"}
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            problems.append(f"volume {volume['name']}: {sorted(kinds - allowed_volumes)}")
    if pod_context.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    for container in pod["containers"] + pod.get("initContainers", []):
        name = container["name"]
        context = container.get("securityContext", {})
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{name}: runs as uid 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


def test_sessions_namespace_enforces_the_restricted_profile() -> None:
    namespace = _one("Namespace", SESSIONS_NAMESPACE)
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == "latest"


def test_rendered_session_deployment_meets_the_restricted_profile() -> None:
    (deployment,) = [o for o in _session_bundle().objects if o["kind"] == "Deployment"]
    assert deployment["metadata"]["namespace"] == SESSIONS_NAMESPACE
    assert restricted_violations(deployment["spec"]["template"]["spec"]) == []


@pytest.mark.parametrize("name", ["session-manager", "session-manager-worker", "redis"])
def test_control_plane_pods_are_locked_down(name: str) -> None:
    deployment = _one("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    # The control namespace enforces restricted too.
    assert restricted_violations(pod) == []
    assert pod["enableServiceLinks"] is False, "service links would inject REDIS_PORT=tcp://..."
    mounts = set()
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context.get("runAsNonRoot", pod["securityContext"].get("runAsNonRoot")) is True
        mounts |= {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"


# -- configuration and network --------------------------------------------------------------


def test_configmap_is_a_valid_configuration() -> None:
    data = _configmap_data()
    env = {**data, "API_KEYS": "k" * 32, "REDIS_PASSWORD": "not-the-real-one"}
    settings = Settings.from_env(env)
    settings.check_serving()
    assert settings.namespace == SESSIONS_NAMESPACE
    # The session bundle renders with the deployed settings, into the namespace the Role is in.
    rendered = bundle.render(SESSION_ID, settings, store.keda_keys(SESSION_ID))
    assert {o["metadata"]["namespace"] for o in rendered.objects} == {SESSIONS_NAMESPACE}
    assert settings.keda_redis_host == "redis.session-manager.svc.cluster.local"


def test_secrets_the_pods_read_are_the_documented_ones() -> None:
    documented = {
        (doc["metadata"]["namespace"], doc["metadata"]["name"], key)
        for doc in _documents(EXAMPLE_SECRETS)
        for key in doc["stringData"]
    }
    for deployment in _of_kind("Deployment"):
        namespace = deployment["metadata"]["namespace"]
        for container in _containers(deployment):
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert (namespace, ref["name"], ref["key"]) in documented, variable["name"]
    data = _configmap_data()
    # KEDA's TriggerAuthentication reads this Secret in the sessions namespace.
    assert (SESSIONS_NAMESPACE, data["REDIS_SECRET_NAME"], data["REDIS_SECRET_KEY"]) in documented


def test_session_pods_only_talk_to_the_control_plane_and_dns() -> None:
    (policy,) = [p for p in _of_kind("NetworkPolicy")
                 if p["metadata"]["namespace"] == SESSIONS_NAMESPACE]
    spec = policy["spec"]
    assert spec["podSelector"] == {}
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": Settings().user_pod_port}]
    for peer in ingress["from"]:
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": CONTROL_NAMESPACE
        }
    (egress,) = spec["egress"]
    assert {(p["protocol"], p["port"]) for p in egress["ports"]} == {("UDP", 53), ("TCP", 53)}
    for peer in egress["to"]:
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "kube-system"
        }


def test_redis_accepts_only_the_control_plane_and_keda() -> None:
    policy = _one("NetworkPolicy", "redis-ingress")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "redis"}
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    peers = [
        p.get("podSelector", {}).get("matchLabels") or p["namespaceSelector"]["matchLabels"]
        for p in rule["from"]
    ]
    assert peers == [
        {"app.kubernetes.io/name": "session-manager"},
        {"kubernetes.io/metadata.name": "keda"},
    ]
    redis_args = _one("Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert redis_args[redis_args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20, "gb": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def test_redis_memory_leaves_room_for_an_aof_rewrite_and_the_volume_for_its_files() -> None:
    """A rewrite forks: maxmemory at most half the container's limit, or the kernel kills Redis
    mid-rewrite; the volume holds the AOF and a rewrite's new files beside the old."""
    container = _one("Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    maxmemory = _bytes(args[args.index("--maxmemory") + 1])
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--appendonly") + 1] == "yes"
    limit = _bytes(container["resources"]["limits"]["memory"])
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"][
        "memory"]  # no overcommit for the one component holding every session
    assert maxmemory <= limit // 2, (maxmemory, limit)
    volume = _bytes(_one("PersistentVolumeClaim", "redis-data")["spec"]["resources"][
        "requests"]["storage"])
    assert volume >= 4 * maxmemory, (volume, maxmemory)
