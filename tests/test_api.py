"""The REST API against real Redis, a real kube-apiserver and the demo agent process."""

from __future__ import annotations

import io
import json
import logging

import pytest
from kubernetes import client as k8s

from service import bundle
from service import store as store_module
from service.core import logs, names
from service.core.clock import utc_now
from service.core.transitions import Actor
from service.http import create_app
from service.store import keys as store_keys
from service.worker.status_watch import StatusTracker

from .constants import API_KEY

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def app(settings, store, kube):
    return create_app(settings, store=store, kube=kube)


@pytest.fixture
def client(app):
    return app.test_client()


def create(client, user_id="user@example.com", **headers):
    response = client.post("/session/create", json={"user_id": user_id},
                           headers={**KEY, **headers})
    assert response.status_code == 201, response.json
    return response.json


def sync_status(kube, store, session_id):
    """What the worker's watcher does on a Deployment event (the watch itself is tested in
    test_worker): read the Deployment and publish the derived status."""
    deployment = k8s.AppsV1Api(kube.api_client).read_namespaced_deployment(
        names.object_name(session_id), kube.namespace)
    raw = kube.api_client.sanitize_for_serialization(deployment)
    StatusTracker(store).on_deployment("MODIFIED", raw)


def session_objects(kube, session_id):
    rendered = bundle.render(session_id, kube_settings(kube), store_module.keda_keys(session_id))
    return [o for kind in rendered.kinds()
            for o in kube.list_objects(kind, bundle.label_selector(session_id))]


def kube_settings(kube):
    from service.core.config import Settings

    return Settings(auth_disabled=True, namespace=kube.namespace)


def redis_keys_of(store, session_id):
    """The session's keys and the indexes holding it, sorted (KEYS has no order)."""
    return sorted(k for k in store.redis.keys("*") if session_id in k
                  or session_id in str(store.redis.zscore(k, session_id) if
                                       store.redis.type(k) == "zset" else ""))


def commands_processed(store) -> int:
    return int(store.redis.info("stats")["total_commands_processed"])


# -- the seed's checklist ------------------------------------------------------------------


def test_create_returns_201_an_id_and_a_token_and_applies_the_bundle(client, kube):
    body = create(client)
    assert names.is_session_id(body["uuid"])
    assert body["status"] == "created" and body["user_id"] == "user@example.com"
    assert body["created_at"].endswith("Z") and len(body["session_token"]) >= 32
    kinds = sorted(o["kind"] for o in session_objects(kube, body["uuid"]))
    assert kinds == ["Deployment", "ScaledObject", "Service", "TriggerAuthentication"]


def test_idempotency_key_makes_a_retried_create_return_the_same_session(client, kube, store):
    first = create(client, **{"Idempotency-Key": "retry-1"})
    second = create(client, **{"Idempotency-Key": "retry-1"})
    assert second == first
    assert store.index.counts()["total"] == 1
    different = client.post("/session/create", json={"user_id": "someone-else"},
                            headers={**KEY, "Idempotency-Key": "retry-1"})
    assert different.status_code == 409


def test_chat_queues_without_a_ready_pod_and_is_processed_by_a_ready_one(
        settings, store, kube, demo_agent, mark_ready):
    client = create_app(settings.replace(pod_url_template=demo_agent.url), store=store,
                        kube=kube).test_client()
    sid = create(client)["uuid"]
    queued = client.post(f"/session/{sid}/chat", json={"message": "hello"}, headers=KEY)
    assert queued.status_code == 202
    assert queued.json["status"] == "queued"
    assert queued.json["message"] == "Pod is waking up, message queued"
    assert store.redis.llen(store_keys.queue_key(sid)) == 1
    # What every scaler reads: the message is work until it is settled.
    assert store.redis.smembers(store_module.work_key(sid)) == {"active", "m:1"}
    assert store.redis.ttl(store_module.work_key(sid)) == -1  # no TTL while work is pending

    # The queued message is the worker's (test_worker); a fresh session answers directly.
    sid = create(client)["uuid"]
    mark_ready(sid)
    sync_status(kube, store, sid)
    processed = client.post(f"/session/{sid}/chat",
                            json={"message": "hi pod", "message_id": "m-1"}, headers=KEY)
    assert processed.status_code == 200, processed.json
    assert processed.json["status"] == "processed" and processed.json["message_id"] == "m-1"
    assert processed.json["pod_response"]["reply"] == "echo: hi pod"
    assert processed.json["pod_response"]["session_id"] == sid
    history = client.get(f"/session/{sid}/messages", headers=KEY).json["messages"]
    assert [(m["message_id"], m["state"]) for m in history] == [("m-1", "delivered")]
    assert history[0]["reply"] == processed.json["pod_response"]
    # The same message_id again is answered from what was stored, not sent twice.
    again = client.post(f"/session/{sid}/chat", json={"message": "hi pod", "message_id": "m-1"},
                        headers=KEY)
    assert again.status_code == 200 and again.json["pod_response"] == processed.json["pod_response"]
    assert [d["message_id"] for d in demo_agent.deliveries()] == ["m-1"]


def test_wake_status_sleep(client, kube, store, mark_ready):
    sid = create(client)["uuid"]
    woke = client.post(f"/session/{sid}/wake", headers=KEY)
    assert woke.status_code == 202 and woke.json == {"uuid": sid, "action": "wake",
                                                     "status": "waking"}
    assert store.redis.sismember(store_module.work_key(sid), "active")  # the wake signal

    mark_ready(sid)
    sync_status(kube, store, sid)
    status = client.get(f"/session/{sid}/status", headers=KEY).json
    assert status["status"] == "running" and status["ready_replicas"] == 1
    assert status["session"]["user_id"] == "user@example.com"
    assert status["queue_length"] == 0 and status["timestamp"].endswith("Z")
    assert client.post(f"/session/{sid}/wake", headers=KEY).status_code == 200

    client.post(f"/session/{sid}/chat", json={"message": "kept while asleep"}, headers=KEY)
    slept = client.post(f"/session/{sid}/sleep", headers=KEY)
    assert slept.status_code == 200
    assert slept.json["action"] == "sleep" and slept.json["status"] == "sleeping"
    assert kube.is_paused(sid)  # KEDA's paused-replicas annotation, read back
    # Slept: no activity, but the waiting message stays work (KEDA is paused, so nothing wakes).
    assert store.redis.smembers(store_module.work_key(sid)) == {"m:1"}
    # KEDA has not scaled down yet, but a watch event must not undo the explicit sleep.
    sync_status(kube, store, sid)
    assert client.get(f"/session/{sid}/status", headers=KEY).json["status"] == "sleeping"

    assert client.post(f"/session/{sid}/wake", headers=KEY).status_code in (200, 202)
    assert not kube.is_paused(sid)


def test_a_chat_on_a_sleeping_session_unpauses_it(client, kube):
    sid = create(client)["uuid"]
    client.post(f"/session/{sid}/sleep", headers=KEY)
    assert kube.is_paused(sid)
    assert client.post(f"/session/{sid}/chat", json={"message": "wake up"},
                       headers=KEY).status_code == 202
    assert not kube.is_paused(sid)


def test_delete_removes_every_object_and_every_redis_key(client, kube, store):
    sid = create(client)["uuid"]
    client.post(f"/session/{sid}/chat", json={"message": "x"}, headers=KEY)
    client.post(f"/session/{sid}/wake", headers=KEY)
    deleted = client.delete(f"/session/{sid}", headers=KEY)
    assert deleted.status_code == 200
    assert deleted.json == {"uuid": sid, "status": "terminated",
                            "message": "Session and all resources deleted"}
    assert session_objects(kube, sid) == []
    assert redis_keys_of(store, sid) == []
    assert client.delete(f"/session/{sid}", headers=KEY).status_code == 404


def test_metrics_and_sessions_count_a_mix_of_creates_sleeps_and_deletes(client, store):
    ids = [create(client, f"user{i}")["uuid"] for i in range(5)]
    client.post(f"/session/{ids[0]}/sleep", headers=KEY)
    client.post(f"/session/{ids[1]}/sleep", headers=KEY)
    client.delete(f"/session/{ids[2]}", headers=KEY)
    before = commands_processed(store)
    figures = client.get("/metrics", headers=KEY).json
    # Counters, not a scan: a handful of commands (one round trip) whatever the number of
    # sessions and of warm pool ones.
    assert commands_processed(store) - before <= 17
    assert figures["total_sessions"] == 4
    assert figures["sleeping_sessions"] == 2
    assert figures["active_sessions"] == 2
    listing = client.get("/sessions", headers=KEY).json
    assert listing["total"] == 4
    assert {s["uuid"] for s in listing["sessions"]} == set(ids) - {ids[2]}
    sleeping = client.get("/sessions?status=sleeping", headers=KEY).json
    assert {s["uuid"] for s in sleeping["sessions"]} == {ids[0], ids[1]}
    text = client.get("/metrics", headers={**KEY, "Accept": "text/plain"})
    assert text.content_type.startswith("text/plain")
    assert 'session_manager_sessions{status="sleeping"} 2.0' in text.get_data(as_text=True)


def test_sessions_pages_through_every_session_exactly_once(client, store):
    created = set()
    for i in range(23):
        sid = store.records.reserve_id()
        store.records.create_session(sid, user_id=f"u{i}", token_hash="x" * 64,
                             now=utc_now())
        created.add(sid)
    seen: list[str] = []
    cursor = None
    while True:
        url = "/sessions?limit=5" + (f"&cursor={cursor}" if cursor is not None else "")
        page = client.get(url, headers=KEY).json
        assert page["total"] == 23 and len(page["sessions"]) <= 5
        seen += [s["uuid"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(created)


# -- errors ----------------------------------------------------------------------------------


def assert_error(response, status, code=None):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)
    body = response.json
    assert set(body) == {"error", "code"}
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"] and API_KEY not in json.dumps(body)
    if code:
        assert body["code"] == code


def test_unknown_and_malformed_ids_are_404_without_touching_redis(client, store):
    assert_error(client.get(f"/session/{names.new_session_id()}/status", headers=KEY), 404,
                 "session_not_found")
    for bad in ("nope", "S" + "a" * 16, "s" + "a" * 40, "..%2F..", "s" + "a" * 15 + "1"):
        before = commands_processed(store)
        assert_error(client.post(f"/session/{bad}/wake", headers=KEY), 404)
        assert_error(client.delete(f"/session/{bad}", headers=KEY), 404)
        assert commands_processed(store) - before == 1  # only the INFO of this check


@pytest.mark.parametrize("body, status", [
    ({}, 400), ({"user_id": ""}, 400), ({"user_id": 42}, 400), ({"user_id": "a" * 257}, 400),
    ({"user_id": "tab\tinside"}, 400), ([], 400),
])
def test_bad_user_id_is_400_and_creates_nothing(client, store, body, status):
    assert_error(client.post("/session/create", json=body, headers=KEY), status)
    assert store.index.counts()["total"] == 0


def test_body_and_media_type_errors(client, store, settings):
    sid = create(client)["uuid"]
    assert_error(client.post(f"/session/{sid}/chat", json={}, headers=KEY), 400)
    assert_error(client.post(f"/session/{sid}/chat", json={"message": ""}, headers=KEY), 400)
    assert_error(client.post(f"/session/{sid}/chat", json={"message": "x" * 16001},
                             headers=KEY), 413)
    assert_error(client.post(f"/session/{sid}/chat", json={"message": "x" * 70000},
                             headers=KEY), 413)
    assert_error(client.post(f"/session/{sid}/chat", data="message=hi", headers=KEY), 415)
    assert_error(client.post("/session/create", data='{"user_id": "x"}', headers=KEY), 415)
    assert_error(client.post("/session/create", data="{not json",
                             content_type="application/json", headers=KEY), 400)
    assert_error(client.post(f"/session/{sid}/chat", json={"message": "x", "message_id": "a b"},
                             headers=KEY), 400)
    assert store.messages.queue_length(sid) == 0


def test_bodies_the_json_parser_chokes_on_are_400_and_store_nothing(client, store):
    sid = create(client)["uuid"]
    before = redis_keys_of(store, sid)
    for raw in ('{"message": ' + "[" * 20000 + "]" * 20000 + "}",   # nested past recursion
                '{"message": "half a pair \\ud800 of surrogates"}',  # parses, cannot be stored
                b'{"message": "\xff\xfe not utf-8"}',
                "[" * 20000):
        response = client.post(f"/session/{sid}/chat", data=raw,
                               content_type="application/json", headers=KEY)
        assert_error(response, 400, "invalid_field")
    assert redis_keys_of(store, sid) == before
    assert client.get(f"/session/{sid}/messages", headers=KEY).get_json()["messages"] == []


def test_a_message_id_reused_for_another_text_is_409_and_the_first_is_kept(client, store):
    sid = create(client)["uuid"]
    first = client.post(f"/session/{sid}/chat", json={"message": "one", "message_id": "m-1"},
                        headers=KEY)
    assert first.status_code == 202
    again = client.post(f"/session/{sid}/chat", json={"message": "one", "message_id": "m-1"},
                        headers=KEY)
    assert (again.status_code, again.get_json()["status"]) == (202, "queued")  # a retry
    assert_error(client.post(f"/session/{sid}/chat", json={"message": "two", "message_id": "m-1"},
                             headers=KEY), 409, "conflict")
    messages = client.get(f"/session/{sid}/messages", headers=KEY).get_json()["messages"]
    assert [(m["message_id"], m["message"]) for m in messages] == [("m-1", "one")]
    assert store.messages.queue_length(sid) == 1


def test_a_retry_is_matched_with_its_own_message_after_the_kept_window_was_lowered(
        client, settings, store, kube):
    # Replicas of a rollout that lowers MAX_MESSAGES_KEPT: the old window's ids are still
    # known, and a retry of one of them must be judged against its own message.
    sid = create(client)["uuid"]
    for number, text in enumerate(("one", "two", "three", "four", "five"), start=1):
        response = client.post(f"/session/{sid}/chat", headers=KEY,
                               json={"message": text, "message_id": f"m-{number}"})
        assert response.status_code == 202
    lowered = create_app(settings.replace(max_messages_kept=2, max_queued_messages=1),
                         store=store,
                         kube=kube).test_client()
    again = lowered.post(f"/session/{sid}/chat", json={"message": "one", "message_id": "m-1"},
                         headers=KEY)
    assert (again.status_code, again.get_json().get("status")) == (202, "queued"), \
        again.get_json()
    assert_error(lowered.post(f"/session/{sid}/chat", headers=KEY,
                              json={"message": "five", "message_id": "m-1"}), 409, "conflict")
    assert store.messages.queue_length(sid) == 5


def test_create_without_the_sessions_namespace_is_503_not_ready_and_stores_nothing(
        settings, store, apiserver):
    from service.kube import Kube, load_api_client

    kube = Kube(load_api_client(str(apiserver.kubeconfig)), "no-such-namespace")
    try:
        client = create_app(settings.replace(namespace="no-such-namespace"), store=store,
                            kube=kube).test_client()
        assert_error(client.post("/session/create", json={"user_id": "u"}, headers=KEY), 503,
                     "kubernetes_not_ready")
    finally:
        kube.close()
    assert store.index.counts()["total"] == 0 and not store.redis.keys("sm:s:*")


def test_rbac_short_of_what_the_code_needs_is_503_forbidden_not_500(settings, store,
                                                                    apiserver, kube):
    """The API server's real 403: the same client, impersonating a user with no Role."""
    from service.kube import Kube, load_api_client

    sid = create(create_app(settings, store=store, kube=kube).test_client())["uuid"]
    denied = Kube(load_api_client(str(apiserver.kubeconfig)), settings.namespace)
    denied.api_client.set_default_header("Impersonate-User", "no-rbac-at-all")
    try:
        client = create_app(settings, store=store, kube=denied).test_client()
        assert_error(client.post("/session/create", json={"user_id": "u"}, headers=KEY), 503,
                     "kubernetes_forbidden")
        assert_error(client.post(f"/session/{sid}/sleep", headers=KEY), 503,
                     "kubernetes_forbidden")
        assert_error(client.delete(f"/session/{sid}", headers=KEY), 503, "kubernetes_forbidden")
    finally:
        denied.close()
    assert store.index.counts()["total"] == 1  # only the first one; the refused create left none
    assert session_objects(kube, sid)  # and the refused delete took nothing away


def test_wrong_method_and_unknown_route_are_json(client):
    assert_error(client.get("/session/create", headers=KEY), 405, "method_not_allowed")
    assert_error(client.put(f"/session/{names.new_session_id()}/wake", headers=KEY), 405)
    assert_error(client.get("/no/such/route"), 404, "not_found")


def test_credentials(client, store):
    assert_error(client.get("/sessions"), 401, "unauthorized")
    assert_error(client.post("/session/create", json={"user_id": "x"}), 401)
    assert_error(client.get("/sessions", headers={"X-API-Key": "wrong-key-0123456789"}), 403)
    assert_error(client.get("/metrics", headers={"Authorization": "Bearer nope-nope-nope"}),
                 403)
    assert client.get("/sessions", headers={"Authorization": f"Bearer {API_KEY}"}).status_code \
        == 200
    assert client.get("/health").status_code == 200 and client.get("/livez").status_code == 200

    mine, other = create(client), create(client, "other")
    token = {"Authorization": f"Bearer {mine['session_token']}"}
    assert client.get(f"/session/{mine['uuid']}/status", headers=token).status_code == 200
    assert client.post(f"/session/{mine['uuid']}/chat", json={"message": "hi"},
                       headers=token).status_code == 202
    # Another session's routes look like they do not exist; the admin routes are refused.
    assert_error(client.get(f"/session/{other['uuid']}/status", headers=token), 404)
    assert_error(client.delete(f"/session/{other['uuid']}", headers=token), 404)
    assert_error(client.get("/sessions", headers=token), 403)
    assert_error(client.post("/session/create", json={"user_id": "x"}, headers=token), 403)
    assert_error(client.get(f"/session/{mine['uuid']}/status"), 401)
    assert store.records.get_session(other["uuid"]) is not None
    # Only a hash of the token is stored.
    assert mine["session_token"] not in json.dumps(store.records.get_session(mine["uuid"]))


def test_several_api_keys_for_rotation(settings, store, kube):
    second = "second-api-key-abcdef0123456"
    client = create_app(settings.replace(api_keys=(API_KEY, second)), store=store,
                        kube=kube).test_client()
    assert client.get("/sessions", headers={"X-API-Key": second}).status_code == 200
    assert client.get("/sessions", headers=KEY).status_code == 200


def test_chat_on_a_terminating_session_is_409(client, store):
    sid = create(client)["uuid"]
    store.records.set_status(sid, "terminating", actor=Actor.DELETE)
    assert_error(client.post(f"/session/{sid}/chat", json={"message": "x"}, headers=KEY), 409)


def test_backlog_cap_answers_429(settings, store, kube):
    client = create_app(settings.replace(max_queued_messages=3), store=store,
                        kube=kube).test_client()
    sid = create(client)["uuid"]
    for i in range(3):
        assert client.post(f"/session/{sid}/chat", json={"message": f"m{i}"},
                           headers=KEY).status_code == 202
    refused = client.post(f"/session/{sid}/chat", json={"message": "one too many"}, headers=KEY)
    assert_error(refused, 429, "backlog_full")
    assert refused.headers["Retry-After"]
    assert store.messages.queue_length(sid) == 3


# -- rate limits ---------------------------------------------------------------------------


def test_the_101st_create_in_a_minute_is_429_and_another_ip_is_unaffected(client):
    one = {"REMOTE_ADDR": "10.1.1.1"}
    for _ in range(100):
        response = client.post("/session/create", json={"user_id": "u"}, headers=KEY,
                               environ_base=one)
        assert response.status_code == 201
    refused = client.post("/session/create", json={"user_id": "u"}, headers=KEY,
                          environ_base=one)
    assert_error(refused, 429, "rate_limited")
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Limit"] == "100"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["X-RateLimit-Reset"]) > 0
    assert client.post("/session/create", json={"user_id": "u"}, headers=KEY,
                       environ_base={"REMOTE_ADDR": "10.2.2.2"}).status_code == 201


def test_two_app_instances_share_one_budget(settings, store, kube):
    limited = settings.replace(rate_limits={**settings.rate_limits, "status": "4/minute"})
    first = create_app(limited, store=store, kube=kube).test_client()
    second = create_app(limited, store=store, kube=kube).test_client()
    sid = create(first)["uuid"]
    codes = [c.get(f"/session/{sid}/status", headers=KEY).status_code
             for c in (first, second, first, second, first, second)]
    assert codes == [200, 200, 200, 200, 429, 429]


def test_a_forged_forwarded_for_does_not_change_the_client_ip(settings, store, kube):
    limited = settings.replace(rate_limits={**settings.rate_limits, "status": "2/minute"})
    sid_client = create_app(limited, store=store, kube=kube).test_client()
    sid = create(sid_client)["uuid"]
    codes = [sid_client.get(f"/session/{sid}/status", headers={**KEY,
                            "X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(3)]
    assert codes == [200, 200, 429]

    behind_proxy = create_app(limited.replace(trusted_proxies=1), store=store,
                              kube=kube).test_client()
    store.redis.flushall()
    sid = create(behind_proxy)["uuid"]
    codes = [behind_proxy.get(f"/session/{sid}/status", headers={**KEY,
             "X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(3)]
    assert codes == [200, 200, 200]  # one proxy trusted: its X-Forwarded-For is the client


# -- Redis outage ------------------------------------------------------------------------------


def test_redis_outage_is_503_with_livez_up_and_recovers_without_restart(client, redis_server,
                                                                        store):
    sid = create(client)["uuid"]
    redis_server.stop()
    try:
        assert_error(client.get(f"/session/{sid}/status", headers=KEY), 503, "redis_unavailable")
        assert_error(client.post(f"/session/{sid}/chat", json={"message": "x"}, headers=KEY),
                     503)
        assert_error(client.get("/sessions", headers=KEY), 503)
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json["status"] == "unhealthy" and health.json["redis"] == "unhealthy"
        assert client.get("/livez").status_code == 200
    finally:
        redis_server.start()
    assert client.get("/health").status_code == 200
    after = client.get(f"/session/{sid}/status", headers=KEY)
    assert after.status_code == 200, (after.json, store.redis.hgetall(store_keys.record_key(sid)))
    assert create(client)["uuid"]


# -- logs ------------------------------------------------------------------------------------


def test_a_request_logs_one_json_line_without_secrets(client):
    buffer = io.StringIO()
    handler = logs.make_handler(buffer)
    logging.getLogger().addHandler(handler)
    try:
        response = client.get("/sessions", headers={**KEY, "X-Request-ID": "req-42"})
    finally:
        logging.getLogger().removeHandler(handler)
    assert response.headers["X-Request-ID"] == "req-42"
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    requests_logged = [line for line in lines if line["message"] == "request"]
    assert len(requests_logged) == 1
    line = requests_logged[0]
    assert line["request_id"] == "req-42" and line["route"] == "/sessions"
    assert line["status"] == 200 and line["duration_ms"] >= 0 and line["level"] == "INFO"
    assert line["timestamp"].startswith("20")
    assert API_KEY not in buffer.getvalue()


def test_session_routes_log_the_session_id(client):
    sid = create(client)["uuid"]
    buffer = io.StringIO()
    handler = logs.make_handler(buffer)
    logging.getLogger().addHandler(handler)
    try:
        client.get(f"/session/{sid}/status", headers=KEY)
    finally:
        logging.getLogger().removeHandler(handler)
    line = next(json.loads(x) for x in buffer.getvalue().splitlines() if '"request"' in x)
    assert line["session_id"] == sid and line["route"] == "/session/<session_id>/status"
