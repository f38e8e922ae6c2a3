"""A session's life as the cluster and KEDA see it: the work set the scalers read, status from the
real Deployment and Pod watch, and the reconciler sweeping what has no (live) record. Against
real Redis, the real API server and the demo agent as a real process."""

from __future__ import annotations

import time

from kubernetes import client as k8s

from devcluster.processes import wait_until
from service import bundle
from service import store as store_module
from service.bundle import KindRef
from service.core import names
from service.core.clock import utc_now
from service.store import keys as store_keys
from service.worker.reconciler import Reconciler


def bundle_owners(kube, settings) -> list[str]:
    """The session of every bundle object in the test's namespace, one entry per object."""
    sample = names.new_session_id()
    kinds = bundle.render(sample, settings, store_module.keda_keys(sample)).kinds()
    return [obj["metadata"]["labels"][names.SESSION_LABEL]
            for kind in kinds for obj in kube.list_objects(kind, bundle.label_selector())]


def test_forwarded_chats_keep_the_session_active_for_keda_until_idle(
        settings, store, kube, demo_agent, make_api, make_worker, mark_ready, status_watch):
    # IDLE_TIMEOUT 4 s, KEDA cooldown 1 s: the work set must vanish 3 s after the last activity.
    settings = settings.replace(pod_url_template=demo_agent.url, idle_timeout_seconds=4,
                                keda_cooldown_period_seconds=1)
    ttl_ms = settings.activity_ttl_seconds * 1000
    assert ttl_ms == 3000
    api = make_api(settings)
    session_id = api.create()
    work = store_module.work_key(session_id)
    # The key the session's scaler reads (the push scaler by the trigger's sessionId).
    [scaled] = kube.list_objects(KindRef("keda.sh/v1alpha1", "ScaledObject"),
                                 bundle.label_selector(session_id))
    assert [t["metadata"]["sessionId"] for t in scaled["spec"]["triggers"]] == [session_id]
    assert store.records.work([session_id]) == {session_id: 1}  # new: active for IDLE_TIMEOUT
    with status_watch(make_worker(settings)):
        mark_ready(session_id)
        wait_until(lambda: api.status(session_id)["status"] == "running", timeout=10,
                   what="running")

    # A conversation longer than the set's TTL, every chat answered by the pod directly.
    started, chats = time.monotonic(), 0
    while True:
        code, body = api.chat(session_id, "are you there?")
        chats += 1
        last_chat = time.monotonic()
        assert (code, body["status"]) == (200, "processed")
        # Settled: only the activity is left, and it counts down from the reply.
        assert store.redis.smembers(work) == {"active"}
        assert ttl_ms - 500 < store.redis.pttl(work) <= ttl_ms
        if last_chat - started > settings.activity_ttl_seconds + 1:
            break
        time.sleep(0.7)
    assert store.records.work([session_id]) == {session_id: 1}  # still active, past its first TTL

    wait_until(lambda: not store.redis.exists(work), timeout=ttl_ms / 1000 + 2,
               interval=0.02, what="the work set to expire")
    idle = time.monotonic() - last_chat
    assert settings.activity_ttl_seconds - 0.5 < idle < settings.activity_ttl_seconds + 0.5
    assert store.records.work([session_id]) == {session_id: 0}  # inactive: KEDA may now scale to 0
    assert [m["state"] for m in api.messages(session_id)] == ["delivered"] * chats


def test_status_follows_the_cluster_through_the_watch(
        settings, kube, apiserver, make_api, make_worker, mark_ready, status_watch):
    api = make_api(settings)
    session_id = api.create()
    core = k8s.CoreV1Api(kube.api_client)
    pod_name = f"{names.object_name(session_id)}-7d9f-abcde"

    def status() -> tuple[str, str | None]:
        body = api.status(session_id)
        return body["status"], body.get("reason")

    with status_watch(make_worker(settings)):
        mark_ready(session_id)
        wait_until(lambda: status() == ("running", None), timeout=10, what="running")
        assert api.status(session_id)["ready_replicas"] == 1

        # KEDA scaled it to 0: asleep already while its pod is still shutting down...
        k8s.AppsV1Api(kube.api_client).patch_namespaced_deployment_scale(
            names.object_name(session_id), kube.namespace, {"spec": {"replicas": 0}})
        wait_until(lambda: status() == ("sleeping", None), timeout=10, what="sleeping")
        # ...and once the pod is gone.
        mark_ready(session_id, ready=0, replicas=0)
        wait_until(lambda: api.status(session_id)["ready_replicas"] == 0, timeout=10,
                   what="the pod gone")
        assert status() == ("sleeping", None)

        # Woken again, but its pod cannot pull its image.
        mark_ready(session_id, ready=0, replicas=1)
        wait_until(lambda: status() == ("waking", None), timeout=10, what="waking")
        labels = bundle.bundle_labels(session_id)
        core.create_namespaced_pod(kube.namespace, {
            "metadata": {"name": pod_name, "labels": labels},
            "spec": {"containers": [{"name": "agent", "image": "no-such-image:0"}]},
        })
        core.patch_namespaced_pod_status(pod_name, kube.namespace, {"status": {
            "phase": "Pending",
            "containerStatuses": [{
                "name": "agent", "image": "no-such-image:0", "imageID": "", "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff",
                                      "message": "Back-off pulling image"}},
            }],
        }})
        wait_until(lambda: status() == ("failed", "ImagePullBackOff"), timeout=10, what="failed")
        assert api.status(session_id)["replicas"] == 1

        # Someone fixed the image: the failing pod is replaced and the new one gets ready.
        core.delete_namespaced_pod(pod_name, kube.namespace, grace_period_seconds=0)
        wait_until(lambda: status() == ("waking", None), timeout=10,
                   what="waking after the pod went")
        mark_ready(session_id)
        wait_until(lambda: status() == ("running", None), timeout=10, what="running again")


def test_reconciler_sweeps_orphan_bundles_and_expired_sessions(
        settings, store, kube, make_api):
    settings = settings.replace(reconcile_grace_seconds=0)
    # A bundle whose create died before its record was written.
    orphan = names.new_session_id()
    kube.apply(bundle.render(orphan, settings, store_module.keda_keys(orphan)))
    # KEDA puts its finalizer on every ScaledObject: a delete waits for the operator.
    keda = k8s.CustomObjectsApi(kube.api_client)
    scaled_object = ("keda.sh", "v1alpha1", kube.namespace, "scaledobjects",
                     names.object_name(orphan))
    keda.patch_namespaced_custom_object(
        *scaled_object, {"metadata": {"finalizers": ["finalizer.keda.sh"]}})
    # A session whose record expired (SESSION_TTL 2 s, no activity since).
    expired = make_api(settings.replace(session_ttl_seconds=2)).create()
    # A live session: left alone.
    live = make_api(settings).create()
    per_bundle = len(bundle_owners(kube, settings)) // 3
    assert sorted(bundle_owners(kube, settings)) == sorted([orphan, expired, live] * per_bundle)
    wait_until(lambda: not store.redis.exists(store_keys.record_key(expired)), timeout=5,
               what="the record to expire")

    figures = Reconciler(settings, store, kube).run_once()

    assert figures == {"expired_swept": 1, "orphans_swept": 1, "records_failed": 0,
                       "deletes_finished": 0, "pauses_repaired": 0, "archives_swept": 0,
                       "messages_failed": 0, "errors": 0}
    assert store.index.expired_page(now=time.time(), offset=0, limit=100) == ([], 0)
    assert store.index.counts()["total"] == 1  # the expired one is gone from the indexes too
    # The orphan's ScaledObject waits for KEDA to drop its finalizer: being deleted already,
    # it is not an orphan to sweep (and count) again.
    assert keda.get_namespaced_custom_object(*scaled_object)["metadata"]["deletionTimestamp"]
    assert not any(Reconciler(settings, store, kube).run_once().values())
    keda.patch_namespaced_custom_object(*scaled_object, {"metadata": {"finalizers": None}})
    # Nothing of the two is left in the namespace; the live session's bundle is untouched.
    assert bundle_owners(kube, settings) == [live] * per_bundle


def test_a_relist_forgets_a_failing_pod_deleted_while_no_watch_was_open(store):
    """After a watch gap the tracker is handed the whole current state: a pod that failed and
    was deleted meanwhile must not keep the session `failed`."""
    from service.worker.status_watch import StatusTracker

    session_id = store.records.reserve_id()
    store.records.create_session(session_id, user_id="u", token_hash="x" * 64,
                         now=utc_now())
    labels = {names.MANAGED_BY_LABEL: names.MANAGED_BY_VALUE, names.SESSION_LABEL: session_id}
    deployment = {"metadata": {"name": names.object_name(session_id), "labels": labels},
                  "spec": {"replicas": 1}, "status": {}}
    failing_pod = {"metadata": {"name": "pod-1", "labels": labels}, "status": {
        "containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull"}}}]}}
    tracker = StatusTracker(store)
    tracker.on_deployment("RELIST", {"items": [deployment]})
    assert store.records.get_session(session_id)["status"] == "waking"
    tracker.on_pod("RELIST", {"items": [failing_pod]})
    assert store.records.get_session(session_id)["reason"] == "ErrImagePull"
    tracker.on_pod("RELIST", {"items": []})  # deleted during the gap: no DELETED event came
    record = store.records.get_session(session_id)
    assert (record["status"], record["reason"]) == ("waking", "")
    tracker.on_deployment("RELIST", {"items": []})  # Deployment gone too: forgotten
    tracker.on_pod("MODIFIED", failing_pod)
    assert store.records.get_session(session_id)["status"] == "waking"  # nothing to publish against


def test_a_deployment_still_counting_a_terminating_pod_is_not_running(store):
    """Sleep then wake in quick succession: the Deployment can report the old, terminating pod
    as ready before its controller catches up. No chat may be sent to that pod: the session
    is `running` only once a Ready pod that stays is known, and the status is current."""
    from service.worker.status_watch import StatusTracker

    session_id = store.records.reserve_id()
    store.records.create_session(session_id, user_id="u", token_hash="x" * 64,
                         now=utc_now())
    labels = {names.MANAGED_BY_LABEL: names.MANAGED_BY_VALUE, names.SESSION_LABEL: session_id}
    ready = [{"type": "Ready", "status": "True"}]
    old_pod = {"metadata": {"name": "pod-old", "labels": labels,
                            "deletionTimestamp": "2026-01-01T00:00:00Z"},
               "status": {"podIP": "10.0.0.1", "conditions": ready}}
    stale = {"metadata": {"name": names.object_name(session_id), "labels": labels,
                          "generation": 3},
             "spec": {"replicas": 1}, "status": {"observedGeneration": 2, "readyReplicas": 1}}
    tracker = StatusTracker(store)
    tracker.on_pod("RELIST", {"items": [old_pod]})
    tracker.on_deployment("RELIST", {"items": [stale]})
    assert store.records.get_session(session_id)["status"] == "waking"  # status behind the spec
    caught_up = {**stale, "status": {"observedGeneration": 3, "readyReplicas": 1}}
    tracker.on_deployment("MODIFIED", caught_up)
    record = store.records.get_session(session_id)
    assert (record["status"], record["pod_ip"]) == ("waking", "")  # only a terminating pod
    new_pod = {"metadata": {"name": "pod-new", "labels": labels},
               "status": {"podIP": "10.0.0.2", "conditions": ready}}
    tracker.on_pod("ADDED", new_pod)
    record = store.records.get_session(session_id)
    assert (record["status"], record["pod_ip"]) == ("running", "10.0.0.2")
