"""Tiers against the real API server and Redis, with the demo agent as a real process: an idle
session is archived (its bundle swept, its record and conversation kept) and a chat or a wake
brings it back and is answered; a chat that lands during the archive's sweep waits, queued,
and the worker restores it after; a change of the templates reaches a sleeping session as it
wakes (without touching the replica count KEDA owns), and `reapply` brings awake ones up to
date, bounded and idempotent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from kubernetes import client as k8s

from devcluster.processes import wait_until
from service.bundle import template_kinds
from service.core import names
from service.core.config import REPO_ROOT
from service.core.transitions import Actor
from service.sessions.tiers import Tiers
from service.store import keda_keys
from service.worker.reconciler import Reconciler

from .constants import API_KEY

# Asleep 2 s after the last activity, archived 3 s after it.
ARCHIVING = {"idle_timeout_seconds": 2, "keda_cooldown_period_seconds": 1,
             "archive_after_seconds": 3}


def bundle_objects(kube, settings, session_id: str) -> list[str]:
    """`Kind/name` of every object the session has, of every kind the templates make."""
    return sorted(f"{kind.kind}/{obj['metadata']['name']}"
                  for kind in template_kinds(settings, keda_keys)
                  for obj in kube.list_objects(kind, f"{names.SESSION_LABEL}={session_id}"))


def deployment(kube, session_id: str) -> dict:
    apps = k8s.AppsV1Api(kube.api_client)
    return apps.read_namespaced_deployment(names.object_name(session_id),
                                           kube.namespace).to_dict()


def image_of(kube, session_id: str) -> str:
    return deployment(kube, session_id)["spec"]["template"]["spec"]["containers"][0]["image"]


def replies(api, session_id: str) -> list[tuple[str, str, str | None]]:
    return [(m["message_id"], m["state"], (m.get("reply") or {}).get("reply"))
            for m in api.messages(session_id)]


def archive_now(worker) -> dict[str, int]:
    """One archiver pass, as the worker's leader runs them."""
    return worker.archiver.archive_idle(worker.archive_pool)


def test_an_idle_session_is_archived_and_a_chat_brings_it_back_and_is_answered(
        settings, store, kube, demo_agent, make_api, make_worker, mark_ready, running_worker,
        status_watch):
    settings = settings.replace(pod_url_template=demo_agent.url, **ARCHIVING)
    api, worker = make_api(settings), make_worker(settings)
    session_id = api.create()
    everything = bundle_objects(kube, settings, session_id)
    assert len(everything) == 4
    with status_watch(worker):
        mark_ready(session_id)
        wait_until(lambda: api.status(session_id)["status"] == "running", timeout=10,
                   what="running")
        code, body = api.chat(session_id, "before", "m-1")
        assert (code, body["status"]) == (200, "processed"), body
        mark_ready(session_id, ready=0, replicas=0)  # KEDA slept it
        wait_until(lambda: api.status(session_id)["status"] == "sleeping", timeout=10,
                   what="sleeping")
        # Not yet idle ARCHIVE_AFTER_SECONDS: the pass leaves it.
        assert archive_now(worker)["archived"] == 0
        assert bundle_objects(kube, settings, session_id) == everything
        wait_until(lambda: archive_now(worker)["archived"] == 1, timeout=10, interval=0.5,
                   what="the archive pass to archive the idle session")

        # Its bundle is gone; its record and conversation are not, and what the watch sees
        # of the sweep does not make it `sleeping` or `failed` again.
        assert bundle_objects(kube, settings, session_id) == []
        time.sleep(1)
        status = api.status(session_id)
        assert (status["status"], status["replicas"], status["queue_length"]) == \
            ("archived", 0, 0)
    assert replies(api, session_id) == [("m-1", "delivered", "echo: before")]
    listed = api.client.get("/sessions?status=archived", headers=api.headers).get_json()
    assert [s["uuid"] for s in listed["sessions"]] == [session_id]
    figures = api.client.get("/metrics", headers=api.headers).get_json()
    assert (figures["archived_sessions"], figures["sleeping_sessions"]) == (1, 0)
    # Archived is not `failed`: the reconciler leaves it alone.
    assert not any(Reconciler(settings.replace(reconcile_grace_seconds=0), store, kube)
                   .run_once().values())

    # A chat: kept (202) and the bundle applied again at once; the pod answers it once up.
    code, body = api.chat(session_id, "after", "m-2")
    assert (code, body["status"]) == (202, "queued"), body
    assert bundle_objects(kube, settings, session_id) == everything
    assert api.status(session_id)["status"] == "waking"
    assert store.bundles.restores_asked() == 0
    with running_worker(worker):
        mark_ready(session_id)
        wait_until(lambda: ("m-2", "delivered", "echo: after") in replies(api, session_id),
                   timeout=10, what="the chat delivered after the restore")
    assert replies(api, session_id) == [("m-1", "delivered", "echo: before"),
                                        ("m-2", "delivered", "echo: after")]
    assert [d["message_id"] for d in demo_agent.deliveries()] == ["m-1", "m-2"]


def test_a_chat_during_the_archive_sweep_waits_queued_and_the_worker_restores_it(
        settings, store, kube, demo_agent, make_api, make_worker, mark_ready, running_worker):
    settings = settings.replace(pod_url_template=demo_agent.url, **ARCHIVING)
    api, worker = make_api(settings), make_worker(settings)
    session_id = api.create()
    everything = bundle_objects(kube, settings, session_id)
    # The archiver has marked it archived and holds its bundle lock; its sweep is still on.
    outcome = store.bundles.archive(session_id, idle_since=time.time() + 1, lock_token="archiver",
                            lock_seconds=60)
    assert outcome == "archived"

    code, body = api.chat(session_id, "while sweeping", "m-1")
    assert (code, body["status"]) == (202, "queued"), body
    # The API's restore found the lock taken: nothing applied, the ask kept for the worker.
    assert store.bundles.restores_asked() == 1 and api.status(session_id)["status"] == "archived"
    assert api.status(session_id)["queue_length"] == 1

    worker.archiver.sweep(session_id)  # the archiver's deletes end, and it lets go of the lock
    assert bundle_objects(kube, settings, session_id) == []
    store.bundles.release_bundle_lock(session_id, "archiver")
    with running_worker(worker):
        wait_until(lambda: bundle_objects(kube, settings, session_id) == everything,
                   timeout=10, what="the worker to restore the bundle")
        wait_until(lambda: api.status(session_id)["status"] == "waking", timeout=10,
                   what="waking")
        mark_ready(session_id)
        wait_until(lambda: replies(api, session_id) == [
            ("m-1", "delivered", "echo: while sweeping")],
            timeout=10, what="the queued chat delivered")
    assert store.bundles.restores_asked() == 0


def hold_scaled_object(kube, session_id: str, held: bool) -> None:
    """Play a busy KEDA: a finalizer on the ScaledObject keeps it, being deleted, until let go."""
    k8s.CustomObjectsApi(kube.api_client).patch_namespaced_custom_object(
        "keda.sh", "v1alpha1", kube.namespace, "scaledobjects", names.object_name(session_id),
        {"metadata": {"finalizers": ["test.session-manager/busy-keda"] if held else None}})


def test_an_archive_does_not_wait_for_a_finalizer_and_a_chat_waits_until_its_objects_are_gone(
        settings, store, kube, demo_agent, make_api, make_worker, mark_ready, running_worker):
    settings = settings.replace(pod_url_template=demo_agent.url, **ARCHIVING)
    api, worker = make_api(settings), make_worker(settings)
    session_id, other = api.create(), api.create()
    everything = bundle_objects(kube, settings, session_id)
    scaled_object = f"ScaledObject/{names.object_name(session_id)}"
    hold_scaled_object(kube, session_id, True)
    store.redis.zadd("sm:bundled", {session_id: time.time() - 60, other: time.time() - 60})

    # The pass deletes both bundles and returns; it does not sit out KEDA's finalizer (the
    # sweep used to wait up to 90 s for it, holding one of BUNDLE_CONCURRENCY slots).
    started = time.monotonic()
    assert archive_now(worker)["archived"] == 2
    assert time.monotonic() - started < 30
    assert bundle_objects(kube, settings, other) == []
    assert bundle_objects(kube, settings, session_id) == [scaled_object]  # being deleted
    assert archive_now(worker) == {"archived": 0, "errors": 0, "swept": 1, "sweeping": 1}

    # A chat meanwhile is kept, and nothing is applied onto the object about to vanish.
    code, body = api.chat(session_id, "while KEDA is busy", "m-1")
    assert (code, body["status"]) == (202, "queued"), body
    assert store.bundles.restores_asked() == 1 and api.status(session_id)["status"] == "archived"
    text = api.client.get("/metrics", headers={**api.headers, "Accept": "text/plain"})
    assert "session_manager_archives_sweeping 1.0" in text.get_data(as_text=True)
    with running_worker(worker):
        time.sleep(3)  # the worker tries the restore every second
        assert bundle_objects(kube, settings, session_id) == [scaled_object]
        assert api.status(session_id)["status"] == "archived"
        hold_scaled_object(kube, session_id, False)  # KEDA lets go: the object is gone
        wait_until(lambda: bundle_objects(kube, settings, session_id) == everything,
                   timeout=10, what="the bundle restored once its old objects were gone")
        wait_until(lambda: api.status(session_id)["status"] == "waking", timeout=10,
                   what="waking")
        mark_ready(session_id)
        wait_until(lambda: replies(api, session_id) == [
            ("m-1", "delivered", "echo: while KEDA is busy")],
            timeout=10, what="the queued chat delivered")
    assert store.bundles.sweeping(limit=10) == {} and store.bundles.restores_asked() == 0
    # The restored ScaledObject is a new one, not the held one brought back.
    restored = k8s.CustomObjectsApi(kube.api_client).get_namespaced_custom_object(
        "keda.sh", "v1alpha1", kube.namespace, "scaledobjects", names.object_name(session_id))
    assert "deletionTimestamp" not in restored["metadata"]


def test_a_wake_brings_an_archived_session_back(settings, store, kube, make_api, make_worker):
    settings = settings.replace(**ARCHIVING)
    api, worker = make_api(settings), make_worker(settings)
    session_id = api.create()
    everything = bundle_objects(kube, settings, session_id)
    store.redis.zadd("sm:bundled", {session_id: time.time() - 60})  # idle for a minute
    assert archive_now(worker)["archived"] == 1
    assert bundle_objects(kube, settings, session_id) == []
    response = api.client.post(f"/session/{session_id}/sleep", headers=api.headers)
    assert (response.status_code, response.get_json()["status"]) == (200, "archived")

    response = api.client.post(f"/session/{session_id}/wake", headers=api.headers)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["status"] == "waking"
    assert bundle_objects(kube, settings, session_id) == everything
    assert api.status(session_id)["status"] == "waking"
    # The new bundle carries no pause annotation and the record agrees.
    assert api.status(session_id)["paused"] is False
    assert not kube.is_paused(session_id)


def test_a_template_change_reaches_a_sleeping_session_on_its_next_wake(
        settings, store, kube, make_api, mark_ready):
    old = settings.replace(user_pod_image="registry.example/agent:1.0")
    new = settings.replace(user_pod_image="registry.example/agent:2.0")
    api = make_api(old)
    sleeper, chatter, awake = api.create(), api.create(), api.create()
    for session_id in (sleeper, chatter):
        mark_ready(session_id, ready=0, replicas=0)
        store.records.set_status(session_id, "sleeping", actor=Actor.WATCH, replicas=0)
    mark_ready(awake)
    store.records.set_status(awake, "running", actor=Actor.WATCH, replicas=1, ready_replicas=1)

    # The control plane now runs with the new image.
    api = make_api(new)
    response = api.client.post(f"/session/{sleeper}/wake", headers=api.headers)
    assert response.status_code == 202, response.get_json()
    assert image_of(kube, sleeper) == "registry.example/agent:2.0"
    # The re-apply left the replica count to its owner: KEDA (here, the test) scales it.
    assert deployment(kube, sleeper)["spec"]["replicas"] == 0
    version = Tiers(new, store, kube).version()
    assert store.records.get_session(sleeper)["bundle_version"] == version
    # A chat to a sleeping session on the old bundle brings it up to date the same way. The
    # message is in the session's work set from its admission on, but until the re-apply is
    # done the push scaler answers KEDA's polls "inactive": KEDA cannot start the old pod.
    sessions = api.app.extensions["session_manager"].sessions
    real_apply = sessions.tiers.apply
    seen_during_the_apply: list[int] = []

    def apply_while_polled(session_id, **kwargs):
        seen_during_the_apply.append(store.records.work([session_id])[session_id])
        return real_apply(session_id, **kwargs)

    sessions.tiers.apply = apply_while_polled
    code, _ = api.chat(chatter, "hello", "m-1")
    assert code == 202
    assert seen_during_the_apply == [-1]  # held
    assert store.records.work([chatter]) == {chatter: 2}  # the message and the activity, told now
    assert image_of(kube, chatter) == "registry.example/agent:2.0"
    assert deployment(kube, chatter)["spec"]["replicas"] == 0
    # An awake session is left as it is until `reapply` (its pod would be replaced mid-chat).
    assert image_of(kube, awake) == "registry.example/agent:1.0"
    assert store.records.get_session(awake)["bundle_version"] != version


def cli_reapply(settings, apiserver, *args: str) -> dict:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("USER_POD")},
           "REDIS_URL": settings.redis_url, "NAMESPACE": settings.namespace,
           "KUBECONFIG": str(apiserver.kubeconfig), "API_KEYS": API_KEY,
           "USER_POD_IMAGE": settings.user_pod_image, "LOG_LEVEL": "WARNING"}
    result = subprocess.run([sys.executable, "-m", "service", "reapply", *args], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_reapply_updates_awake_sessions_bounded_and_idempotent(
        settings, store, kube, make_api, apiserver, monkeypatch, mark_ready):
    old = settings.replace(user_pod_image="registry.example/agent:1.0")
    new = settings.replace(user_pod_image="registry.example/agent:2.0")
    api = make_api(old)
    awake = [api.create() for _ in range(6)]
    sleeper = api.create()
    mark_ready(sleeper, ready=0, replicas=0)
    store.records.set_status(sleeper, "sleeping", actor=Actor.WATCH, replicas=0)

    in_flight, peak, lock = 0, 0, threading.Lock()
    real_apply = kube.apply

    def counted_apply(rendered, **kwargs):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            time.sleep(0.2)  # long enough for every permitted apply to overlap
            return real_apply(rendered, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(kube, "apply", counted_apply)
    figures = Tiers(new, store, kube).reapply(concurrency=2)
    assert figures == {"sessions": 6, "applied": 6, "current": 0, "skipped": 0, "locked": 0,
                       "failed": 0}
    assert peak == 2  # never more than asked, and it did run them side by side
    assert {image_of(kube, s) for s in awake} == {"registry.example/agent:2.0"}
    assert image_of(kube, sleeper) == "registry.example/agent:1.0"  # updated as it wakes
    versions = {s: deployment(kube, s)["metadata"]["resource_version"] for s in awake}

    # Again, as an operator runs it: nothing to do; forced, nothing changes in the cluster.
    assert cli_reapply(new, apiserver)["applied"] == 0
    forced = cli_reapply(new, apiserver, "--force", "--concurrency", "3")
    assert (forced["applied"], forced["sessions"]) == (6, 6)
    assert {s: deployment(kube, s)["metadata"]["resource_version"] for s in awake} == versions


def test_an_archived_session_whose_sweep_failed_is_swept_by_the_reconciler(
        settings, store, kube, make_api):
    settings = settings.replace(reconcile_grace_seconds=0, **ARCHIVING)
    api = make_api(settings)
    session_id, other = api.create(), api.create()
    assert store.bundles.archive(session_id, idle_since=time.time() + 1, lock_token="archiver",
                         lock_seconds=60) == "archived"
    store.bundles.release_bundle_lock(session_id, "archiver")  # its sweep never happened
    assert bundle_objects(kube, settings, session_id)

    figures = Reconciler(settings, store, kube).run_once()
    assert figures["archives_swept"] == 1 and figures["records_failed"] == 0
    assert bundle_objects(kube, settings, session_id) == []
    assert api.status(session_id)["status"] == "archived"
    assert len(bundle_objects(kube, settings, other)) == 4  # the other one is untouched


def test_a_worker_of_another_installation_archives_nothing_and_refuses_to_start(
        settings, store, kube, make_api, make_worker, apiserver, running_worker):
    """One Redis database serves one sessions namespace: the archiver, reconciler and watch
    act on every record there, so a worker of another installation must not lead them."""
    settings = settings.replace(**ARCHIVING)
    api = make_api(settings)
    session_id = api.create()
    store.records.set_status(session_id, "sleeping", actor=Actor.WATCH)
    store.redis.zadd("sm:bundled", {session_id: time.time() - 3600})  # idle for an hour
    assert store.coordination.claim_installation("another-installation") == "another-installation"

    env = {**os.environ, "REDIS_URL": settings.redis_url, "NAMESPACE": settings.namespace,
           "KUBECONFIG": str(apiserver.kubeconfig), "API_KEYS": API_KEY,
           "KEDA_SCALER": "redis", "WORKER_HEALTH_PORT": "0"}
    result = subprocess.run([sys.executable, "-m", "service", "worker"], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "'another-installation'" in result.stderr and \
        f"NAMESPACE={settings.namespace!r}" in result.stderr and "Traceback" not in result.stderr

    worker = make_worker(settings)
    with running_worker(worker):
        time.sleep(3)  # a few archiver passes, were it leading
        assert not store.redis.exists("sm:lease:archiver")
    assert api.status(session_id)["status"] == "sleeping"
    assert len(bundle_objects(kube, settings, session_id)) == 4

    # A worker with the same settings, once the database is its installation's, archives it.
    store.redis.delete("sm:installation")
    with running_worker(make_worker(settings)):
        wait_until(lambda: store.records.get_session(session_id)["status"] == "archived",
                   timeout=15, what="the session archived by a worker of this installation")
    assert bundle_objects(kube, settings, session_id) == []
    assert store.coordination.claim_installation("another-installation") == settings.namespace


def test_a_worker_that_met_no_redis_at_start_checks_the_installation_before_it_delivers(
        settings, store, kube, make_api, worker_process, redis_server):
    """Redis was away when the worker of another installation started (so the start-up check
    could not run): once Redis is back it must neither claim nor fail this installation's
    messages, and it stops (exit 2) naming both namespaces."""
    api = make_api(settings)
    session_id = api.create()
    assert api.chat(session_id, "not yours", "m-1")[0] == 202
    store.records.set_status(session_id, "running", actor=Actor.WATCH, replicas=1, ready_replicas=1)
    assert store.coordination.claim_installation(settings.namespace) == settings.namespace
    store.redis.zrem("sm:pending", session_id)  # not due for this installation's own worker
    redis_server.stop()
    try:
        worker = worker_process(settings.replace(namespace="another-installation"), "other")
        time.sleep(2)  # it is up, retrying Redis
        assert worker.process.poll() is None
    finally:
        redis_server.start()
    store.redis.zadd("sm:pending", {session_id: 0})  # due now
    assert worker.process.wait(30) == 2
    log = worker.output()
    assert f"'{settings.namespace}'" in log and "NAMESPACE='another-installation'" in log
    [message] = api.messages(session_id)
    assert (message["state"], message["attempts"]) == ("queued", 0)  # never claimed
    assert not message.get("error")  # nor tried


def test_reapply_runs_the_checks_every_worker_runs(settings, store, apiserver, tmp_path):
    env = {**os.environ, "REDIS_URL": settings.redis_url, "NAMESPACE": settings.namespace,
           "KUBECONFIG": str(apiserver.kubeconfig), "LOG_LEVEL": "WARNING"}
    store.coordination.claim_installation("another-installation")
    result = subprocess.run([sys.executable, "-m", "service", "reapply"], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "'another-installation'" in result.stderr, result.stderr
    store.redis.delete("sm:installation")
    # Templates whose KEDA trigger does not match KEDA_SCALER: refused before any apply.
    result = subprocess.run([sys.executable, "-m", "service", "reapply"], cwd=REPO_ROOT,
                            env={**env, "KEDA_SCALER": "redis",
                                 "TEMPLATES_DIR": str(REPO_ROOT / "templates")},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "configuration error" in result.stderr, result.stderr
    assert not store.redis.exists("sm:installation")  # it stopped before touching anything
