"""Wake phases: for every create and wake, the seconds from the ask to scaled, scheduled,
image, started, ready and the first reply byte — as the status watch sees the real objects
change — in /status, in the session's `status` events, and as a histogram in /metrics. Real
Redis and the real API server; the pod's progress written as a kubelet would."""

from __future__ import annotations

import json

from kubernetes import client as k8s

from devcluster.processes import wait_until
from service.core import names

PHASES = ["scaled", "scheduled", "image", "started", "ready"]


def pod_progress(kube, session_id: str, stage: str) -> None:
    """The session's pod as the kubelet reports it at `stage` (created the first time)."""
    core = k8s.CoreV1Api(kube.api_client)
    name = f"{names.object_name(session_id)}-pod"
    if stage == "created":
        core.create_namespaced_pod(kube.namespace, {
            "metadata": {"name": name, "labels": {names.MANAGED_BY_LABEL: names.MANAGED_BY_VALUE,
                                                  names.SESSION_LABEL: session_id}},
            "spec": {"containers": [{"name": "agent", "image": "agent:0"}]}})
        return
    conditions = [{"type": "PodScheduled", "status": "True"}]
    container = {"name": "agent", "image": "agent:0", "imageID": "", "ready": False,
                 "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}
    if stage in ("image", "started", "ready"):
        container["imageID"] = "sha256:" + "a" * 64
    if stage in ("started", "ready"):
        container["state"] = {"running": {"startedAt": "2026-12-06T00:00:00Z"}}
    if stage == "ready":
        conditions.append({"type": "Ready", "status": "True"})
        container["ready"] = True
    core.patch_namespaced_pod_status(name, kube.namespace, {"status": {
        "conditions": conditions, "containerStatuses": [container],
        **({"podIP": "127.0.0.1"} if stage == "ready" else {})}})


def test_a_create_records_each_phase_of_its_start_up(settings, store, kube, demo_agent,
                                                      make_api, make_worker, status_watch,
                                                      mark_ready):
    settings = settings.replace(pod_url_template=demo_agent.url)
    api = make_api(settings)
    session_id = api.create()
    assert api.status(session_id)["wake"]["kind"] == "create"
    with status_watch(make_worker(settings)):
        pod_progress(kube, session_id, "created")
        mark_ready(session_id, ready=0)  # the Deployment wants its pod: scaled
        for stage in ("scheduled", "image", "started"):
            pod_progress(kube, session_id, stage)
            wait_until(lambda stage=stage: stage in api.status(session_id)["wake"], timeout=10,
                       what=f"the {stage} phase")
        pod_progress(kube, session_id, "ready")
        mark_ready(session_id)
        wait_until(lambda: api.status(session_id)["status"] == "running", timeout=10,
                   what="running")
    assert api.chat(session_id, "hello", "m-1")[0] == 200
    wake = api.status(session_id)["wake"]
    times = [wake[phase] for phase in [*PHASES, "first_byte"]]
    assert times == sorted(times) and all(t >= 0 for t in times), wake

    # In the session's events: each status event carries the wake so far.
    events = [json.loads(fields["d"]) for _, fields in
              store.redis.xrange(f"sm:e:{session_id}") if fields["t"] == "status"]
    assert "ready" in events[-1]["wake"] and events[-1]["status"] == "running"
    # And a histogram per phase in /metrics.
    text = api.client.get("/metrics", headers={**api.headers, "Accept": "text/plain"}).text
    for phase in [*PHASES, "first_byte"]:
        assert f'session_manager_wake_phase_seconds_count{{phase="{phase}"}} 1.0' in text


def test_a_wake_of_a_sleeping_session_starts_a_new_wake(settings, store, kube, make_api,
                                                         make_worker, status_watch,
                                                         mark_ready):
    api = make_api(settings)
    session_id = api.create()
    with status_watch(make_worker(settings)):
        mark_ready(session_id, ready=0, replicas=0)
        wait_until(lambda: api.status(session_id)["status"] == "sleeping", timeout=10,
                   what="sleeping")
        created_at = api.status(session_id)["wake"]["at"]
        assert api.client.post(f"/session/{session_id}/wake",
                               headers=api.headers).status_code == 202
        wake = api.status(session_id)["wake"]
        assert wake["kind"] == "wake" and wake["at"] > created_at
        assert "scaled" not in wake  # measured from this ask: nothing reached yet
        mark_ready(session_id)
        wait_until(lambda: "scaled" in api.status(session_id)["wake"], timeout=10,
                   what="the new wake's scaled phase")


def test_a_chat_to_a_sleeping_session_starts_one_wake(settings, kube, make_api, make_worker,
                                                      status_watch, mark_ready):
    api = make_api(settings)
    session_id = api.create()
    with status_watch(make_worker(settings)):
        pod_progress(kube, session_id, "created")
        mark_ready(session_id, ready=0)
        pod_progress(kube, session_id, "ready")
        mark_ready(session_id)
        wait_until(lambda: "ready" in api.status(session_id)["wake"], timeout=10,
                   what="the create's ready phase")
        mark_ready(session_id, ready=0, replicas=0)
        wait_until(lambda: api.status(session_id)["status"] == "sleeping", timeout=10,
                   what="sleeping")
        created_at = api.status(session_id)["wake"]["at"]
        assert api.chat(session_id, "wake up", "m-1")[0] == 202
        wake = api.status(session_id)["wake"]
        assert wake["kind"] == "wake" and wake["at"] > created_at and "ready" not in wake
        # A second chat while that wake is under way does not restart its clock.
        assert api.chat(session_id, "still asleep?", "m-2")[0] == 202
        assert api.status(session_id)["wake"] == wake
        mark_ready(session_id)
        wait_until(lambda: "scaled" in api.status(session_id)["wake"], timeout=10,
                   what="the chat's wake reaching scaled")
