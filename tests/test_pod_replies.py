"""Whatever a pod answers, its message settles: mended and delivered (the mending recorded
with it), or failed with a clear error — on both paths, the API's direct forward and the
worker's delivery, never a 500 and never a message claimed forever. Real Redis, the real API
server, and pods that are real HTTP servers on loopback answering what a buggy agent would."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devcluster.processes import wait_until
from service.core.transitions import Actor

# What buggy agents send, and what becomes of it.
DEEP = "[" * 5000 + "]" * 5000
POISON = {
    # A JavaScript agent that sliced an emoji between two chunks: a lone surrogate, escaped.
    "lone-surrogate": ("text/event-stream",
                       b'event: chunk\ndata: {"text": "half an emoji \\ud83d"}\n\n'
                       b'event: reply\ndata: {"reply": "half an emoji \\ud83d"}\n\n'),
    "chunk-not-text": ("text/event-stream",
                       b'event: chunk\ndata: {"text": 42}\n\n'
                       b'event: chunk\ndata: {"text": {"nested": [1, 2]}}\n\n'
                       b'event: reply\ndata: {"reply": "42 and more"}\n\n'),
    "not-utf8": ("application/json", b'{"reply": "caf\xe9"}'),
    "not-a-number": ("application/json", b'{"reply": "x", "score": NaN}'),
    "nested-too-deep": ("application/json", DEEP.encode()),
}


class BuggyPod:
    """An agent answering every /chat with one fixed (content type, body)."""

    def __init__(self, content_type: str, body: bytes) -> None:
        self.requests = 0
        pod = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                pod.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def buggy_pod():
    pods: list[BuggyPod] = []

    def make(kind: str) -> BuggyPod:
        pods.append(BuggyPod(*POISON[kind]))
        return pods[-1]

    yield make
    for pod in pods:
        pod.close()


def expected(kind: str, message: dict) -> None:
    """What each poison must end as."""
    if kind == "nested-too-deep":
        assert message["state"] == "failed", message
        assert "nested deeper than 32 levels" in message["error"]
        assert message["attempts"] == 1  # asking again would get the same: failed at once
        return
    assert message["state"] == "delivered", message
    assert message["warning"], message
    reply = json.dumps(message["reply"], ensure_ascii=False)
    reply.encode("utf-8")  # storable and servable as it is
    if kind == "lone-surrogate":
        assert message["reply"]["reply"] == "half an emoji \ufffd"
    if kind == "not-utf8":
        assert message["reply"]["reply"] == "caf\ufffd"
    if kind == "not-a-number":
        assert message["reply"]["score"] is None


@pytest.mark.parametrize("kind", sorted(POISON))
def test_a_poisoned_reply_forwarded_by_the_api_settles_and_answers_no_500(
        settings, store, make_api, make_worker, buggy_pod, kind, mark_ready, status_watch):
    pod = buggy_pod(kind)
    settings = settings.replace(pod_url_template=pod.url)
    api = make_api(settings)
    session_id = api.create()
    with status_watch(make_worker(settings)):
        mark_ready(session_id)
        wait_until(lambda: api.status(session_id)["status"] == "running", timeout=10,
                   what="running")
    code, body = api.chat(session_id, "say something odd", "m-1")
    assert code == 200, body  # processed with the mended reply, or failed: never a 500
    [message] = api.messages(session_id)
    expected(kind, message)
    assert body["status"] == ("failed" if message["state"] == "failed" else "processed")
    assert pod.requests == 1
    assert store.messages.queue_length(session_id) == 0
    assert not store.redis.sismember(f"sm:w:{session_id}", "m:1")  # it lets the pod go


@pytest.mark.parametrize("kind", sorted(POISON))
def test_a_poisoned_reply_delivered_by_the_worker_settles(
        settings, store, make_api, make_worker, buggy_pod, kind, running_worker, mark_ready):
    pod = buggy_pod(kind)
    settings = settings.replace(pod_url_template=pod.url, delivery_backoff_seconds=0.1,
                                rate_limits_enabled=False)
    api = make_api(settings)
    session_id = api.create()
    assert api.chat(session_id, "say something odd", "m-1")[0] == 202  # not running: queued
    worker = make_worker(settings)
    with running_worker(worker):
        mark_ready(session_id)  # the cluster says running: the worker's own watch agrees
        wait_until(lambda: store.messages.list_messages(
            session_id, after=0, limit=1, max_kept=10)[0][0]["state"] in ("delivered", "failed"),
            timeout=20, what="the message settled")
    [message] = api.messages(session_id)
    expected(kind, message)
    assert pod.requests <= settings.delivery_max_attempts
    assert store.messages.queue_length(session_id) == 0


def test_a_message_whose_deliveries_never_end_is_failed_at_its_last_claim(settings, store,
                                                                          make_api):
    """Each delivering process stopped before it settled (killed mid-delivery, every time):
    after DELIVERY_MAX_ATTEMPTS claims the message is failed instead of being claimed again
    forever, and the session's next message is delivered."""
    api = make_api(settings)
    session_id = api.create()
    for message_id in ("m-1", "m-2"):
        assert api.chat(session_id, "never settled", message_id)[0] == 202
    store.records.set_status(session_id, "running", actor=Actor.WATCH, replicas=1, ready_replicas=1)
    for attempt in range(1, 4):
        claim = store.messages.claim_delivery(session_id, lease_seconds=1, max_attempts=3)
        assert claim["message"]["message_id"] == "m-1"
        assert claim["message"]["attempts"] == attempt
        time.sleep(1.05)  # the process died: its lease lapses, no outcome recorded
    claim = store.messages.claim_delivery(session_id, lease_seconds=1, max_attempts=3)
    assert claim["message"]["message_id"] == "m-2"  # m-1 no longer blocks the queue
    first = api.messages(session_id)[0]
    assert first["state"] == "failed" and "no outcome after 3 attempts" in first["error"]
    assert not store.redis.sismember(f"sm:w:{session_id}", "m:1")
    stream = store.redis.xrange(f"sm:e:{session_id}")
    assert any(json.loads(fields["d"]).get("state") == "failed" for _, fields in stream)
