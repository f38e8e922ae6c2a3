"""Faults a production Redis shows: full at `maxmemory`, read-only after a failover. Each
answers 503 with its own code, writes nothing half-way, shows in /health, and recovers
without a restart."""

from __future__ import annotations

import time

import pytest

from devcluster.processes import free_port
from service import store as store_module
from service.api import create_app
from service.readiness import WORKER_SILENT_SECONDS
from tests.conftest import API_KEY

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def client(settings, store, kube):
    return create_app(settings, store=store, kube=kube).test_client()


def create(client) -> str:
    response = client.post("/session/create", json={"user_id": "u"}, headers=KEY)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["uuid"]


def conversation(client, sid) -> list[str]:
    response = client.get(f"/session/{sid}/messages", headers=KEY)
    assert response.status_code == 200, response.get_json()
    return [m["message"] for m in response.get_json()["messages"]]


def test_redis_at_maxmemory_is_503_out_of_memory_writes_nothing_and_recovers(client, store):
    sid = create(client)
    assert client.post(f"/session/{sid}/chat", json={"message": "before"},
                       headers=KEY).status_code == 202
    used = int(store.redis.info("memory")["used_memory"])
    store.redis.config_set("maxmemory", used)  # full: the next write is over it
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
    assert store.counts()["total"] == 1


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
    store.report_worker("w-1", [])
    body = client.get("/health").json
    assert body["workers"] == {"status": "healthy", "live": 1}
    assert body["status"] == "healthy"
    store.report_worker("w-2", ["delivery"])
    body = client.get("/health").json
    assert (body["status"], body["workers"]["status"]) == ("degraded", "stalled")
    assert body["workers"]["stalled_loops"] == ["delivery"]
    # Reports that stopped coming: the worker is gone or wedged before its own report.
    old = time.time() - WORKER_SILENT_SECONDS - 1
    for worker in ("w-1", "w-2"):
        store.redis.hset(store_module.WORKER_REPORTS, worker,
                         f'{{"at": {old}, "stalled": []}}')
    body = client.get("/health").json
    assert body["workers"]["status"] == "none" and body["status"] == "degraded"
    assert body["workers"]["last_report_seconds_ago"] >= WORKER_SILENT_SECONDS
