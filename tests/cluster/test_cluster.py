"""Sessions on a real cluster: real pods from the demo agent image, real KEDA scaling.

Chats reach the pod at its address (POD_URL_TEMPLATE `http://{pod_ip}:{port}`, the address the
status watch saw on the Ready pod): this stack has no cluster DNS, so the Service's name does
not resolve on the host. The Service itself is tested too (its endpoints follow readiness).
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from devcluster.processes import wait_until
from service.core.config import TEMPLATES_OF_MODE
from service.kube import ClusterSetup
from tests.constants import KUBECTL_POLL_SECONDS

pytestmark = pytest.mark.timeout(300)


def agent_deliveries(view, session_id: str) -> list[str]:
    [pod] = view.ready_pods(session_id)
    response = requests.get(f"http://{pod['status']['podIP']}:1111/deliveries", timeout=5)
    return [d["message_id"] for d in response.json()["deliveries"]]


def test_a_created_session_runs_a_real_pod_that_answers(make_api, make_worker, settings, view,
                                                        running_worker):
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        session_id = api.create()
        status = api.wait_status(session_id, {"running"}, timeout=90)
        assert status["ready_replicas"] == 1

        [pod] = view.ready_pods(session_id)
        assert pod["status"]["phase"] == "Running"
        [container] = pod["status"]["containerStatuses"]
        assert container["ready"] and container["image"].endswith(settings.user_pod_image)
        # The EndpointSlice follows the pod's readiness a moment later (the endpoint
        # controller), so a status of `running` can come first.
        wait_until(lambda: view.ready_endpoints(session_id) == [pod["status"]["podIP"]],
                   timeout=15, what="the Service's ready endpoint to be the pod",
                   interval=KUBECTL_POLL_SECONDS)

        code, body = api.chat(session_id, "hello from a test", message_id="m-1")
        assert code == 200, body
        assert body["status"] == "processed"
        assert body["pod_response"]["reply"] == "echo: hello from a test"
        assert body["pod_response"]["session_id"] == session_id


def test_a_chat_to_a_slept_session_is_answered_after_keda_wakes_it(
        make_api, make_worker, settings, view, record_property, running_worker):
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        session_id = api.create()
        api.wait_status(session_id, {"running"}, timeout=90)
        response = api.client.post(f"/session/{session_id}/sleep", headers=api.headers)
        assert response.status_code == 200, response.get_json()
        wait_until(lambda: not view.ready_endpoints(session_id) and view.replicas(session_id) == 0,
                   timeout=60, what="no ready endpoint and 0 replicas after sleep",
                   interval=KUBECTL_POLL_SECONDS)

        started, chat_sent_at = time.monotonic(), time.time()
        code, body = api.chat(session_id, "are you awake?", message_id="wake-1")
        assert code == 202 and body["status"] == "queued", body
        message = wait_until(lambda: api.delivered(session_id, "wake-1"), timeout=120,
                             what="the queued chat delivered after the wake",
                             interval=KUBECTL_POLL_SECONDS)
        chat_to_reply = time.monotonic() - started
        record_property("chat_to_reply_seconds_slept", round(chat_to_reply, 2))
        print(f"chat to reply on a slept session: {chat_to_reply:.1f}s")

        assert message["reply"]["reply"] == "echo: are you awake?"
        # KEDA, not the control plane, scaled the Deployment up again.
        # (event timestamps have whole seconds)
        assert view.events("KEDAScaleTargetActivated", since=int(chat_sent_at)), \
            "KEDA recorded no activation after the chat"
        assert view.replicas(session_id) == 1
        assert agent_deliveries(view, session_id).count("wake-1") == 1


def test_an_idle_session_goes_to_zero_but_not_during_a_slow_delivery(
        make_api, make_worker, settings, view, running_worker):
    # Idle after 15 s: KEDA's activity key lives idle - cooldown = 10 s.
    settings = settings.replace(idle_timeout_seconds=15, keda_cooldown_period_seconds=5,
                                keda_initial_cooldown_period_seconds=5)
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        session_id = api.create()
        api.wait_status(session_id, {"running"}, timeout=90)

        replicas_seen: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                replicas_seen.append(view.replicas(session_id))
                time.sleep(1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.monotonic()
        code, body = api.chat(session_id, "slow:30 think hard", message_id="slow-1")
        took = time.monotonic() - began
        done.set()
        sampler.join(5)
        assert code == 200, body
        assert body["pod_response"]["reply"] == "echo: slow:30 think hard"
        assert took >= 30
        assert replicas_seen and set(replicas_seen) == {1}, replicas_seen

        idle_from = time.monotonic()
        wait_until(lambda: view.replicas(session_id) == 0, timeout=90,
                   what="KEDA scaling the idle session to 0", interval=KUBECTL_POLL_SECONDS)
        slept_after = time.monotonic() - idle_from
        print(f"idle session scaled to 0 {slept_after:.1f}s after its last reply")
        # IDLE_TIMEOUT after the reply, less KEDA's polling and our sampling slack.
        assert slept_after >= settings.idle_timeout_seconds - 3, \
            f"scaled to 0 only {slept_after:.0f}s after the last reply"
        api.wait_status(session_id, {"sleeping"}, timeout=30)
        wait_until(lambda: not view.ready_endpoints(session_id), timeout=60,
                   what="no ready endpoint once idle", interval=KUBECTL_POLL_SECONDS)


def test_keda_activates_a_session_through_the_push_scaler_within_a_second_of_the_chat(
        make_api, make_worker, settings, kube, view, record_property, running_worker):
    """KEDA polls only every 20 s here, so a wake in under a second can only be the worker's
    push scaler telling KEDA the moment the chat was admitted."""
    settings = settings.replace(keda_polling_interval_seconds=20, keda_cooldown_period_seconds=2,
                                keda_initial_cooldown_period_seconds=0)
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        session_id = api.create()
        api.wait_status(session_id, {"running"}, timeout=90)
        worker.store.records.clear_activity(session_id)  # idle now: KEDA takes it to 0 on its own
        wait_until(lambda: kube.deployment_state(session_id).replicas == 0, timeout=90,
                   what="KEDA scaling the idle session to 0", interval=KUBECTL_POLL_SECONDS)
        admitted = time.monotonic()
        code, body = api.chat(session_id, "wake up now", message_id="push-1")
        assert code == 202, body
        wait_until(lambda: kube.deployment_state(session_id).replicas == 1, timeout=30,
                   interval=0.02, what="KEDA scaling the session to 1")
        activation = time.monotonic() - admitted
        record_property("push_activation_seconds", round(activation, 3))
        print(f"push scaler: chat admitted -> KEDA scaled to 1 in {activation:.3f}s")
        assert activation < 1.0, f"KEDA activated {activation:.2f}s after the chat"
        assert view.events("KEDAScaleTargetActivated", since=int(time.time() - 60))
        wait_until(lambda: api.delivered(session_id, "push-1"), timeout=90,
                   what="the chat answered by the woken pod", interval=KUBECTL_POLL_SECONDS)


def test_an_image_that_does_not_exist_fails_with_the_kubelets_reason(
        make_api, make_worker, settings, running_worker):
    # A registry on loopback that is not there: a real pull failure, no traffic off the machine.
    settings = settings.replace(user_pod_image="127.0.0.1:9/missing-agent:0.1.0")
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        session_id = api.create()
        status = api.wait_status(session_id, {"failed"}, timeout=90)
        assert status["reason"] in {"ErrImagePull", "ImagePullBackOff"}, status


def test_an_agent_that_exits_at_once_is_crash_looping_and_gives_up_its_chats(
        make_api, make_worker, settings, view, running_worker):
    """A session that stays failed fails its queued chats with the reason after
    FAILED_SESSION_GRACE_SECONDS, and its work set lets the crashing pod go: KEDA scales it
    to 0 (before: the chats waited forever and held the pod at 1 until SESSION_TTL)."""
    # Port 1 is privileged: the demo agent, non-root with no capabilities, cannot bind it and
    # exits at once, every time.
    settings = settings.replace(user_pod_port=1, failed_session_grace_seconds=5,
                                reconcile_interval_seconds=2, idle_timeout_seconds=20,
                                keda_cooldown_period_seconds=5,
                                keda_initial_cooldown_period_seconds=10)
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        session_id = api.create()
        status = api.wait_status(session_id, {"failed"}, timeout=120)
        assert status["reason"] == "CrashLoopBackOff", status
        for message_id in ("m-1", "m-2"):
            assert api.chat(session_id, "anyone there?", message_id)[0] == 202
        wait_until(lambda: [m["state"] for m in api.messages(session_id)] == ["failed"] * 2,
                   timeout=90, what="the queued chats failed with the session",
                   interval=KUBECTL_POLL_SECONDS)
        assert all("CrashLoopBackOff" in m["error"] for m in api.messages(session_id))
        wait_until(lambda: view.replicas(session_id) == 0, timeout=120,
                   what="KEDA scaling the crashing pod to 0", interval=KUBECTL_POLL_SECONDS)
        api.wait_status(session_id, {"sleeping"}, timeout=60)


def test_keda_reads_redis_through_the_trigger_authentication(
        make_api, make_worker, settings, view, kube, running_worker):
    """The seed's fix, for real: KEDA reads the queue with the password from the
    `redis-credentials` Secret (the TriggerAuthentication). With a wrong password there the
    session does not wake, and KEDA's own condition on the ScaledObject says why; with the
    right one back, KEDA wakes it and the waiting message is answered. (KEDA_SCALER=redis, the
    alternative template set: KEDA's redis scaler polls the session's work set.)"""
    settings = settings.replace(keda_scaler="redis",
                                templates_dir=TEMPLATES_OF_MODE["redis"])
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        session_id = api.create()
        api.wait_status(session_id, {"running"}, timeout=90)
        response = api.client.post(f"/session/{session_id}/sleep", headers=api.headers)
        assert response.status_code == 200
        wait_until(lambda: view.replicas(session_id) == 0, timeout=60, what="0 after sleep",
                   interval=KUBECTL_POLL_SECONDS)

        ClusterSetup(kube).ensure_secret("redis-credentials", {"password": "not-the-password"})
        code, body = api.chat(session_id, "anyone there?", message_id="auth-1")
        assert code == 202, body

        def keda_says_why() -> str | None:
            status = view.scaled_object(session_id).get("status") or {}
            for condition in status.get("conditions") or []:
                if condition.get("type") == "Ready" and condition.get("status") == "False":
                    return f"{condition.get('reason')}: {condition.get('message')}"
            return None

        reason = wait_until(keda_says_why, timeout=60,
                            what="KEDA's Ready=False condition on the ScaledObject",
                            interval=KUBECTL_POLL_SECONDS)
        messages = " ".join(e.get("message", "") for e in view.get("events")["items"])
        assert "WRONGPASS" in messages, (reason, messages[-2000:])
        time.sleep(5)
        assert view.replicas(session_id) == 0
        assert api.delivered(session_id, "auth-1") is None

        password = settings.redis_url.split(":")[2].split("@")[0]
        ClusterSetup(kube).ensure_secret("redis-credentials", {"password": password})
        wait_until(lambda: api.delivered(session_id, "auth-1"), timeout=150,
                   what="the message answered once KEDA can read Redis again",
                   interval=KUBECTL_POLL_SECONDS)


def test_delete_leaves_no_object_and_no_pod_and_spares_the_other_session(
        make_api, make_worker, settings, view, running_worker):
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        doomed, kept = api.create("user-a"), api.create("user-b")
        api.wait_status(doomed, {"running"}, timeout=90)
        api.wait_status(kept, {"running"}, timeout=90)
        response = api.client.delete(f"/session/{doomed}", headers=api.headers)
        assert response.status_code == 200, response.get_json()
        wait_until(lambda: view.session_objects(doomed) == [], timeout=90,
                   what="every object and pod of the deleted session gone",
                   interval=KUBECTL_POLL_SECONDS)
        code, body = api.chat(kept, "still here?")
        assert code == 200 and body["pod_response"]["reply"] == "echo: still here?", body
        assert view.ready_pods(kept)
