"""Rendering: pure, no cluster. What a template author and a cluster operator would notice."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from service import bundle, store
from service.core import config, names
from service.core.config import REPO_ROOT, ConfigError, Settings
from service.core.errors import BundleError

SESSION = "s" + "abcdefgh234567ab"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture
def settings() -> Settings:
    return Settings(auth_disabled=True, namespace="sessions")


def render(settings: Settings, session_id: str = SESSION) -> bundle.Bundle:
    return bundle.render(session_id, settings, store.keda_keys(session_id))


def by_kind(rendered: bundle.Bundle) -> dict[str, dict]:
    return {obj["kind"]: obj for obj in rendered.objects}


def test_default_bundle_has_the_four_kinds_in_dependency_order(settings):
    kinds = [obj["kind"] for obj in render(settings).objects]
    assert kinds == ["TriggerAuthentication", "Deployment", "Service", "ScaledObject"]


def test_every_object_carries_both_labels_and_the_namespace(settings):
    for obj in render(settings).objects:
        labels = obj["metadata"]["labels"]
        assert labels[names.MANAGED_BY_LABEL] == "session-manager"
        assert labels[names.SESSION_LABEL] == SESSION
        assert obj["metadata"]["namespace"] == "sessions"
    pod_labels = by_kind(render(settings))["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[names.SESSION_LABEL] == SESSION


def test_names_are_dns_1035_and_within_limits(settings):
    for _ in range(50):
        session_id = names.new_session_id()
        for obj in render(settings, session_id).objects:
            name = obj["metadata"]["name"]
            assert DNS_1035.match(name), name
            limit = 54 if obj["kind"] == "ScaledObject" else 63
            assert len(name) <= limit
            assert len(f"keda-hpa-{name}") <= 63 or obj["kind"] != "ScaledObject"


def test_deployment_leaves_replicas_to_keda_and_is_locked_down(settings):
    deployment = by_kind(render(settings))["Deployment"]
    assert "replicas" not in deployment["spec"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["ports"][0]["containerPort"] == 1111
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"},
                                      "limits": {"cpu": "500m", "memory": "512Mi"}}
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["SESSION_ID"] == SESSION
    assert not any("REDIS" in name for name in env)  # pods get no Redis credentials


def test_service_sets_protocol_on_every_port(settings):
    service = by_kind(render(settings))["Service"]
    assert all(port["protocol"] == "TCP" for port in service["spec"]["ports"])
    assert service["spec"]["ports"][0]["port"] == 80


def test_scaled_object_asks_the_push_scaler_about_the_session(settings):
    rendered = by_kind(render(settings.replace(scaler_address="scaler.example.svc:9443",
                                               scaler_secret_name="scaler-client")))
    spec = rendered["ScaledObject"]["spec"]
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] == 1
    assert "idleReplicaCount" not in spec
    assert spec["pollingInterval"] == 5
    assert spec["scaleTargetRef"]["name"] == rendered["Deployment"]["metadata"]["name"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "external-push"
    assert trigger["metadata"] == {"scalerAddress": "scaler.example.svc:9443",
                                   "sessionId": SESSION}
    auth = rendered["TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    # Mutual TLS from one Secret shared by every session: KEDA pools one connection for all.
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "caCert", "name": "scaler-client", "key": "ca.crt"},
        {"parameter": "tlsClientCert", "name": "scaler-client", "key": "tls.crt"},
        {"parameter": "tlsClientKey", "name": "scaler-client", "key": "tls.key"}]


REDIS_MODE = {"keda_scaler": "redis", "templates_dir": REPO_ROOT / "templates-redis"}


def test_redis_trigger_set_wakes_on_one_message_of_work_with_one_trigger(settings):
    rendered = by_kind(render(settings.replace(**REDIS_MODE)))
    spec = rendered["ScaledObject"]["spec"]
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] == 1
    # One trigger, so one Redis connection per session, on the set that also holds messages
    # in flight (a list of queued messages alone loses sight of a claimed one).
    [trigger] = spec["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == store.work_key(SESSION)
    assert trigger["metadata"]["activationListLength"] == "0"
    assert trigger["metadata"]["listLength"] == "1"
    assert trigger["authenticationRef"]["name"] == rendered["TriggerAuthentication"][
        "metadata"]["name"]
    # The workload is the push set's own (the files are links, not copies).
    assert rendered["Deployment"] == by_kind(render(settings))["Deployment"]


@pytest.mark.parametrize("env, expected", [
    ({"REDIS_URL": "rediss://bob:pw@redis.example:6380/2"},
     {"host": "redis.example", "port": "6380", "databaseIndex": "2", "enableTLS": "true",
      "username": "bob"}),
    ({"REDIS_URL": "redis://redis.example/3", "KEDA_REDIS_HOST": "redis.in-cluster",
      "KEDA_REDIS_PORT": "7000"},
     {"host": "redis.in-cluster", "port": "7000", "databaseIndex": "3"}),
    ({"REDIS_HOST": "redis.x", "REDIS_PORT": "6390"},
     {"host": "redis.x", "port": "6390", "databaseIndex": "0"}),
])
def test_keda_reads_the_redis_the_service_uses(env, expected):
    """Database, TLS and user come from the one Redis setting: KEDA cannot poll db 0 of
    another host while the service writes db 2."""
    settings = config.from_env({**env, "KEDA_SCALER": "redis"})
    metadata = by_kind(render(settings))["ScaledObject"]["spec"]["triggers"][0]["metadata"]
    assert {k: v for k, v in metadata.items() if k in (
        "host", "port", "databaseIndex", "enableTLS", "username")} == expected


def test_a_unix_socket_redis_needs_an_address_for_keda():
    with pytest.raises(ConfigError, match="KEDA_REDIS_HOST"):
        config.from_env({"REDIS_URL": "unix:///run/redis.sock", "KEDA_SCALER": "redis"})
    settings = config.from_env({"REDIS_URL": "unix:///run/redis.sock", "KEDA_SCALER": "redis",
                                  "KEDA_REDIS_HOST": "redis.svc"})
    assert settings.keda_redis_host == "redis.svc"


def test_trigger_authentication_reads_the_redis_secret(settings):
    auth = by_kind(render(settings.replace(redis_secret_name="my-redis", redis_secret_key="pw",
                                           **REDIS_MODE)))
    refs = auth["TriggerAuthentication"]["spec"]["secretTargetRef"]
    assert refs == [{"parameter": "password", "name": "my-redis", "key": "pw"}]


def test_templates_that_do_not_match_the_scaler_mode_refuse_to_start(settings):
    from service.bundle import check_templates
    from service.core.config import ConfigError

    check_templates(settings, store.keda_keys)
    check_templates(settings.replace(**REDIS_MODE), store.keda_keys)
    with pytest.raises(ConfigError, match="KEDA_SCALER=push expects external-push triggers"):
        check_templates(settings.replace(templates_dir=REPO_ROOT / "templates-redis"),
                        store.keda_keys)
    with pytest.raises(ConfigError, match="KEDA_SCALER=redis expects redis triggers"):
        check_templates(settings.replace(keda_scaler="redis"), store.keda_keys)


def test_settings_flow_into_the_bundle(settings):
    rendered = by_kind(render(settings.replace(
        user_pod_image="registry.example:5000/team/agent:1.2.3", user_pod_port=9000,
        keda_polling_interval_seconds=2, keda_cooldown_period_seconds=10,
    )))
    container = rendered["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example:5000/team/agent:1.2.3"
    assert rendered["Service"]["spec"]["ports"][0]["targetPort"] == 9000
    assert rendered["ScaledObject"]["spec"]["pollingInterval"] == 2
    assert rendered["ScaledObject"]["spec"]["cooldownPeriod"] == 10


@pytest.mark.parametrize("bad_id", ["", "S" + "a" * 16, "sabc", "s" + "a" * 16 + "\n", "../etc",
                                    "s" + "a" * 15 + ":", "s" + "a" * 15 + "1"])
def test_malformed_session_id_is_refused_before_rendering(settings, bad_id):
    with pytest.raises(ValueError):
        bundle.render(bad_id, settings, store.keda_keys("s" + "a" * 16))


@pytest.mark.parametrize("field, value", [
    ("user_pod_image", "agent:1\n  evil: true"),
    ("user_pod_image", 'agent"quoted'),
    ("namespace", "sessions: x"),
    ("namespace", "a\nb"),
    ("redis_secret_name", "secret'x"),
    ("keda_redis_host", "redis:6379"),
    ("user_pod_memory_limit", "512Mi\nprivileged: true"),
])
def test_unsafe_setting_is_refused_not_rendered(settings, field, value):
    unsafe = Settings(**{**settings.__dict__, field: value})  # bypass config parsing on purpose
    with pytest.raises(BundleError, match=field.upper()):
        render(unsafe)


def test_a_new_template_flows_through_with_labels(settings, tmp_path: Path):
    templates = tmp_path / "templates"
    shutil.copytree(REPO_ROOT / "templates", templates)
    (templates / "pvc.yaml").write_text(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {{ name }}-data\n"
        "spec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n"
        "      storage: 1Gi\n---\n"
    )
    rendered = render(settings.replace(templates_dir=templates))
    kinds = [obj["kind"] for obj in rendered.objects]
    assert kinds[0] == "PersistentVolumeClaim" or "PersistentVolumeClaim" in kinds
    pvc = by_kind(rendered)["PersistentVolumeClaim"]
    assert pvc["metadata"]["labels"][names.SESSION_LABEL] == SESSION
    assert bundle.KindRef("v1", "PersistentVolumeClaim") in rendered.kinds()
    assert kinds.index("PersistentVolumeClaim") < kinds.index("ScaledObject")


def test_template_errors_name_the_file(settings, tmp_path: Path):
    templates = tmp_path / "templates"
    shutil.copytree(REPO_ROOT / "templates", templates)
    (templates / "broken.yaml").write_text("kind: ConfigMap\nmetadata: {name: {{ missing }}}\n")
    with pytest.raises(BundleError, match=r"broken\.yaml"):
        render(settings.replace(templates_dir=templates))


def test_user_text_never_reaches_the_template_context(settings):
    context = bundle.template_context(SESSION, settings, store.keda_keys(SESSION))
    assert "user_id" not in str(context) and "message" not in context
