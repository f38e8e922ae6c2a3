"""Faults a production Redis shows: full at `maxmemory`, read-only after a failover. Each
answers 503 with its own code, writes nothing half-way, shows in /health, and recovers
without a restart."""

from __future__ import annotations

import gc
import threading
import time
from collections import Counter

import pytest
import requests

from devcluster.ports import free_port
from devcluster.processes import WaitTimedOut, wait_until
from service import bundle
from service import store as store_module
from service.core import names
from service.core.transitions import Actor
from service.http import create_app
from service.http.readiness import WORKER_SILENT_SECONDS
from service.kube import WATCH_READ_MARGIN_SECONDS
from service.store import keys as store_keys
from service.worker import Worker
from service.worker.reconciler import Reconciler
from service.worker.runner import WATCH_TIMEOUT_SECONDS

from .constants import API_KEY

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def client(settings, store, kube):
    return create_app(settings, store=store, kube=kube).test_client()


def create(client) -> str:
    response = client.post("/session/create", json={"user_id": "u"}, headers=KEY)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["uuid"]


def _assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.get_json()
    assert response.get_json()["code"] == code, response.get_json()


def conversation(client, sid) -> list[str]:
    response = client.get(f"/session/{sid}/messages", headers=KEY)
    assert response.status_code == 200, response.get_json()
    return [m["message"] for m in response.get_json()["messages"]]


def test_redis_at_maxmemory_is_503_out_of_memory_writes_nothing_and_recovers(client, store):
    sid = create(client)
    assert client.post(f"/session/{sid}/chat", json={"message": "before"},
                       headers=KEY).status_code == 202
    used = int(store.redis.info("memory")["used_memory"])
    # Full: every write is over it (with a margin, as a freed client buffer would let one
    # write through a limit set at exactly what is used).
    store.redis.config_set("maxmemory", used - 256 * 1024)
    try:
        chats = [client.post(f"/session/{sid}/chat", json={"message": f"while full {i}"},
                             headers=KEY) for i in range(5)]
        creates = [client.post("/session/create", json={"user_id": "v"}, headers=KEY)
                   for _ in range(3)]
        for response in chats + creates:
            assert response.status_code == 503, response.get_json()
            assert response.get_json()["code"] == "redis_out_of_memory"
            assert response.headers["Retry-After"]
        health = client.get("/health")
        assert health.status_code == 200  # reads still work: degraded, not unready
        assert (health.json["status"], health.json["redis"]) == ("degraded", "memory_pressure")
        assert health.json["redis_memory"]["ratio"] >= 0.9
        store.redis.config_set("maxmemory", 0)
        assert conversation(client, sid) == ["before"]  # nothing half-written
    finally:
        store.redis.config_set("maxmemory", 0)
    assert client.post(f"/session/{sid}/chat", json={"message": "after"},
                       headers=KEY).status_code == 202
    assert conversation(client, sid) == ["before", "after"]
    assert store.index.counts()["total"] == 1


def test_a_read_only_redis_is_503_read_only_and_recovers(client, store):
    sid = create(client)
    # A replica of a primary that is not there (a closed port on loopback): it keeps its data
    # and refuses writes, as a demoted primary does after a failover.
    store.redis.replicaof("127.0.0.1", free_port())
    try:
        response = client.post(f"/session/{sid}/chat", json={"message": "x"}, headers=KEY)
        assert response.status_code == 503, response.get_json()
        assert response.get_json()["code"] == "redis_read_only"
    finally:
        store.redis.replicaof("no", "one")
    assert client.post(f"/session/{sid}/chat", json={"message": "x"},
                       headers=KEY).status_code == 202
    assert conversation(client, sid) == ["x"]


def test_health_tells_whether_a_worker_is_delivering(client, store):
    assert client.get("/health").json["workers"] == {"status": "none", "live": 0}
    store.coordination.report_worker("w-1", [])
    body = client.get("/health").json
    assert body["workers"] == {"status": "healthy", "live": 1}
    assert body["status"] == "healthy"
    store.coordination.report_worker("w-2", ["delivery"])
    body = client.get("/health").json
    assert (body["status"], body["workers"]["status"]) == ("degraded", "stalled")
    assert body["workers"]["stalled_loops"] == ["delivery"]
    # Reports that stopped coming: the worker is gone or wedged before its own report.
    old = time.time() - WORKER_SILENT_SECONDS - 1
    for worker in ("w-1", "w-2"):
        store.redis.hset(store_keys.WORKER_REPORTS, worker,
                         f'{{"at": {old}, "stalled": []}}')
    body = client.get("/health").json
    assert body["workers"]["status"] == "none" and body["status"] == "degraded"
    assert body["workers"]["last_report_seconds_ago"] >= WORKER_SILENT_SECONDS


# -- the Kubernetes API server going away, through a TCP proxy in front of the real one ------


def objects_by_session(kube, settings) -> dict[str, int]:
    sample = names.new_session_id()
    found: Counter = Counter()
    for kind in bundle.render(sample, settings, store_module.keda_keys(sample)).kinds():
        for obj in kube.list_objects(kind, bundle.label_selector()):
            if not obj["metadata"].get("deletionTimestamp"):
                found[obj["metadata"]["labels"][names.SESSION_LABEL]] += 1
    return dict(found)


# Connections the proxy resets are dropped by urllib3 without a close; collected later, they
# warn. That is the client library meeting a dead peer, not a leak of ours.
@pytest.mark.filterwarnings("ignore::ResourceWarning",
                            "ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_api_server_going_away_during_creates_and_deletes_leaves_nothing_unowned(
        settings, store, kube, apiserver_proxy, kube_through):
    proxy = apiserver_proxy
    through = kube_through(proxy)
    client = create_app(settings, store=store, kube=through).test_client()
    try:
        first = create(client)  # also warms API discovery
        proxy.refuse()
        _assert_error(client.post("/session/create", json={"user_id": "u"}, headers=KEY), 503,
                     "kubernetes_unavailable")
        assert store.index.counts()["total"] == 1
        _assert_error(client.delete(f"/session/{first}", headers=KEY), 503,
                     "kubernetes_unavailable")
        # Chats now wait for the delete to finish; nothing half-deleted serves.
        assert client.post(f"/session/{first}/chat", json={"message": "x"},
                           headers=KEY).status_code == 409
        proxy.forward()
        assert client.delete(f"/session/{first}", headers=KEY).status_code == 200
        # Creates cut at a random point by the server going away.
        answers = []
        for delay in (0.005, 0.02, 0.05, 0.1):
            cut = threading.Timer(delay, proxy.refuse)
            cut.start()
            answers.append(client.post("/session/create", json={"user_id": "cut"},
                                       headers=KEY).status_code)
            cut.join()
            proxy.forward()
        assert set(answers) <= {201, 503}, answers
    finally:
        proxy.forward()
        through.close()
        gc.collect()  # the reset connections' sockets warn now, under this test's filter
    # With the server back, one reconciler pass leaves no object without a record.
    Reconciler(settings.replace(reconcile_grace_seconds=0), store, kube).run_once()
    owners = objects_by_session(kube, settings)
    records = {sid for page in store.index.iter_id_pages() for sid in page}
    assert set(owners) == records, (owners, records)
    assert answers.count(201) == len(records)
    print(f"creates cut by the API server going away: {answers}; records {len(records)}, "
          f"bundles {len(owners)}, objects without a record 0")


@pytest.mark.filterwarnings("ignore::ResourceWarning",
                            "ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_watch_that_goes_silent_is_given_up_and_status_catches_up(
        settings, store, apiserver_proxy, kube_through, make_api, make_worker, mark_ready,
        status_watch):
    """A half-open connection (the proxy holds every byte): the watch's read deadline ends
    it, and once the path is back the status follows the cluster again."""
    session_id = make_api(settings).create()
    proxy = apiserver_proxy
    through = kube_through(proxy)
    worker = Worker(settings, store, through, watch_timeout_seconds=1)  # watching through it
    try:
        with status_watch(worker):
            time.sleep(1)  # the watch is open
            proxy.silent()
            mark_ready(session_id)  # an event the silent path holds back
            time.sleep(3)
            assert store.records.get_session(session_id)["status"] != "running"
            proxy.forward()  # new connections pass; the held one stays stuck
            wait_until(lambda: store.records.get_session(session_id)["status"] == "running",
                       timeout=WATCH_TIMEOUT_SECONDS + WATCH_READ_MARGIN_SECONDS + 15,
                       what="the status after the watch gave up")
    finally:
        proxy.forward()
        worker.delivery_pool.shutdown(wait=False)
        through.close()
        gc.collect()  # the reset connections' sockets warn now, under this test's filter


# -- Redis stopped and restarted mid-traffic, real processes ------------------------------


def test_redis_restarted_mid_traffic_loses_nothing_and_needs_no_restart(
        settings, store, redis_server, make_agent, make_worker, api_process,
        worker_process, mark_ready, status_watch):
    agent = make_agent(delay_seconds=0.05).start()
    settings = settings.replace(pod_url_template=agent.url)
    api = api_process(settings, RATE_LIMITS_ENABLED="false", REDIS_SOCKET_TIMEOUT_SECONDS="1")
    api_pid = api.process.pid
    session_ids = []
    for n in range(3):
        response = requests.post(f"{api.url}/session/create", json={"user_id": f"r{n}"},
                                 headers=KEY, timeout=30)
        assert response.status_code == 201, response.text
        session_ids.append(response.json()["uuid"])
    with status_watch(make_worker(settings)):
        for session_id in session_ids:
            mark_ready(session_id)
        wait_until(lambda: all(store.records.get_session(s)["status"] == "running"
                               for s in session_ids), timeout=15, what="running")
    worker = worker_process(settings, "w", REDIS_SOCKET_TIMEOUT_SECONDS="1")
    answers: list[tuple[str, int, str]] = []  # (message_id, status, code)
    stop = threading.Event()

    def chat_steadily() -> None:
        n = 0
        while not stop.is_set():
            session_id = session_ids[n % len(session_ids)]
            message_id = f"r-{n}"
            try:
                response = requests.post(f"{api.url}/session/{session_id}/chat", headers=KEY,
                                         json={"message": "hi", "message_id": message_id},
                                         timeout=15)
                body = response.json()
                answers.append((message_id, response.status_code, body.get("code", "")))
            except requests.RequestException as err:
                answers.append((message_id, -1, type(err).__name__))
            n += 1
            time.sleep(0.05)

    sender = threading.Thread(target=chat_steadily, daemon=True)
    sender.start()
    time.sleep(2)
    redis_server.stop()
    time.sleep(3)
    redis_server.start()
    time.sleep(3)
    stop.set()
    sender.join(20)

    statuses = Counter(status for _, status, _ in answers)
    bad = [a for a in answers if a[1] not in (200, 202)
           and not (a[1] == 503 and a[2] == "redis_unavailable")]
    assert bad == [], bad
    assert statuses[503] > 0 and statuses[200] + statuses[202] > 20, statuses
    accepted = [message_id for message_id, status, _ in answers if status in (200, 202)]
    try:
        wait_until(lambda: Counter(d["message_id"] for d in agent.deliveries())
                   >= Counter(accepted), timeout=40, interval=0.5,
                   what="every accepted message delivered", daemon=worker)
    except WaitTimedOut:
        missing = set(accepted) - {d["message_id"] for d in agent.deliveries()}
        states = {}
        for session_id in session_ids:
            for m in requests.get(f"{api.url}/session/{session_id}/messages?limit=500",
                                  headers=KEY, timeout=5).json()["messages"]:
                if m["message_id"] in missing:
                    states[m["message_id"]] = (m["state"], m.get("attempts"), m.get("error"))
        raise AssertionError(f"undelivered: {sorted(missing)}; states {states}; answers "
                             f"{[a for a in answers if a[0] in missing]}; worker log "
                             f"{worker.log_tail(2000)}") from None
    delivered = Counter(d["message_id"] for d in agent.deliveries())
    assert all(delivered[m] == 1 for m in accepted), "a message was delivered twice"
    assert requests.get(f"{api.url}/health", timeout=5).status_code == 200
    assert api.process.pid == api_pid and api.process.poll() is None  # no restart
    print(f"chats {len(answers)}: {dict(statuses)}; accepted {len(accepted)}, "
          f"delivered once each")


def test_writes_racing_a_delete_do_not_bring_back_a_record(client, store):
    """A sleep, wake, watch event or delivery that lands just after a delete must not
    recreate the record as a key with no TTL (a zombie answering 500 on /status)."""
    sid = create(client)
    assert client.post(f"/session/{sid}/chat", json={"message": "x"},
                       headers=KEY).status_code == 202
    claim = store.messages.claim_delivery(sid, lease_seconds=30, max_attempts=5)
    store.records.delete_session(sid)
    store.records.sleep(sid)
    store.records.repair_paused(sid, True)
    store.records.resume(sid, touch=True)
    store.records.set_status(sid, "running", actor=Actor.WATCH, replicas=1, ready_replicas=1)
    store.records.touch(sid)
    if claim is not None:
        store.messages.finish_delivery(sid, envelope=claim["envelope"],
                                       lease_token=claim["lease_token"], delivered=True,
                                       reply_or_error='{"reply": "late"}', max_attempts=5,
                                       retry_in_seconds=0)
    leftovers = [key for key in store.redis.keys("sm:*") if sid in key]
    assert leftovers == []
    response = client.get(f"/session/{sid}/status", headers=KEY)
    assert (response.status_code, response.get_json()["code"]) == (404, "session_not_found")
