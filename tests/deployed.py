"""Checks of a deployment's objects, without a cluster: the same ones for k8s-manifests/
(test_manifests.py) and for every rendering of the Helm chart (test_chart.py).

Each check takes the objects as `Deployed` and fails with an assertion naming the object.
Every object is validated strictly (unknown fields are errors): built-in kinds against the
newest Kubernetes the installed kubernetes-validate knows, custom resources (KEDA's,
cert-manager's) against their CRDs; a kind with no schema at all fails too. The Role must
grant exactly what service.kube uses, and the pods must pass the restricted Pod Security
Standard's rules that can be checked statically.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devcluster import paths
from service import bundle, kube, store
from service.bundle import validate
from service.core import config
from service.core.config import REPO_ROOT, Settings

SESSION_ID = "s" + "a" * 16
# Dummy secret values for reading a ConfigMap as settings: never deployed anywhere.
TEST_API_KEYS = "k" * 32
TEST_REDIS_PASSWORD = "not-the-real-one"


@dataclasses.dataclass(frozen=True)
class Deployed:
    """The objects one deployment creates, and the names it was made with."""

    objects: list[dict[str, Any]]
    control: str = "session-manager"  # namespace of the API, worker and Redis
    sessions: str = "sessions"  # namespace of the session bundles
    fullname: str = "session-manager"  # name of the API Deployment; the worker's is -worker

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.objects if doc["kind"] == kind]

    def find(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name
                 and namespace in (None, doc["metadata"].get("namespace"))]
        assert len(found) <= 1, f"{kind}/{name} twice"
        return found[0] if found else None

    def one(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        found = self.find(kind, name, namespace)
        assert found is not None, f"no {kind}/{name}"
        return found

    @property
    def api(self) -> dict[str, Any]:
        return self.one("Deployment", self.fullname)

    @property
    def worker(self) -> dict[str, Any]:
        return self.one("Deployment", f"{self.fullname}-worker")

    @property
    def config(self) -> dict[str, str]:
        return self.one("ConfigMap", f"{self.fullname}-config")["data"]

    def where(self, doc: dict[str, Any]) -> str:
        return f"{doc['kind']}/{doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}"


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    pod = deployment["spec"]["template"]["spec"]
    return pod["containers"] + pod.get("initContainers", [])


# -- schema ---------------------------------------------------------------------------------


@functools.cache
def custom_resource_definitions() -> tuple[dict, ...]:
    """KEDA's and cert-manager's CRDs, from their modules (built by the build script)."""
    return (*paths.keda_crds(), *paths.cert_manager_crds())


def schema_problems(doc: dict[str, Any]) -> list[str]:
    """Why `doc` would not pass the API server: strict schemas; no schema is a problem too."""
    return [f"{path}: {message}" for path, message, *_ in
            validate.object_problems(doc, list(custom_resource_definitions()))]


# -- namespaces, images ---------------------------------------------------------------------


def check_namespaces(deployed: Deployed) -> None:
    for doc in deployed.objects:
        where = deployed.where(doc)
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] in (deployed.control, deployed.sessions), where
            labels = doc["metadata"]["labels"]
            assert labels["pod-security.kubernetes.io/enforce"] == "restricted", where
            assert labels["pod-security.kubernetes.io/enforce-version"] == "latest", where
        else:
            assert doc["metadata"].get("namespace") in (deployed.control, deployed.sessions), (
                f"{where} has no explicit namespace, or another one")


def check_images_pinned(deployed: Deployed) -> None:
    for deployment in deployed.of_kind("Deployment"):
        for container in containers(deployment):
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{image}: pin a tag"


# -- RBAC -----------------------------------------------------------------------------------


def _resource_of(kind: bundle.KindRef) -> tuple[str, str]:
    """(API group, resource plural) of a kind: apps/v1 Deployment -> (apps, deployments)."""
    group = kind.api_version.rpartition("/")[0]
    return group, kind.kind.lower() + "s"


def session_bundle(settings: Settings | None = None) -> bundle.Bundle:
    return bundle.render(SESSION_ID, settings or Settings(auth_disabled=True),
                         store.keda_keys(SESSION_ID))


def check_role_grants_exactly_what_the_service_uses(
        deployed: Deployed, templates: Path = REPO_ROOT / "templates") -> None:
    """The Role grants the verbs service.kube uses on the kinds of the sessions' template set,
    no more and no less."""
    kinds = session_bundle(Settings(auth_disabled=True, templates_dir=templates)).kinds()
    required = {
        (*_resource_of(kind), verb)
        for kind, verbs in kube.required_permissions(kinds).items()
        for verb in verbs
    }
    (role,) = deployed.of_kind("Role")
    assert role["metadata"]["namespace"] == deployed.sessions
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
    assert {"deployments", "pods", "scaledobjects", "triggerauthentications"} <= {
        resource for _, resource, _ in required}


def check_role_is_bound_to_the_account_the_pods_run_as(deployed: Deployed) -> None:
    assert not deployed.of_kind("ClusterRole") and not deployed.of_kind("ClusterRoleBinding")
    (binding,) = deployed.of_kind("RoleBinding")
    (role,) = deployed.of_kind("Role")
    (account,) = deployed.of_kind("ServiceAccount")
    assert account["metadata"]["namespace"] == deployed.control
    assert account["automountServiceAccountToken"] is False
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": account["metadata"]["namespace"],
    }]
    for deployment in (deployed.api, deployed.worker):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is True, (
            f"{deployment['metadata']['name']} needs the API")


# -- workloads ------------------------------------------------------------------------------


def check_probes(deployed: Deployed,
                 no_probes: Mapping[tuple[str, str], str] | None = None) -> None:
    """Every container has liveness and readiness probes, unless `no_probes` says why not."""
    no_probes = no_probes or {}
    seen_exemptions = set()
    for deployment in deployed.of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            key = (name, container["name"])
            if key in no_probes:
                seen_exemptions.add(key)
                continue
            assert "livenessProbe" in container, f"{key}: no livenessProbe"
            assert "readinessProbe" in container, f"{key}: no readinessProbe"
    assert seen_exemptions == set(no_probes), "an exemption names a container that is gone"


def check_requests_and_limits(deployed: Deployed) -> None:
    for deployment in deployed.of_kind("Deployment"):
        for container in containers(deployment):
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), (
                    f"{deployment['metadata']['name']}/{container['name']}: {bound}"
                )


def check_api_and_worker_shape(deployed: Deployed) -> None:
    spec = deployed.api["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = spec["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert {p["containerPort"] for p in container["ports"]} == {8080}
    preferred = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    (worker_container,) = deployed.worker["spec"]["template"]["spec"]["containers"]
    assert worker_container["image"] == container["image"]
    assert worker_container["command"] == ["python3", "-m", "service", "worker"]
    assert deployed.worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def check_selectors_match_their_pods(deployed: Deployed) -> None:
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in deployed.of_kind("Deployment")
    }

    def selects(selector: dict[str, str]) -> list[str]:
        return [name for name, labels in pods.items() if selector.items() <= labels.items()]

    for deployment in deployed.of_kind("Deployment"):
        assert selects(deployment["spec"]["selector"]["matchLabels"]) == [
            deployment["metadata"]["name"]
        ]
    for service in deployed.of_kind("Service"):
        assert len(selects(service["spec"]["selector"])) == 1, deployed.where(service)
    assert selects(deployed.one("Service", deployed.fullname)["spec"]["selector"]) == [
        deployed.fullname]
    for pdb in deployed.of_kind("PodDisruptionBudget"):
        (target,) = selects(pdb["spec"]["selector"]["matchLabels"])
        replicas = deployed.one("Deployment", target)["spec"]["replicas"]
        assert 1 <= pdb["spec"]["minAvailable"] < replicas, (
            f"{deployed.where(pdb)}: minAvailable must leave a drain room to evict")


def check_services_target_named_container_ports(deployed: Deployed) -> None:
    pods = {d["metadata"]["name"]: d for d in deployed.of_kind("Deployment")}
    for service in deployed.of_kind("Service"):
        (target,) = [d for d in pods.values() if service["spec"]["selector"].items()
                     <= d["spec"]["template"]["metadata"]["labels"].items()]
        ports = {port["name"] for container in containers(target)
                 for port in container.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, deployed.where(service)


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


def check_control_plane_pods_are_locked_down(deployed: Deployed) -> None:
    for deployment in deployed.of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        # The control namespace enforces restricted too.
        assert restricted_violations(pod) == [], name
        assert pod["enableServiceLinks"] is False, (
            f"{name}: service links would inject REDIS_PORT=tcp://...")
        mounts = set()
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context.get("runAsNonRoot", pod["securityContext"].get("runAsNonRoot")), name
            mounts |= {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{name}: a read-only root filesystem needs a writable /tmp"


# -- configuration --------------------------------------------------------------------------


def settings_of(deployed: Deployed, *, templates_dir: Path | None = None,
                redis_url: str | None = None) -> Settings:
    """The settings the API would start with: the ConfigMap, dummy secrets, and (when the
    ConfigMap points TEMPLATES_DIR at a mount) `templates_dir` standing in for the mount."""
    env = {**deployed.config, "API_KEYS": TEST_API_KEYS, "REDIS_PASSWORD": TEST_REDIS_PASSWORD}
    if redis_url:
        env["REDIS_URL"] = redis_url
    if "TEMPLATES_DIR" in env:
        assert templates_dir is not None, "TEMPLATES_DIR is mounted: give the files"
        env["TEMPLATES_DIR"] = str(templates_dir)
    settings = config.from_env(env)
    settings.check_serving()
    return settings


def check_settings_deploy_valid_sessions(deployed: Deployed, settings: Settings) -> None:
    """The session bundle renders with the deployed settings into the namespace the Role is in,
    every object valid (KEDA's CRDs included) and every pod within the restricted profile."""
    assert settings.namespace == deployed.sessions
    rendered = session_bundle(settings)
    assert {o["metadata"]["namespace"] for o in rendered.objects} == {deployed.sessions}
    problems = validate.validate_bundle(rendered, list(custom_resource_definitions()))
    assert [str(p) for p in problems] == []
    for obj in rendered.objects:
        if obj["kind"] == "Deployment":
            assert restricted_violations(obj["spec"]["template"]["spec"]) == []
    (role,) = deployed.of_kind("Role")
    granted = {resource for rule in role["rules"] for resource in rule["resources"]}
    assert {kind.kind.lower() + "s" for kind in rendered.kinds()} <= granted


def secrets_read(deployed: Deployed) -> set[tuple[str, str, str | None]]:
    """(namespace, Secret, key) that pods read (key None: a whole-Secret volume), and the ones
    KEDA reads in the sessions namespace for every session (SCALER_SECRET_NAME, and
    REDIS_SECRET_NAME with the redis scaler)."""
    read: set[tuple[str, str, str | None]] = set()
    for deployment in deployed.of_kind("Deployment"):
        namespace = deployment["metadata"]["namespace"]
        for container in containers(deployment):
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    read.add((namespace, ref["name"], ref["key"]))
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                read.add((namespace, volume["secret"]["secretName"], None))
    config = deployed.config
    if config.get("KEDA_SCALER", "push") == "push":
        for key in ("ca.crt", "tls.crt", "tls.key"):
            read.add((deployed.sessions, config["SCALER_SECRET_NAME"], key))
    else:
        read.add((deployed.sessions, config["REDIS_SECRET_NAME"], config["REDIS_SECRET_KEY"]))
    return read


def check_secrets_are_deployed_or_named(deployed: Deployed,
                                        made_by_hand: set[tuple[str, str]]) -> None:
    """Every Secret read is in the deployment (a Secret with that key, or a cert-manager
    Certificate writing it) or among `made_by_hand` (namespace, name) the user creates."""
    present: dict[tuple[str, str], set[str]] = {}
    for secret in deployed.of_kind("Secret"):
        meta = secret["metadata"]
        present[meta["namespace"], meta["name"]] = set(secret.get("data", {}))
    for certificate in deployed.of_kind("Certificate"):
        present[certificate["metadata"]["namespace"], certificate["spec"]["secretName"]] = {
            "ca.crt", "tls.crt", "tls.key"}
    for namespace, name, key in sorted(secrets_read(deployed), key=str):
        if (namespace, name) in made_by_hand:
            continue
        assert (namespace, name) in present, f"nothing makes Secret {namespace}/{name}"
        assert key is None or key in present[namespace, name], f"{namespace}/{name} lacks {key}"
    unused = {(ns, name) for ns, name in present} - {(ns, name) for ns, name, _ in
                                                      secrets_read(deployed)}
    assert unused == set(), "Secrets nothing reads"


# -- network --------------------------------------------------------------------------------


def check_session_pods_only_talk_to_the_control_plane_and_dns(deployed: Deployed,
                                                              user_pod_port: int) -> None:
    (policy,) = [p for p in deployed.of_kind("NetworkPolicy")
                 if p["metadata"]["namespace"] == deployed.sessions]
    spec = policy["spec"]
    assert spec["podSelector"] == {}
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": user_pod_port}]
    for peer in ingress["from"]:
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": deployed.control
        }
    (egress,) = spec["egress"]
    assert {(p["protocol"], p["port"]) for p in egress["ports"]} == {("UDP", 53), ("TCP", 53)}
    for peer in egress["to"]:
        assert set(peer["namespaceSelector"]["matchLabels"]) == {"kubernetes.io/metadata.name"}


def check_redis_accepts_only_the_control_plane_and_keda(deployed: Deployed,
                                                        redis: str = "redis") -> None:
    policy = deployed.one("NetworkPolicy", f"{redis}-ingress")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "redis"}
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    peers = [
        p.get("podSelector", {}).get("matchLabels") or p["namespaceSelector"]["matchLabels"]
        for p in rule["from"]
    ]
    assert peers[0] == {"app.kubernetes.io/name": "session-manager"}
    assert set(peers[1]) == {"kubernetes.io/metadata.name"} and len(peers) == 2
    args = deployed.one("Deployment", redis)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20, "gb": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def check_redis_memory_leaves_room_for_an_aof_rewrite(deployed: Deployed,
                                                      redis: str = "redis") -> None:
    """A rewrite forks: maxmemory at most half the container's limit, or the kernel kills Redis
    mid-rewrite; the volume holds the AOF and a rewrite's new files beside the old."""
    container = deployed.one("Deployment", redis)["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    maxmemory = _bytes(args[args.index("--maxmemory") + 1])
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--appendonly") + 1] == "yes"
    limit = _bytes(container["resources"]["limits"]["memory"])
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"][
        "memory"]  # no overcommit for the one component holding every session
    assert maxmemory <= limit // 2, (maxmemory, limit)
    volume = _bytes(deployed.one("PersistentVolumeClaim", f"{redis}-data")["spec"]["resources"][
        "requests"]["storage"])
    assert volume >= 4 * maxmemory, (volume, maxmemory)
