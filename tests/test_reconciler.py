"""The reconciler at scale, against real Redis and the real API server: paged metadata-only
lists, every expired record reaped in one pass, an unreachable API server ending the pass
after a few failures instead of a timeout per session."""

from __future__ import annotations

import time

from kubernetes import client as k8s

from devcluster.processes import wait_until
from service import bundle
from service import store as store_module
from service.core import names
from service.core.clock import utc_now
from service.kube import Kube
from service.store import keys as store_keys
from service.worker import reconciler
from service.worker.reconciler import Reconciler

EXPIRED = 150  # past the 100 a pass used to reap


def short_lived_store(settings) -> store_module.Store:
    """Records written through this one expire after a second."""
    return store_module.Store.from_url(settings.redis_url, socket_timeout_seconds=2,
                                       session_ttl_seconds=1, activity_ttl_seconds=1)


def test_one_pass_reaps_every_expired_record_and_pages_through_the_cluster(
        settings, store, kube, monkeypatch):
    monkeypatch.setattr(reconciler, "PAGE_SIZE", 7)  # many pages of everything
    settings = settings.replace(reconcile_grace_seconds=0)
    short = short_lived_store(settings)
    expired = [names.new_session_id() for _ in range(EXPIRED)]
    for session_id in expired:
        short.records.create_session(session_id, user_id="u", token_hash="h", now=utc_now())
    short.redis.close()
    # Orphans (bundles without records) over several pages of each kind's list.
    orphans = [names.new_session_id() for _ in range(10)]
    for session_id in orphans:
        kube.apply(bundle.render(session_id, settings, store_module.keda_keys(session_id)))
    wait_until(lambda: not any(store.redis.exists(store_keys.record_key(s)) for s in expired),
               timeout=10, what="the records to expire")

    figures = Reconciler(settings, store, kube).run_once()

    assert (figures["expired_swept"], figures["orphans_swept"], figures["errors"]) == \
        (EXPIRED, len(orphans), 0)
    assert store.index.expired_page(now=time.time(), offset=0, limit=1000) == ([], 0)
    assert store.index.counts()["total"] == 0
    sample = names.new_session_id()
    kinds = bundle.render(sample, settings, store_module.keda_keys(sample)).kinds()
    left = [obj for kind in kinds for obj in kube.list_objects(kind, bundle.label_selector())
            if not obj["metadata"].get("deletionTimestamp")]
    assert left == []


def test_an_unreachable_api_server_ends_the_pass_after_a_few_sessions(settings, store):
    short = short_lived_store(settings)
    for _ in range(20):
        short.records.create_session(names.new_session_id(), user_id="u", token_hash="h",
                             now=utc_now())
    short.redis.close()
    time.sleep(1.5)
    configuration = k8s.Configuration()
    configuration.host = "https://127.0.0.1:1"  # a closed port on loopback
    down = Kube(k8s.ApiClient(configuration), settings.namespace, request_timeout_seconds=1)
    try:
        started = time.monotonic()
        figures = Reconciler(settings, store, down).run_once()
    finally:
        down.close()
    assert figures["expired_swept"] == 0
    assert figures["errors"] == reconciler.UNAVAILABLE_IN_A_ROW + 1  # + the pass stopping
    assert time.monotonic() - started < 30
    # Nothing was dropped: the next pass with the API server back reaps all twenty.
    assert len(store.index.expired_page(now=time.time(), offset=0, limit=100)[0]) == 20


def test_a_kind_removed_from_the_templates_is_still_swept_from_existing_sessions(
        settings, store, kube, make_api, tmp_path):
    """Sessions created while the templates made a Service keep it after service.yaml is
    removed; delete and the reconciler must still sweep it (the kinds ever applied are
    recorded), or every such session leaks its Service."""
    import shutil

    api = make_api(settings)
    kept, orphaned = api.create(), api.create()
    without_service = tmp_path / "templates"
    shutil.copytree(settings.templates_dir, without_service)
    (without_service / "service.yaml").unlink()
    later = settings.replace(templates_dir=without_service, reconcile_grace_seconds=0)
    service_kind = bundle.KindRef("v1", "Service")
    assert service_kind not in bundle.render(kept, later, store_module.keda_keys(kept)).kinds()

    def services(session_id: str) -> list:
        return [obj for obj in kube.list_objects(service_kind, bundle.label_selector(session_id))
                if not obj["metadata"].get("deletionTimestamp")]

    assert services(kept) and services(orphaned)
    newer = make_api(later)
    response = newer.client.delete(f"/session/{kept}", headers=newer.headers)
    assert response.status_code == 200, response.get_json()
    assert services(kept) == []
    store.records.delete_session(orphaned)  # its record lost: the reconciler finds an orphan bundle
    figures = Reconciler(later, store, kube).run_once()
    assert figures["orphans_swept"] == 1 and figures["errors"] == 0
    assert services(orphaned) == []
