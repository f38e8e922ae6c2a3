"""One owner per state: the transition table holds where status is written, so a writer acting
on a stale read is refused; a wake or a sleep racing the archiver ends true; a session that
stays failed gives up its queued chats and lets its pod go. Real Redis, the real API server
and the real status watch; races are made to happen at the moment they did in the field."""

from __future__ import annotations

import time

from kubernetes import client as k8s

from devcluster.processes import wait_until
from service import bundle
from service.core import names
from service.core.transitions import STATUSES, TRANSITIONS, Actor, lua_table, may_move
from service.worker.reconciler import Reconciler

# Archiving on, quick: ARCHIVE_AFTER_SECONDS must exceed IDLE_TIMEOUT.
ARCHIVING = {"archive_after_seconds": 3600, "idle_timeout_seconds": 120}


def test_the_table_gives_each_status_its_owners():
    # The API only asks: it may wake a sleeping session and put an awake one to sleep, never
    # write what the cluster says (running, failed) nor touch archived.
    api = TRANSITIONS[Actor.API]
    assert not any({"running", "failed", "archived"} & targets for targets in api.values())
    assert not may_move(Actor.API, "running", "waking")  # the race of the field report
    assert may_move(Actor.API, "sleeping", "waking")
    assert not may_move(Actor.WATCH, "archived", "running")  # only a restore brings it back
    assert may_move(Actor.RESTORE, "archived", "waking")
    assert not may_move(Actor.RECONCILER, "archived", "failed")
    assert all(may_move(Actor.DELETE, status, "terminating") for status in STATUSES)
    assert not any(may_move(actor, "terminating", status)
                   for actor in Actor for status in STATUSES if status != "terminating")
    # The Lua scripts read the same table, not a copy kept by hand.
    assert "api = {moves = {created = {sleeping = true, waking = true}" in lua_table()


def test_the_store_refuses_a_move_the_table_does_not_allow(settings, store, make_api):
    api = make_api(settings)
    session_id = api.create()
    assert store.records.set_status(session_id, "running", actor=Actor.WATCH, replicas=1,
                            ready_replicas=1) == ("created", True)
    assert store.records.set_status(session_id, "failed", actor=Actor.API) == ("running", False)
    assert store.records.get_session(session_id)["status"] == "running"
    assert store.redis.zscore("sm:st:running", session_id) is not None
    assert store.redis.zscore("sm:st:failed", session_id) is None


def sleeping(api, mark_ready, session_id: str) -> None:
    mark_ready(session_id, ready=0, replicas=0)
    wait_until(lambda: api.status(session_id)["status"] == "sleeping", timeout=10,
               what="sleeping")


def test_a_wake_never_overwrites_the_running_the_watch_saw_meanwhile(
        settings, store, kube, demo_agent, make_api, make_worker, monkeypatch, mark_ready,
        running_worker):
    """The field report: wake() read `sleeping`, the watch wrote `running` while the unpause
    was in flight, and the wake then wrote `waking` over it — for good (the watch does not
    re-list on its own), so the queued chat was never delivered and the pod never slept."""
    settings = settings.replace(pod_url_template=demo_agent.url)
    api = make_api(settings)
    session_id = api.create()
    worker = make_worker(settings)
    sessions = api.app.extensions["session_manager"].sessions
    real_set_paused = kube.set_paused

    def unpause_while_the_pod_becomes_ready(sid: str, paused: bool) -> bool:
        if not paused:
            mark_ready(sid)  # KEDA's scale-up lands first...
            wait_until(lambda: store.records.get_session(sid)["status"] == "running",
                       timeout=10, what="the watch's running")  # ...and the watch records it
        return real_set_paused(sid, paused)

    with running_worker(worker):
        sleeping(api, mark_ready, session_id)
        assert api.chat(session_id, "are you up?", "m-1")[0] == 202
        monkeypatch.setattr(sessions.kube, "set_paused", unpause_while_the_pod_becomes_ready)
        response = api.client.post(f"/session/{session_id}/wake", headers=api.headers)
        assert response.status_code in (200, 202), response.get_json()
        assert response.get_json()["status"] == "running"
        assert api.status(session_id)["status"] == "running"
        wait_until(lambda: api.messages(session_id)[0]["state"] == "delivered", timeout=10,
                   what="the queued chat delivered")


def test_a_wake_racing_the_archiver_brings_the_session_back(
        settings, store, kube, make_api, make_worker, monkeypatch):
    settings = settings.replace(**ARCHIVING)
    api, worker = make_api(settings), make_worker(settings)
    session_id = api.create()
    sessions = api.app.extensions["session_manager"].sessions
    assert api.client.post(f"/session/{session_id}/sleep", headers=api.headers).status_code \
        == 200
    real_set_paused = kube.set_paused

    def archived_meanwhile(sid: str, paused: bool) -> bool:
        store.redis.zadd("sm:bundled", {sid: time.time() - 7200})  # idle long enough
        assert worker.archiver.archive(sid, time.time() - 3600) == "archived"
        return real_set_paused(sid, paused)

    monkeypatch.setattr(sessions.kube, "set_paused", archived_meanwhile)
    response = api.client.post(f"/session/{session_id}/wake", headers=api.headers)
    assert response.status_code == 202, response.get_json()  # before: 404 kubernetes_not_found
    assert response.get_json()["status"] == "waking"
    status = api.status(session_id)
    assert (status["status"], status["paused"]) == ("waking", False)
    assert kube.list_objects(bundle.KindRef("apps/v1", "Deployment"),
                             bundle.label_selector(session_id))  # the bundle is back
    assert store.redis.zscore("sm:restore", session_id) is None  # done, not left asked


def test_a_sleep_racing_the_archiver_leaves_no_pause_behind(
        settings, store, kube, make_api, make_worker, monkeypatch):
    """Before: the sleep's paused flag landed on the archived record, so after the next
    restore the push scaler answered "inactive" and the session stayed asleep."""
    settings = settings.replace(**ARCHIVING)
    api, worker = make_api(settings), make_worker(settings)
    session_id = api.create()
    sessions = api.app.extensions["session_manager"].sessions
    real_set_paused = kube.set_paused

    def archived_meanwhile(sid: str, paused: bool) -> bool:
        store.redis.zadd("sm:bundled", {sid: time.time() - 7200})
        assert worker.archiver.archive(sid, time.time() - 3600) == "archived"
        return real_set_paused(sid, paused)

    monkeypatch.setattr(sessions.kube, "set_paused", archived_meanwhile)
    response = api.client.post(f"/session/{session_id}/sleep", headers=api.headers)
    assert (response.status_code, response.get_json()["status"]) == (200, "archived")
    assert store.records.get_session(session_id)["paused"] == "0"
    monkeypatch.undo()
    assert api.chat(session_id, "back?", "m-1")[0] == 202  # restores it
    assert api.status(session_id)["status"] == "waking"
    assert store.records.work([session_id]) == {session_id: 2}  # the message and the activity


def crash_looping(kube, session_id: str, reason: str = "CrashLoopBackOff") -> None:
    """A pod of the session whose container keeps crashing, as the kubelet reports it."""
    core = k8s.CoreV1Api(kube.api_client)
    name = f"{names.object_name(session_id)}-crash"
    core.create_namespaced_pod(kube.namespace, {
        "metadata": {"name": name, "labels": {names.MANAGED_BY_LABEL: names.MANAGED_BY_VALUE,
                                              names.SESSION_LABEL: session_id}},
        "spec": {"containers": [{"name": "agent", "image": "agent:0"}]}})
    core.patch_namespaced_pod_status(name, kube.namespace, {"status": {"containerStatuses": [{
        "name": "agent", "image": "agent:0", "imageID": "", "ready": False,
        "restartCount": 4, "state": {"waiting": {"reason": reason}}}]}})


def test_a_session_that_stays_failed_fails_its_queued_chats_and_lets_its_pod_go(
        settings, store, kube, demo_agent, make_api, make_worker, mark_ready, running_worker,
        status_watch):
    settings = settings.replace(pod_url_template=demo_agent.url, failed_session_grace_seconds=2)
    api = make_api(settings)
    session_id = api.create()
    reconciler = Reconciler(settings, store, kube)
    worker = make_worker(settings)
    with status_watch(worker):
        mark_ready(session_id, ready=0)
        crash_looping(kube, session_id)
        wait_until(lambda: api.status(session_id)["status"] == "failed", timeout=10, what="failed")
        assert api.status(session_id)["reason"] == "CrashLoopBackOff"
        for message_id in ("m-1", "m-2"):
            assert api.chat(session_id, "anyone?", message_id)[0] == 202
        assert reconciler.run_once()["messages_failed"] == 0  # within the grace: they wait
        time.sleep(2.1)
        assert reconciler.run_once()["messages_failed"] == 2
        messages = api.messages(session_id)
        assert [m["state"] for m in messages] == ["failed", "failed"]
        assert all("CrashLoopBackOff" in m["error"] for m in messages)
        work = store.redis.smembers(f"sm:w:{session_id}")
        assert not [member for member in work if member.startswith("m:")]  # the pod may go
        assert store.messages.queue_length(session_id) == 0
        # ...and its idle clock runs: later passes do not wind it back (KEDA scales it to 0).
        ttl = store.redis.pttl(f"sm:w:{session_id}")
        assert 0 < ttl <= settings.activity_ttl_seconds * 1000
        time.sleep(1.1)
        assert reconciler.run_once()["messages_failed"] == 0
        assert store.redis.pttl(f"sm:w:{session_id}") < ttl - 1000

        # It recovers: what is queued from now on is delivered.
        assert api.chat(session_id, "better now?", "m-3")[0] == 202
        k8s.CoreV1Api(kube.api_client).delete_namespaced_pod(
            f"{names.object_name(session_id)}-crash", kube.namespace, grace_period_seconds=0)
        mark_ready(session_id)
        wait_until(lambda: api.status(session_id)["status"] == "running", timeout=10,
                   what="running")
    with running_worker(worker):
        wait_until(lambda: api.messages(session_id)[-1]["state"] == "delivered", timeout=10,
                   what="m-3 delivered")
    assert store.redis.zscore("sm:failing", session_id) is None
    assert reconciler.run_once()["messages_failed"] == 0
