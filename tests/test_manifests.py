"""k8s-manifests/ checked without a cluster: schema, RBAC, probes, security, secrets.

The checks themselves live in tests/deployed.py and run on every rendering of the Helm chart
too (tests/test_chart.py, which also fails when these files and the chart's rendering with its
defaults differ). What is particular to the files: the kustomization lists them all, they
carry no secret, and the Secrets they read are the documented ones made by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.core.config import REPO_ROOT, Settings

from . import deployed as checks

MANIFESTS = REPO_ROOT / "k8s-manifests"
KUSTOMIZATION = MANIFESTS / "kustomization.yaml"
EXAMPLE_SECRETS = MANIFESTS / "redis-credentials.example.yaml"
SESSIONS_NAMESPACE = "sessions"

# (Deployment, container) -> why it has no liveness/readiness probe.
NO_PROBES: dict[tuple[str, str], str] = {}


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p != KUSTOMIZATION)


def _kustomization() -> dict[str, Any]:
    (doc,) = _documents(KUSTOMIZATION)
    return doc


def _deployed() -> checks.Deployed:
    """Every object `kubectl apply -k k8s-manifests` creates."""
    return checks.Deployed([doc for name in _kustomization()["resources"]
                            for doc in _documents(MANIFESTS / name)])


def _all_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in _manifest_files():
        for index, doc in enumerate(_documents(path)):
            yield f"{path.name}#{index}:{doc.get('kind')}/{doc['metadata']['name']}", doc


def _made_by_hand() -> set[tuple[str, str]]:
    """(namespace, name) of the Secrets README.md has users create (the example's shape)."""
    return {(doc["metadata"]["namespace"], doc["metadata"]["name"])
            for doc in _documents(EXAMPLE_SECRETS)} | {
        ("session-manager", "session-manager-scaler-tls"),
        (SESSIONS_NAMESPACE, "session-manager-scaler-client"),
    }


# -- schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "doc"), [pytest.param(where, doc, id=where) for where, doc in _all_documents()]
)
def test_document_is_valid_for_the_newest_kubernetes(where: str, doc: dict[str, Any]) -> None:
    assert checks.schema_problems(doc) == [], where


def test_every_object_is_in_one_of_the_two_namespaces() -> None:
    checks.check_namespaces(checks.Deployed([doc for _, doc in _all_documents()]))


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
    for doc in _deployed().objects:
        if doc["kind"] == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), (
                f"Secret {doc['metadata']['name']} carries a literal value"
            )


def test_images_are_pinned() -> None:
    checks.check_images_pinned(_deployed())


# -- RBAC -----------------------------------------------------------------------------------


def test_role_grants_exactly_what_the_service_uses() -> None:
    checks.check_role_grants_exactly_what_the_service_uses(_deployed())


def test_role_is_bound_to_the_account_the_pods_run_as() -> None:
    checks.check_role_is_bound_to_the_account_the_pods_run_as(_deployed())


# -- workloads ------------------------------------------------------------------------------


def test_every_deployment_has_probes_unless_exempted() -> None:
    checks.check_probes(_deployed(), NO_PROBES)


def test_every_container_has_requests_and_limits() -> None:
    checks.check_requests_and_limits(_deployed())


def test_api_deployment_shape() -> None:
    deployed = _deployed()
    assert deployed.api["spec"]["replicas"] == 2
    checks.check_api_and_worker_shape(deployed)


def test_selectors_match_their_pods() -> None:
    deployed = _deployed()
    checks.check_selectors_match_their_pods(deployed)
    assert deployed.one("Service", "redis")["spec"]["selector"] == {
        "app.kubernetes.io/name": "redis"}


def test_services_target_named_container_ports() -> None:
    deployed = _deployed()
    checks.check_services_target_named_container_ports(deployed)
    assert deployed.one("Service", "session-manager")["spec"]["ports"][0]["port"] == 80


# -- Pod Security ---------------------------------------------------------------------------


def test_sessions_namespace_enforces_the_restricted_profile() -> None:
    namespace = _deployed().one("Namespace", SESSIONS_NAMESPACE)
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == "latest"


def test_rendered_session_deployment_meets_the_restricted_profile() -> None:
    (deployment,) = [o for o in checks.session_bundle().objects if o["kind"] == "Deployment"]
    assert deployment["metadata"]["namespace"] == SESSIONS_NAMESPACE
    assert checks.restricted_violations(deployment["spec"]["template"]["spec"]) == []


def test_control_plane_pods_are_locked_down() -> None:
    deployed = _deployed()
    assert {d["metadata"]["name"] for d in deployed.of_kind("Deployment")} == {
        "session-manager", "session-manager-worker", "redis"}
    checks.check_control_plane_pods_are_locked_down(deployed)


# -- configuration and network --------------------------------------------------------------


def test_configmap_is_a_valid_configuration() -> None:
    deployed = _deployed()
    settings = checks.settings_of(deployed)
    checks.check_settings_deploy_valid_sessions(deployed, settings)
    assert settings.keda_redis_host == "redis.session-manager.svc.cluster.local"


def test_secrets_the_pods_read_are_the_documented_ones() -> None:
    documented = {
        (doc["metadata"]["namespace"], doc["metadata"]["name"], key)
        for doc in _documents(EXAMPLE_SECRETS)
        for key in doc["stringData"]
    }
    deployed = _deployed()
    checks.check_secrets_are_deployed_or_named(deployed, _made_by_hand())
    for namespace, name, key in checks.secrets_read(deployed):
        if "scaler" not in name:  # the scaler's: made by scripts/scaler-certs.sh (README)
            assert (namespace, name, key) in documented, (namespace, name, key)
    data = deployed.config
    # KEDA's TriggerAuthentication reads this Secret in the sessions namespace (redis scaler).
    assert (SESSIONS_NAMESPACE, data["REDIS_SECRET_NAME"], data["REDIS_SECRET_KEY"]) in documented


def test_session_pods_only_talk_to_the_control_plane_and_dns() -> None:
    checks.check_session_pods_only_talk_to_the_control_plane_and_dns(
        _deployed(), Settings().user_pod_port)


def test_redis_accepts_only_the_control_plane_and_keda() -> None:
    deployed = _deployed()
    checks.check_redis_accepts_only_the_control_plane_and_keda(deployed)
    policy = deployed.one("NetworkPolicy", "redis-ingress")
    assert policy["spec"]["ingress"][0]["from"][1]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "keda"}


def test_redis_memory_leaves_room_for_an_aof_rewrite_and_the_volume_for_its_files() -> None:
    checks.check_redis_memory_leaves_room_for_an_aof_rewrite(_deployed())
