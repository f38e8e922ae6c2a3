"""The conversation reaches the pod: every delivery carries the session's earlier settled
exchanges (`history`, oldest first, bounded by HISTORY_MAX_MESSAGES and HISTORY_MAX_BYTES with
the newest kept; 0 turns it off) and the session's user, on the direct forward and from the
worker alike; the demo agent remembers with it. Real Redis, the real API server, real pods on
loopback (one recording what it is sent, and the demo agent)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devcluster.processes import wait_until


class RecordingPod:
    """A pod that answers every message and keeps each request's body."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        pod = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                pod.bodies.append(body)
                status = 500 if body["message"].startswith("fail") else 200
                data = json.dumps({"reply": f"re: {body['message']}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def history_of(self, message_id: str) -> list[dict]:
        [body] = [b for b in self.bodies if b["message_id"] == message_id][-1:]
        return body["history"]


@pytest.fixture
def pod():
    pod = RecordingPod()
    yield pod
    pod.server.shutdown()
    pod.server.server_close()


@pytest.fixture
def running_api(settings, make_api, make_worker, status_watch, mark_ready):
    """running_api(settings) -> (api, session_id): a session whose pod is ready."""

    def make(settings):
        api = make_api(settings)
        session_id = api.create("ada@example.com")
        with status_watch(make_worker(settings)):
            mark_ready(session_id)
            wait_until(lambda: api.status(session_id)["status"] == "running", timeout=10,
                       what="running")
        return api, session_id

    return make


def test_a_forwarded_chat_carries_the_conversation_newest_kept(settings, pod, running_api):
    settings = settings.replace(pod_url_template=pod.url, history_max_messages=3,
                                delivery_max_attempts=1)
    api, session_id = running_api(settings)
    for n in range(4):
        assert api.chat(session_id, f"message {n}", f"m-{n}")[0] == 200
    assert api.chat(session_id, "fail this one", "m-4")[1]["status"] == "failed"
    assert api.chat(session_id, "and now?", "m-5")[0] == 200

    assert pod.history_of("m-0") == []
    assert [entry["message_id"] for entry in pod.history_of("m-2")] == ["m-0", "m-1"]
    # Bounded at three, the newest kept, oldest first; a failed exchange has no reply.
    assert pod.history_of("m-5") == [
        {"message_id": "m-2", "message": "message 2", "reply": {"reply": "re: message 2"},
         "state": "delivered"},
        {"message_id": "m-3", "message": "message 3", "reply": {"reply": "re: message 3"},
         "state": "delivered"},
        {"message_id": "m-4", "message": "fail this one", "reply": None, "state": "failed"}]
    assert {body["user_id"] for body in pod.bodies} == {"ada@example.com"}
    assert {body["session_id"] for body in pod.bodies} == {session_id}


def test_the_history_is_bounded_in_bytes_and_can_be_turned_off(settings, pod, running_api):
    settings = settings.replace(pod_url_template=pod.url, history_max_bytes=300)
    api, session_id = running_api(settings)
    for n in range(4):
        assert api.chat(session_id, f"{n}" * 60, f"m-{n}")[0] == 200
    kept = pod.history_of("m-3")
    assert 0 < len(kept) < 3 and kept[-1]["message_id"] == "m-2"  # the newest that fit
    assert len(json.dumps(kept, separators=(",", ":"))) <= 300

    off = settings.replace(history_max_messages=0)
    api, session_id = running_api(off)
    for n in range(2):
        assert api.chat(session_id, f"hello {n}", f"o-{n}")[0] == 200
    assert pod.history_of("o-1") == []


def test_the_worker_sends_what_the_forward_sends(settings, store, pod, make_api, make_worker,
                                                 running_worker, mark_ready):
    settings = settings.replace(pod_url_template=pod.url)
    api = make_api(settings)
    session_id = api.create("ada@example.com")
    for n in range(3):  # not running: all three queued, then delivered by the worker
        assert api.chat(session_id, f"queued {n}", f"q-{n}")[0] == 202
    with running_worker(make_worker(settings)):
        mark_ready(session_id)
        wait_until(lambda: len(pod.bodies) == 3, timeout=15, what="three deliveries")
    assert [b["message_id"] for b in pod.bodies] == ["q-0", "q-1", "q-2"]
    assert [e["message_id"] for e in pod.history_of("q-2")] == ["q-0", "q-1"]
    assert pod.history_of("q-2")[0] == {"message_id": "q-0", "message": "queued 0",
                                        "reply": {"reply": "re: queued 0"},
                                        "state": "delivered"}
    assert set(pod.bodies[0]) == {"message", "message_id", "session_id", "user_id", "history"}


def test_the_demo_agent_recalls_the_conversation_it_is_sent(settings, demo_agent, running_api):
    settings = settings.replace(pod_url_template=demo_agent.url)
    api, session_id = running_api(settings)
    assert api.chat(session_id, "my name is Ada", "m-1")[0] == 200
    assert api.chat(session_id, "I like engines", "m-2")[0] == 200
    code, body = api.chat(session_id, "recall", "m-3")
    assert code == 200
    assert body["pod_response"]["reply"] == "recall: my name is Ada | I like engines"
