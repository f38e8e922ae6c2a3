"""What one session may keep in Redis: a byte budget for its conversation, a cap on one pod
reply, and deliveries that a pod refusing connections (right after a wake) does not burn.
Real Redis, the real API server, the demo agent as a real process, the worker in-process."""

from __future__ import annotations

import time

import pytest

from devcluster.processes import wait_until
from service.store import keys as store_keys

BUDGET = 60_000
SMALL = {"max_message_chars": 5000, "max_reply_bytes": 4096, "max_session_bytes": BUDGET}


def kept_bytes(store, session_id: str) -> int:
    """What the conversation really holds in Redis (every message and reply)."""
    key = store_keys._messages_key(session_id)
    return sum(store.redis.hstrlen(key, field) for field in store.redis.hkeys(key))


@pytest.fixture
def make_running(mark_ready, status_watch):
    """make_running(api, worker, session_id): its pod ready, as the real status watch
    records it."""
    def make(api, worker, session_id: str) -> None:
        with status_watch(worker):
            mark_ready(session_id)
            wait_until(lambda: api.status(session_id)["status"] == "running", timeout=10,
                       what="running")

    return make


def states(api, session_id: str) -> list[str]:
    return [m["state"] for m in api.messages(session_id)]


def test_a_conversation_keeps_within_its_byte_budget_and_never_drops_undelivered_messages(
        settings, store, demo_agent, make_api, make_worker, make_running):
    settings = settings.replace(pod_url_template=demo_agent.url, **SMALL)
    api = make_api(settings)
    session_id = api.create()
    text = "x" * 3000  # ~3 KB stored, ~3 KB of reply once delivered
    # Asleep: every chat is kept undelivered until the budget holds no more.
    answers = [api.chat(session_id, text, f"q-{n}")[0] for n in range(25)]
    admitted = answers.count(202)
    assert answers == [202] * admitted + [429] * (25 - admitted) and 10 < admitted < 25
    code, body = api.chat(session_id, text, "one-more")
    assert (code, body["code"]) == (429, "session_storage_full")
    assert kept_bytes(store, session_id) <= BUDGET
    assert states(api, session_id) == ["queued"] * admitted  # nothing dropped to make room

    worker = make_worker(settings)
    make_running(api, worker, session_id)
    worker.deliver_due()
    wait_until(lambda: not worker._draining and store.messages.due_sessions() == [], timeout=30,
               what="the deliveries")
    # Every admitted message was delivered (the oldest settled ones made room for replies).
    assert set(m["message_id"] for m in api.messages(session_id)) <= {
        f"q-{n}" for n in range(admitted)}
    assert all(m["state"] == "delivered" for m in api.messages(session_id))
    assert len(demo_agent.deliveries()) == admitted
    assert kept_bytes(store, session_id) <= BUDGET
    # Settled messages make room: chatting goes on, the conversation stays within budget.
    for n in range(10):
        code, body = api.chat(session_id, text, f"later-{n}")
        assert code == 200 and body["status"] == "processed", body
        assert kept_bytes(store, session_id) <= BUDGET
    assert api.messages(session_id)[-1]["message_id"] == "later-9"


def test_a_reply_past_max_reply_bytes_fails_its_message_at_once(
        settings, store, demo_agent, make_api, make_worker, make_running):
    settings = settings.replace(pod_url_template=demo_agent.url, **SMALL)
    api = make_api(settings)
    session_id = api.create()
    worker = make_worker(settings)
    make_running(api, worker, session_id)
    code, body = api.chat(session_id, "y" * 4500, "big")  # the echo is over 4,096 bytes
    assert (code, body["status"]) == (200, "failed")
    assert "MAX_REPLY_BYTES" in body["error"]
    [message] = api.messages(session_id)
    assert (message["state"], message["attempts"], message["reply"]) == ("failed", 1, None)
    assert store.messages.due_sessions() == []  # not retried: a second try would be as large
    code, body = api.chat(session_id, "small", "next")
    assert (code, body["status"]) == (200, "processed")  # the session goes on


def test_connection_refused_right_after_a_wake_does_not_burn_attempts(
        settings, store, make_agent, make_api, make_worker, make_running):
    agent = make_agent()  # its port is chosen; nothing listens on it yet
    settings = settings.replace(pod_url_template=agent.url, delivery_max_attempts=2,
                                delivery_backoff_seconds=0.2)
    api = make_api(settings)
    session_id = api.create()
    worker = make_worker(settings)
    make_running(api, worker, session_id)
    assert api.chat(session_id, "hello", "m-1")[1]["status"] == "queued"  # refused
    for _ in range(8):  # 4 s of refused connections: two counted attempts would fail it
        worker.deliver_due()
        wait_until(lambda: not worker._draining, timeout=10, what="the attempt to end")
        time.sleep(0.5)
    [message] = api.messages(session_id)
    assert message["state"] == "queued" and message["attempts"] <= 1, message
    agent.start()
    wait_until(lambda: (worker.deliver_due() or True) and states(api, session_id) == ["delivered"],
               timeout=15, interval=0.3, what="the delivery")
    assert [d["message_id"] for d in agent.deliveries()] == ["m-1"]
