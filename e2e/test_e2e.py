"""The session lifecycle on a real cluster: KEDA scales the session's pod 0 -> 1 -> 0.

Runs against the release `make e2e` installs (see conftest.py for the environment); the
isolation of session pods is in test_isolation.py. Tests run in file order: the rate-limit test
and the Redis restart come last here, because they exhaust a limit and restart Redis.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devcluster.processes import WaitTimedOut, wait_until

SESSION_LABEL = "session-manager/session"
# Everything a session may own in the cluster: the bundle's kinds plus what they spawn.
BUNDLE_RESOURCES = (
    "deployments.apps", "services", "scaledobjects.keda.sh", "triggerauthentications.keda.sh",
)
OWNED_RESOURCES = (*BUNDLE_RESOURCES, "replicasets.apps", "pods")
# Bounds, in seconds. Wake: KEDA polling + image already on the node + readiness probe.
WAKE_BOUND_SECONDS = 120
DELIVERY_BOUND_SECONDS = 60
SWEEP_BOUND_SECONDS = 120
POLL_SECONDS = 1.0  # each poll runs kubectl or calls the deployed API


def ready_pods(kubectl: Any, session_id: str) -> list[dict[str, Any]]:
    pods = kubectl.session_items("pods", session_id)
    return [
        pod for pod in pods
        if not pod["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions", []))
    ]


def ready_endpoints(kubectl: Any, session_id: str) -> list[str]:
    slices = kubectl.items("endpointslices.discovery.k8s.io",
                           f"kubernetes.io/service-name=session-{session_id}")
    return [address for item in slices for endpoint in item.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready") for address in endpoint["addresses"]]


def deployment_replicas(kubectl: Any, session_id: str) -> int | None:
    (deployment,) = kubectl.session_items("deployments.apps", session_id)
    return deployment["spec"].get("replicas")


def scaled_to_zero(kubectl: Any, session_id: str) -> bool:
    return (deployment_replicas(kubectl, session_id) == 0
            and not kubectl.session_items("pods", session_id))


def find_message(api: Any, session_id: str, message_id: str) -> dict[str, Any] | None:
    response = api.get(f"/session/{session_id}/messages", params={"limit": 100})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["uuid"] == session_id
    for message in body["messages"]:
        if message.get("message_id") == message_id:
            return message
    return None


def replied(api: Any, session_id: str, message_id: str, text: str) -> dict[str, Any] | None:
    message = find_message(api, session_id, message_id)
    if message and message.get("reply") and f"echo: {text}" in json.dumps(message["reply"]):
        return message
    return None


def test_health(api: Any) -> None:
    response = api.get("/health", auth=False)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "healthy"
    assert api.get("/livez", auth=False).status_code == 200
    assert api.get("/sessions", auth=False).status_code == 401


@pytest.fixture(scope="class")
def scenario(api: Any) -> Iterator[dict[str, Any]]:
    """State shared by the steps of one lifecycle; the session is deleted at the end anyway."""
    state: dict[str, Any] = {}
    yield state
    if "id" in state and not state.get("deleted"):
        api.delete(f"/session/{state['id']}")


@pytest.mark.incremental
class TestSessionLifecycle:
    def test_create_applies_the_labelled_bundle(self, api: Any, kubectl: Any,
                                                scenario: dict[str, Any]) -> None:
        scenario["created_at"] = time.monotonic()
        response = api.post("/session/create", json={"user_id": "e2e@example.com"})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["status"] == "created"
        session_id = scenario["id"] = body["uuid"]

        def bundle() -> dict[str, list[dict[str, Any]]] | None:
            found = {kind: kubectl.session_items(kind, session_id) for kind in BUNDLE_RESOURCES}
            return found if all(found.values()) else None

        found = wait_until(bundle, timeout=30, interval=POLL_SECONDS,
                           what="the four bundle objects")
        for kind, items in found.items():
            assert len(items) == 1, f"{kind}: {len(items)} objects"
            labels = items[0]["metadata"]["labels"]
            assert labels["app.kubernetes.io/managed-by"] == "session-manager", kind
            assert labels[SESSION_LABEL] == session_id, kind

    def test_wake_makes_the_pod_ready(self, api: Any, kubectl: Any, scenario: dict[str, Any],
                                      record_latency: Any) -> None:
        session_id = scenario["id"]
        started = time.monotonic()
        response = api.post(f"/session/{session_id}/wake")
        assert response.status_code in (200, 202), response.text
        assert response.json()["action"] == "wake"
        wait_until(lambda: ready_pods(kubectl, session_id), timeout=WAKE_BOUND_SECONDS,
                   interval=POLL_SECONDS,
                   what=f"the session pod to be Ready (bound {WAKE_BOUND_SECONDS} s)")
        record_latency("create -> pod Ready", time.monotonic() - scenario["created_at"])
        record_latency("wake request -> pod Ready", time.monotonic() - started)

    def test_chat_while_running_is_answered_by_the_pod(self, api: Any, kubectl: Any,
                                                       scenario: dict[str, Any]) -> None:
        session_id = scenario["id"]

        def running() -> bool:
            response = api.get(f"/session/{session_id}/status")
            return response.status_code == 200 and response.json()["status"] == "running"

        wait_until(running, timeout=30, what="status running", interval=POLL_SECONDS)
        # "running" follows the Deployment's ready replicas; the Service's endpoint (what the
        # control plane dials) follows a moment later. A chat in that moment is queued (202)
        # and delivered by the worker: nothing lost, but this step wants the direct answer.
        wait_until(lambda: ready_endpoints(kubectl, session_id), timeout=30,
                   what="the session Service's ready endpoint", interval=POLL_SECONDS)
        time.sleep(1)  # kube-proxy programs the endpoint after the EndpointSlice changes
        response = api.post(f"/session/{session_id}/chat", json={"message": "hello running"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "processed"
        assert "echo: hello running" in json.dumps(body["pod_response"])

    def test_sleep_scales_the_deployment_to_zero(self, api: Any, kubectl: Any,
                                                 scenario: dict[str, Any]) -> None:
        session_id = scenario["id"]
        response = api.post(f"/session/{session_id}/sleep")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "sleeping"
        wait_until(lambda: scaled_to_zero(kubectl, session_id), timeout=90,
                   what="0 replicas and no pod after sleep", interval=POLL_SECONDS)

    def test_chat_while_sleeping_wakes_the_pod_and_delivers(
        self, api: Any, kubectl: Any, scenario: dict[str, Any], record_latency: Any,
    ) -> None:
        session_id = scenario["id"]
        message_id = f"e2e-{uuid.uuid4().hex[:12]}"
        started = time.monotonic()
        response = api.post(f"/session/{session_id}/chat",
                            json={"message": "hello sleeping", "message_id": message_id})
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "queued"
        assert body["message_id"] == message_id
        wait_until(lambda: ready_pods(kubectl, session_id), timeout=WAKE_BOUND_SECONDS,
                   interval=POLL_SECONDS,
                   what=f"KEDA to scale the session 0 -> 1 (bound {WAKE_BOUND_SECONDS} s)")
        ready_at = time.monotonic()
        message = wait_until(
            lambda: replied(api, session_id, message_id, "hello sleeping"),
            timeout=DELIVERY_BOUND_SECONDS, interval=POLL_SECONDS,
            what="the queued message's reply",
        )
        replied_at = scenario["last_activity"] = time.monotonic()
        assert message["message_id"] == message_id
        record_latency("queued chat -> pod Ready (KEDA 0 -> 1)", ready_at - started)
        record_latency("queued chat -> first reply", replied_at - started)

    def test_idle_session_scales_back_to_zero(self, kubectl: Any, deployment: Any,
                                              scenario: dict[str, Any],
                                              record_latency: Any) -> None:
        session_id = scenario["id"]
        idle = deployment.idle_timeout_seconds
        bound = (idle + deployment.keda_cooldown_period_seconds
                 + 2 * deployment.keda_polling_interval_seconds + 60)
        # Only kubectl from here on: API calls could count as activity.
        wait_until(lambda: scaled_to_zero(kubectl, session_id),
                   timeout=bound - (time.monotonic() - scenario["last_activity"]),
                   what=f"scale to 0 after IDLE_TIMEOUT={idle} s", interval=2)
        idle_for = time.monotonic() - scenario["last_activity"]
        record_latency(f"last reply -> scaled to 0 (IDLE_TIMEOUT={idle})", idle_for)
        assert idle_for >= idle / 2, f"scaled to 0 after {idle_for:.0f} s, before IDLE_TIMEOUT"

    def test_delete_sweeps_every_object(self, api: Any, kubectl: Any,
                                        scenario: dict[str, Any]) -> None:
        session_id = scenario["id"]
        response = api.delete(f"/session/{session_id}")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "terminated"
        scenario["deleted"] = True

        def leftovers() -> dict[str, list[str]]:
            found = {
                kind: [o["metadata"]["name"]
                       for o in kubectl.items(kind, f"{SESSION_LABEL}={session_id}")]
                for kind in OWNED_RESOURCES
            }
            return {kind: names for kind, names in found.items() if names}

        try:
            wait_until(lambda: not leftovers(), timeout=SWEEP_BOUND_SECONDS,
                       what=f"no object labelled {SESSION_LABEL}={session_id}", interval=2)
        except WaitTimedOut:
            pytest.fail(f"left after delete: {leftovers()}")
        assert api.get(f"/session/{session_id}/status").status_code == 404


def test_rate_limit_answers_429_with_retry_after(api: Any) -> None:
    response = api.post("/session/create", json={"user_id": "e2e-rate-limit"})
    assert response.status_code == 201, response.text
    session_id = response.json()["uuid"]
    try:
        # status is limited to 200/min per client IP (SPEC §5): go past it.
        limited = None
        for _ in range(400):
            response = api.get(f"/session/{session_id}/status")
            if response.status_code == 429:
                limited = response
                break
            assert response.status_code == 200, response.text
        assert limited is not None, "400 status requests in a row were never rate limited"
        assert int(limited.headers["Retry-After"]) > 0
        assert "X-RateLimit-Limit" in limited.headers
        assert limited.json()["code"]
    finally:
        api.delete(f"/session/{session_id}")


def test_service_recovers_after_redis_restarts(api: Any, kubectl: Any,
                                               deployment: Any) -> None:
    control = deployment.control_namespace
    kubectl.run("rollout", "restart", "deployment/redis", namespace=control)
    kubectl.run("rollout", "status", "deployment/redis", "--timeout=180s", namespace=control,
                timeout=200)

    def healthy() -> bool:
        return api.get("/health", auth=False).status_code == 200

    wait_until(healthy, timeout=120, what="/health to recover after the Redis restart", interval=2)

    def create() -> Any:
        response = api.post("/session/create", json={"user_id": "e2e-after-redis"})
        return response if response.status_code == 201 else None

    response = wait_until(create, timeout=60, interval=2,
                          what="a session to be created after the Redis restart")
    session_id = response.json()["uuid"]
    try:
        wait_until(lambda: kubectl.session_items("deployments.apps", session_id),
                   timeout=30, what="the new session's Deployment", interval=POLL_SECONDS)
    finally:
        assert api.delete(f"/session/{session_id}").status_code == 200
