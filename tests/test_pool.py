"""The warm pool: sessions created ahead of their users, so a create is answered by a pod that
is already up. Against real Redis and the real API server, the pool's pods made Ready as a
kubelet would (mark_ready) and seen through the real status watch."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from devcluster.processes import wait_until
from service.bundle import KindRef
from service.core import names
from service.core.transitions import Actor
from service.store.keys import POOL_INDEX, POOL_READY
from service.worker.reconciler import Reconciler

POOL = {"warm_pool_size": 3}


@pytest.fixture
def pool_ready(store, mark_ready):
    """pool_ready(): every pooled session's pod made Ready; waits until the pool says so."""

    def make_ready() -> list[str]:
        pooled = list(store.pool.members())
        for session_id in pooled:
            mark_ready(session_id)
        wait_until(lambda: store.redis.zcard(POOL_READY) == len(pooled), timeout=15,
                   what="the pool's pods ready")
        return pooled

    return make_ready


def keep(worker) -> dict[str, int]:
    return worker.pool.keep(worker.refill_pool)


def test_a_create_is_answered_by_a_pod_that_is_already_up(
        settings, store, demo_agent, make_api, make_worker, status_watch, pool_ready):
    settings = settings.replace(pod_url_template=demo_agent.url, **POOL)
    api, worker = make_api(settings), make_worker(settings)
    assert keep(worker)["added"] == 3
    assert store.redis.zcard(POOL_INDEX) == 3
    with status_watch(worker):
        pooled = pool_ready()
        # Not a user's session: not listed, not counted, not reachable.
        listing = api.client.get("/sessions", headers=api.headers).get_json()
        assert listing == {"total": 0, "sessions": [], "next_cursor": None}
        assert api.client.get(f"/session/{pooled[0]}/status",
                              headers=api.headers).status_code == 404
        assert api.chat(pooled[0], "not yours", "x-1")[0] == 404
        figures = api.client.get("/metrics", headers=api.headers).get_json()
        assert figures["total_sessions"] == 0
        assert figures["warm_pool"] | {"oldest_age_seconds": 0} == {
            "target": 3, "size": 3, "ready": 3, "claims": 0, "misses": 0, "refills": 3,
            "oldest_age_seconds": 0}

        response = api.client.post("/session/create", json={"user_id": "ada"},
                                   headers=api.headers)
        assert response.status_code == 201
        created = response.get_json()
        assert created["status"] == "running" and created["uuid"] in pooled
        # The first chat is answered by the pod that was up: 200 at once, not 202 queued.
        code, body = api.chat(created["uuid"], "hello", "m-1")
        assert (code, body["pod_response"]["reply"]) == (200, "echo: hello")
        assert api.status(created["uuid"])["session"]["user_id"] == "ada"
        assert api.status(created["uuid"])["wake"]["kind"] == "pool"
        listing = api.client.get("/sessions", headers=api.headers).get_json()
        assert [s["uuid"] for s in listing["sessions"]] == [created["uuid"]]
        text = api.client.get("/metrics", headers={**api.headers, "Accept": "text/plain"})
        assert 'session_manager_warm_pool_sessions{state="ready"} 2.0' in text.text
        assert "session_manager_warm_pool_claims_total 1.0" in text.text
    assert keep(worker)["added"] == 1  # refilled


def test_concurrent_creates_never_share_a_pooled_session_and_an_empty_pool_falls_back(
        settings, store, make_api, make_worker, status_watch, pool_ready):
    settings = settings.replace(**POOL)
    api, worker = make_api(settings), make_worker(settings)
    keep(worker)
    with status_watch(worker):
        pooled = pool_ready()
    barrier = threading.Barrier(5)

    def create(n: int) -> dict:
        barrier.wait()
        response = api.app.test_client().post("/session/create", json={"user_id": f"u{n}"},
                                              headers=api.headers)
        assert response.status_code == 201
        return response.get_json()

    with ThreadPoolExecutor(5) as threads:
        created = list(threads.map(create, range(5)))
    ids = [c["uuid"] for c in created]
    assert len(set(ids)) == 5  # never the same one twice
    from_pool = [c for c in created if c["uuid"] in pooled]
    assert len(from_pool) == 3 and all(c["status"] == "running" for c in from_pool)
    cold = [c for c in created if c["uuid"] not in pooled]
    assert len(cold) == 2 and all(c["status"] == "created" for c in cold)  # the fallback
    figures = store.index.counts()
    assert (figures["pool_claims"], figures["pool_misses"]) == (3, 2)


def test_the_pool_is_recycled_for_new_templates_failed_pods_and_age(
        settings, store, kube, make_api, make_worker, status_watch, pool_ready):
    settings = settings.replace(**POOL)
    worker = make_worker(settings)
    keep(worker)
    old = set(store.pool.members())
    # New templates (another image): the pooled sessions on the old version are replaced.
    newer = make_worker(settings.replace(user_pod_image="registry.example/agent:2.0"))
    figures = keep(newer)
    assert (figures["recycled"], figures["added"]) == (3, 3)
    now = set(store.pool.members())
    assert not now & old
    assert all(store.records.get_session(sid) is None for sid in old)
    # A pooled session whose pod fails is replaced too.
    failing = sorted(now)[0]
    store.records.set_status(failing, "failed", actor=Actor.WATCH, reason="CrashLoopBackOff")
    assert keep(newer)["recycled"] == 1
    assert failing not in store.pool.members() and len(store.pool.members()) == 3


def test_the_reconciler_and_a_restart_leave_the_pool_as_it_is(
        settings, store, kube, make_worker):
    settings = settings.replace(reconcile_grace_seconds=0, **POOL)
    keep(make_worker(settings))
    pooled = set(store.pool.members())
    figures = Reconciler(settings, store, kube).run_once()
    assert figures["orphans_swept"] == 0 and figures["records_failed"] == 0
    assert set(store.pool.members()) == pooled
    # Another worker (a restart, a second replica) counts the same pool: nothing added.
    assert keep(make_worker(settings)) == {"recycled": 0, "added": 0, "errors": 0}
    assert store.redis.zcard(POOL_INDEX) == 3


def test_a_smaller_pool_gives_back_its_newest_extras_and_size_0_empties_it(
        settings, store, kube, make_worker):
    keep(make_worker(settings.replace(**POOL)))
    by_age = sorted(store.pool.members().items(), key=lambda item: item[1]["added_ms"])
    assert keep(make_worker(settings.replace(warm_pool_size=1))) == \
        {"recycled": 2, "added": 0, "errors": 0}
    assert list(store.pool.members()) == [by_age[0][0]]  # the oldest stays: claimed first
    assert all(store.records.get_session(sid) is None for sid, _ in by_age[1:])
    # The pool turned off: its last session goes too, its bundle with it.
    assert keep(make_worker(settings.replace(warm_pool_size=0)))["recycled"] == 1
    assert store.redis.zcard(POOL_INDEX) == 0
    deployments = kube.list_objects(KindRef("apps/v1", "Deployment"),
                                    f"{names.MANAGED_BY_LABEL}={names.MANAGED_BY_VALUE}")
    assert deployments == []
