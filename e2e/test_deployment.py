"""The deployment holds under operations: both API replicas serve, a `helm upgrade` with a
changed setting rolls the API and the worker and loses nothing (no 5xx, every message
delivered), Redis comes back from its volume, RBAC is enough, pods pass the `restricted` Pod
Security Standard.

Runs before test_e2e.py (file order), whose last tests exhaust a rate limit. Chats are paced
under the per-IP chat limit (100/min): every request here comes from one client address.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest
import requests

from devcluster.processes import wait_until

REDIS = "app.kubernetes.io/name=redis"
CHAT_PACE_SECONDS = 0.8  # 75 chats a minute at most
POLL_SECONDS = 1.0  # each poll runs kubectl or calls the deployed API


def messages(api: Any, session_id: str) -> dict[str, dict]:
    response = api.get(f"/session/{session_id}/messages?limit=500")
    assert response.status_code == 200, response.text
    return {m["message_id"]: m for m in response.json()["messages"]}


def agent_deliveries(kubectl: Any, session_id: str) -> list[str]:
    """The agent's own log of what it was sent, asked inside its pod: the sessions'
    NetworkPolicy admits only the control plane to it."""
    pod = kubectl.ready_pod(session_id)
    assert pod, "no ready pod to ask for its deliveries"
    result = kubectl.run("exec", pod["metadata"]["name"], "--", "python3", "-c",
                         "import urllib.request; print(urllib.request.urlopen("
                         "'http://127.0.0.1:1111/deliveries', timeout=10).read().decode())")
    return [d["message_id"] for d in json.loads(result.stdout)["deliveries"]]


def live_pods(kubectl: Any, namespace: str, selector: str) -> set[str]:
    return {pod["metadata"]["name"] for pod in kubectl.items("pods", selector, namespace=namespace)
            if not pod["metadata"].get("deletionTimestamp")}


def control_pods(kubectl: Any, namespace: str) -> dict[str, set[str]]:
    """The live API and worker pods, by selector."""
    return {selector: live_pods(kubectl, namespace, selector)
            for selector in (kubectl.API_SELECTOR, kubectl.WORKER_SELECTOR)}


def assert_upgraded(release: Any, kubectl: Any, namespace: str, before: dict[str, set[str]],
                    setting: str, value: str) -> None:
    """Every API and worker pod is new, and each has the changed setting."""
    for selector, old in before.items():
        now = live_pods(kubectl, namespace, selector)
        assert now and not now & old, f"{selector}: pods {sorted(now & old)} were not replaced"
        assert set(release.setting_in_pods(selector, setting).values()) == {value}, selector


class ChatLoad:
    """Chats at a steady pace from a thread; every answer is kept."""

    def __init__(self, api: Any, session_id: str) -> None:
        self.api, self.session_id = api, session_id
        self.answers: list[tuple[str, int | str]] = []  # (message_id, status or error)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            message_id = f"load-{uuid.uuid4().hex[:12]}"
            try:
                response = self.api.post(f"/session/{self.session_id}/chat", timeout=60,
                                         json={"message": "steady", "message_id": message_id})
                self.answers.append((message_id, response.status_code))
            except requests.RequestException as err:
                self.answers.append((message_id, type(err).__name__))
            self.stop.wait(CHAT_PACE_SECONDS)

    def __enter__(self) -> ChatLoad:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(90)


def api_pod_urls(kubectl: Any, namespace: str) -> list[str]:
    return [f"http://{pod['status']['podIP']}:8080"
            for pod in kubectl.items("pods", kubectl.API_SELECTOR, namespace=namespace)
            if not pod["metadata"].get("deletionTimestamp") and pod["status"].get("podIP")]


def test_both_api_replicas_serve(api: Any, kubectl: Any, deployment: Any) -> None:
    """Each replica answers on its own address, and the Service routes to both of them."""
    control = deployment.control_namespace
    urls = api_pod_urls(kubectl, control)
    assert len(urls) == 2, urls
    key = {"X-API-Key": deployment.api_key}
    for url in urls:
        assert requests.get(f"{url}/health", timeout=10).status_code == 200
        response = requests.post(f"{url}/session/create", json={"user_id": "e2e-replica"},
                                 headers=key, timeout=30)
        assert response.status_code == 201, response.text
        assert api.delete(f"/session/{response.json()['uuid']}").status_code == 200
    slices = json.loads(kubectl.run(
        "get", "endpointslices", "-l", "kubernetes.io/service-name=session-manager", "-o",
        "json", namespace=control).stdout)["items"]
    ready = {address for item in slices for endpoint in item.get("endpoints") or []
             if (endpoint.get("conditions") or {}).get("ready")
             for address in endpoint["addresses"]}
    assert {url.split("//")[1].split(":")[0] for url in urls} == ready


def test_helm_upgrade_under_chat_load_rolls_both_and_loses_nothing(
        api: Any, kubectl: Any, deployment: Any, release: Any, running_session: Any) -> None:
    """An operator changes a setting with `helm upgrade` while a client chats: the API and
    the worker roll onto it, no chat gets a 5xx or an error, every accepted chat is
    delivered, and the API key generated at install still works (kept across upgrades)."""
    control = deployment.control_namespace
    session_id = running_session("e2e-upgrade-load")
    before = control_pods(kubectl, control)
    try:
        with ChatLoad(api, session_id) as load:
            time.sleep(3)
            release.upgrade(LOG_LEVEL="INFO")
            time.sleep(3)
        assert_upgraded(release, kubectl, control, before, "LOG_LEVEL", "INFO")
        statuses = [status for _, status in load.answers]
        assert len(statuses) >= 10, statuses
        bad = [s for s in statuses if not isinstance(s, int) or s >= 500]
        assert bad == [], f"{len(bad)} of {len(statuses)} chats failed during the upgrade: {bad}"
        accepted = [mid for mid, status in load.answers if status in (200, 202)]
        assert len(accepted) == len(statuses), statuses  # nothing else (no 4xx) either
        stored = wait_until(
            lambda: (m := messages(api, session_id)) and all(
                m.get(mid, {}).get("state") == "delivered" for mid in accepted) and m,
            timeout=120, what="every accepted chat delivered", interval=POLL_SECONDS)
        assert all(stored[mid]["reply"]["reply"] == "echo: steady" for mid in accepted)
    finally:
        api.delete(f"/session/{session_id}")


def test_helm_upgrade_with_queued_messages_delivers_each_once(
        api: Any, kubectl: Any, deployment: Any, release: Any, running_session: Any) -> None:
    """Messages queued for a sleeping session, a `helm upgrade` while the worker delivers
    them: every one is delivered after the roll with its own reply (a redelivery is answered
    from the agent's dedupe, never processed twice)."""
    control = deployment.control_namespace
    session_id = running_session("e2e-upgrade-queue")
    try:
        assert api.post(f"/session/{session_id}/sleep").status_code == 200
        # Gone, not only terminating: the agent keeps its log per pod, and this test reads
        # the log of the pod that answers after the wake. (A chat sent while the old pod is
        # still shutting down may be answered by it — once, and stored — which is right, but
        # that pod's log would be gone by the time the test reads it.)
        wait_until(lambda: not kubectl.session_items("pods", session_id), timeout=90,
                   what="the pod gone after sleep", interval=POLL_SECONDS)
        ids = [f"w-{i}-{uuid.uuid4().hex[:8]}" for i in range(6)]
        for message_id in ids:  # the first chat resumes the session; all wait for the worker
            response = api.post(f"/session/{session_id}/chat",
                                json={"message": f"slow:2 {message_id}", "message_id": message_id})
            assert response.status_code == 202, response.text
            time.sleep(CHAT_PACE_SECONDS)
        wait_until(lambda: any(m.get("state") == "delivered"
                               for m in messages(api, session_id).values()),
                   timeout=120, what="the first queued message delivered", interval=POLL_SECONDS)
        before = control_pods(kubectl, control)
        release.upgrade(EVENTS_HEARTBEAT_SECONDS="15")
        assert_upgraded(release, kubectl, control, before, "EVENTS_HEARTBEAT_SECONDS", "15")
        stored = wait_until(
            lambda: (m := messages(api, session_id)) and all(
                m.get(mid, {}).get("state") == "delivered" for mid in ids) and m,
            timeout=180, interval=POLL_SECONDS,
            what="every queued message delivered after the upgrade")
        for message_id in ids:
            assert stored[message_id]["reply"]["reply"] == f"echo: slow:2 {message_id}"
        # The pod saw each message; a redelivery after a worker died mid-way is answered from
        # the agent's dedupe (same message_id), never processed twice into two replies.
        seen = agent_deliveries(kubectl, session_id)
        assert all(seen.count(message_id) >= 1 for message_id in ids), seen
        print(f"upgrade: {sum(seen.count(m) for m in ids) - len(ids)} redeliveries")
    finally:
        api.delete(f"/session/{session_id}")


def test_redis_pod_deleted_mid_traffic_comes_back_with_everything(
        api: Any, kubectl: Any, deployment: Any, running_session: Any) -> None:
    control = deployment.control_namespace
    session_id = running_session("e2e-redis-delete")
    api_restarts_before = restart_counts(kubectl, control, kubectl.API_SELECTOR)
    try:
        # One slow chat holds the session's delivery lease; the next ones queue behind it.
        slow = {}
        holder = threading.Thread(target=lambda: slow.update(r=api.post(
            f"/session/{session_id}/chat", timeout=90,
            json={"message": "slow:12 first", "message_id": "r-first"})), daemon=True)
        holder.start()
        time.sleep(2)
        queued = [f"r-q{i}" for i in range(3)]
        for message_id in queued:
            response = api.post(f"/session/{session_id}/chat",
                                json={"message": message_id, "message_id": message_id})
            assert response.status_code == 202, response.text
        before = messages(api, session_id)
        sessions_before = {s["uuid"] for s in api.get("/sessions?limit=500").json()["sessions"]}
        time.sleep(2)  # appendfsync everysec: what was acknowledged a second ago is on disk

        # The pod deleted mid-traffic: its replacement starts from the same volume within
        # seconds; the API may ride it out on its retries, and must never answer a 500.
        kubectl.run("delete", "pod", "-l", REDIS, "--wait=false", namespace=control)
        seen = [health_status(api) for _ in range(20) if time.sleep(0.25) is None]
        assert set(seen) <= {200, 503, None}, seen  # None: no ready replica for a moment
        kubectl.run("rollout", "status", "deployment/redis", "--timeout=120s", namespace=control)
        wait_until(lambda: health_status(api) == 200, timeout=120, interval=1,
                   what="the API ready again after the Redis pod was replaced")
        # Then a real outage (no Redis pod at all): every replica answers 503 with a stable
        # code (asked at its own address: once unready, the Service stops routing to it).
        urls = api_pod_urls(kubectl, control)
        kubectl.run("scale", "deployment/redis", "--replicas=0", namespace=control)
        try:
            for url in urls:
                # (a 503 Response is falsy: return its body)
                outage = wait_until(
                    lambda url=url: (r := requests.get(f"{url}/health", timeout=10))
                    .status_code == 503 and r.json(), timeout=60, interval=0.3,
                    what=f"{url}/health 503 while Redis is down")
                assert outage["status"] == "unhealthy"
                during = requests.post(f"{url}/session/{session_id}/chat", timeout=30,
                                       headers={"X-API-Key": deployment.api_key},
                                       json={"message": "during outage"})
                assert during.status_code == 503 and during.json()["code"], during.text
        finally:
            kubectl.run("scale", "deployment/redis", "--replicas=1", namespace=control)
            # (After failureThreshold x periodSeconds of 503s the API pods are unready, so the
            # Service refuses connections until Redis is back: that is what readiness is for.)
            wait_until(lambda: health_status(api) == 200, timeout=180, interval=1,
                       what="/health 200 again once Redis is back")

        holder.join(90)
        assert "r" in slow and slow["r"].status_code in (200, 202, 503), slow  # never a 500
        sessions_after = {s["uuid"] for s in api.get("/sessions?limit=500").json()["sessions"]}
        assert sessions_before <= sessions_after
        after = messages(api, session_id)
        assert set(before) <= set(after), (sorted(before), sorted(after))
        wait_until(lambda: all(messages(api, session_id).get(mid, {}).get("state") ==
                               "delivered" for mid in ["r-first", *queued]),
                   timeout=180, interval=POLL_SECONDS,
                   what="the held and the queued messages delivered")
        assert restart_counts(kubectl, control, kubectl.API_SELECTOR) == api_restarts_before, \
            "the API recovered by restarting"
    finally:
        api.delete(f"/session/{session_id}")


def health_status(api: Any) -> int | None:
    try:
        return api.get("/health", auth=False).status_code
    except requests.ConnectionError:
        return None


def restart_counts(kubectl: Any, namespace: str, labels: str) -> dict[str, int]:
    return {pod["metadata"]["name"]: sum(c.get("restartCount", 0)
                                         for c in pod["status"].get("containerStatuses") or [])
            for pod in kubectl.items("pods", labels, namespace=namespace)
            if not pod["metadata"].get("deletionTimestamp")}


@pytest.mark.parametrize("namespace_key", ["control_namespace", "namespace"])
def test_namespaces_enforce_the_restricted_pod_security_standard(
        kubectl: Any, deployment: Any, namespace_key: str) -> None:
    namespace = getattr(deployment, namespace_key)
    labels = json.loads(kubectl.run("get", "namespace", namespace, "-o", "json").stdout)[
        "metadata"]["labels"]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"
    # Every pod there was admitted under it; one that asks for more is refused.
    refused = kubectl.run("run", "pss-probe", "--image=session-manager-demo-agent:0.1.0",
                          "--restart=Never", "--dry-run=server", namespace=namespace,
                          check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr


def test_the_control_plane_never_hit_a_403(kubectl: Any, deployment: Any) -> None:
    """The Role is enough for everything the tests made it do (test_manifests.py checks it
    is no more than service.kube.required_permissions())."""
    control = deployment.control_namespace
    pods = kubectl.items("pods", "app.kubernetes.io/name=session-manager", namespace=control)
    assert pods
    for pod in pods:
        log = kubectl.run("logs", pod["metadata"]["name"], "--all-containers",
                          namespace=control).stdout
        # How the API server words an RBAC denial, in the client's exception or our log.
        denied = [line for line in log.splitlines()
                  if "is forbidden" in line or "Reason: Forbidden" in line]
        assert denied == [], f"{pod['metadata']['name']}: " + "\n".join(denied)[:2000]
