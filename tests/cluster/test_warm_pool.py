"""The warm pool and wake phases on a real cluster: a create is answered by a pod that was up
before it (the real kubelet ran it), the pool refills, and every create and wake reports where
its time went (scaled, scheduled, image, started, ready, first byte) as the real objects moved."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from devcluster.processes import wait_until
from service.store.keys import POOL_READY
from tests.constants import KUBECTL_POLL_SECONDS

pytestmark = pytest.mark.timeout(300)

PHASES = ("scaled", "scheduled", "image", "started", "ready")


def started_at(pod: dict) -> float:
    stamp = pod["metadata"]["creationTimestamp"]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_a_create_takes_a_running_pod_from_the_pool_and_the_pool_refills(
        make_api, make_worker, settings, store, view, running_worker):
    settings = settings.replace(warm_pool_size=1)
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        wait_until(lambda: store.redis.zcard(POOL_READY) == 1, timeout=120,
                   what="one pooled session with its pod Ready", interval=KUBECTL_POLL_SECONDS)
        [pooled] = store.pool.members()
        [pod] = view.ready_pods(pooled)

        asked = time.time()
        response = api.client.post("/session/create", json={"user_id": "ada"},
                                   headers=api.headers)
        created = response.get_json()
        assert (response.status_code, created["uuid"], created["status"]) == \
            (201, pooled, "running")
        code, body = api.chat(pooled, "hello at once", message_id="m-1")
        answered = time.time() - asked
        assert (code, body["pod_response"]["reply"]) == (200, "echo: hello at once"), body
        assert started_at(pod) < asked  # the pod that answered was up before the create
        assert [p["metadata"]["uid"] for p in view.ready_pods(pooled)] == \
            [pod["metadata"]["uid"]]
        print(f"create to first reply from the pool: {answered:.2f}s")
        assert api.status(pooled)["wake"]["kind"] == "pool"

        # The keeper replaces what was taken: a new pooled session, its pod Ready.
        wait_until(lambda: store.redis.zcard(POOL_READY) == 1
                   and pooled not in store.pool.members(), timeout=120,
                   what="the pool refilled", interval=KUBECTL_POLL_SECONDS)


def test_a_create_and_a_wake_report_their_phases_from_the_real_kubelet(
        make_api, make_worker, settings, store, view, running_worker):
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        session_id = api.create()
        api.wait_status(session_id, {"running"}, timeout=90)
        create = wait_until(lambda: (w := api.status(session_id)["wake"]) and "ready" in w
                            and w, timeout=10, what="the create's phases")
        assert create["kind"] == "create"
        assert [phase for phase in PHASES if phase in create] == list(PHASES), create
        seconds = [create[phase] for phase in PHASES]
        assert seconds == sorted(seconds), create  # each phase after the one before

        response = api.client.post(f"/session/{session_id}/sleep", headers=api.headers)
        assert response.status_code == 200, response.get_json()
        wait_until(lambda: view.replicas(session_id) == 0 and not view.pods(session_id),
                   timeout=90, what="asleep", interval=KUBECTL_POLL_SECONDS)
        code, body = api.chat(session_id, "wake up", message_id="m-1")
        assert code == 202, body
        wait_until(lambda: api.delivered(session_id, "m-1"), timeout=120,
                   what="the wake's chat delivered", interval=KUBECTL_POLL_SECONDS)
        wake = api.status(session_id)["wake"]
        assert wake["kind"] == "wake"
        assert [phase for phase in (*PHASES, "first_byte") if phase in wake] == \
            [*PHASES, "first_byte"], wake
        print("wake phases (s): " + ", ".join(f"{p} {wake[p]:.2f}"
                                                for p in (*PHASES, "first_byte")))
    metrics = api.client.get("/metrics", headers={**api.headers, "Accept": "text/plain"}).text
    assert 'session_manager_wake_phase_seconds_count{phase="ready"} 2.0' in metrics
