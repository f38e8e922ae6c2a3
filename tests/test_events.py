"""GET /session/{uuid}/events and streaming pods, on the API as production serves it
(gunicorn + gevent processes), a real worker process, real Redis and API server, and the demo
agent streaming word by word: a reply is seen as it is written and stored once; a client
that lost its stream resumes with nothing missed and nothing twice; an event written by one
process reaches a stream served by another; limits, auth and bad ids answer 4xx JSON."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from devcluster.processes import wait_until
from service import store as store_module
from service.core import sse
from service.core.clock import utc_now
from service.core.transitions import Actor
from service.http.event_stream import EventStreams
from service.sessions.notices import Notices

from .constants import API_KEY

KEY = {"X-API-Key": API_KEY}
STREAM_ENV = {"EVENTS_HEARTBEAT_SECONDS": "0.5"}


class EventReader:
    """An SSE client on a thread: every frame with the time it arrived."""

    def __init__(self, url: str, session_id: str, *, headers: dict | None = None,
                 after: str | None = None) -> None:
        headers = {**KEY, **(headers or {})}
        if after is not None:
            headers["Last-Event-ID"] = after
        self.response = requests.get(f"{url}/session/{session_id}/events", headers=headers,
                                     stream=True, timeout=30)
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self.frames: list[tuple[float, sse.Frame]] = []
        self.comments = 0
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for frame in sse.parse(self._lines(self.response.iter_content(chunk_size=None))):
                self.frames.append((time.monotonic(), frame))
        except (requests.RequestException, OSError, AttributeError):
            pass  # closed by the test
        finally:
            self.ended.set()

    def _lines(self, body):
        for line in sse.lines(body):
            if line.startswith(":"):
                self.comments += 1
            yield line

    def events(self, kind: str | None = None) -> list[tuple[str | None, str, dict]]:
        return [(f.id, f.event, json.loads(f.data)) for _, f in list(self.frames)
                if kind is None or f.event == kind]

    def wait_until(self, predicate, timeout: float = 20, what: str = "events"):
        """wait_until(predicate(reader)): what this stream has shown by then."""
        return wait_until(lambda: predicate(self), timeout=timeout, what=what)

    def close(self) -> None:
        self.response.close()


@pytest.fixture
def stack(settings, kube, store, api_process, worker_process, make_agent, mark_ready):
    """An API process, a worker process (status watch, delivery) and a streaming demo agent;
    `running()` gives a session whose pod is ready."""

    class Stack:
        def __init__(self) -> None:
            self.agent = make_agent(stream=True, stream_delay_seconds=0.05).start()
            self.settings = settings.replace(pod_url_template=self.agent.url)
            self.api = api_process(self.settings, **STREAM_ENV)
            self.worker = worker_process(self.settings, "events")
            self.url = self.api.url
            self.kube = kube

        def create(self, url: str | None = None) -> dict:
            response = requests.post(f"{url or self.url}/session/create", headers=KEY,
                                     json={"user_id": "u"}, timeout=30)
            assert response.status_code == 201, response.text
            return response.json()

        def running(self) -> str:
            session_id = self.create()["uuid"]
            mark_ready(session_id)
            wait_until(lambda: requests.get(f"{self.url}/session/{session_id}/status",
                                            headers=KEY, timeout=5).json()["status"] == "running",
                       timeout=20, what="running")
            return session_id

        def status(self, session_id: str) -> str:
            return requests.get(f"{self.url}/session/{session_id}/status", headers=KEY,
                                timeout=5).json()["status"]

        def sleep(self, session_id: str) -> None:
            """Slept, and scaled to 0 as KEDA would."""
            assert requests.post(f"{self.url}/session/{session_id}/sleep", headers=KEY,
                                 timeout=10).status_code == 200
            mark_ready(session_id, ready=0, replicas=0)

        def wake(self, session_id: str) -> None:
            """Woken, and its pod ready again as KEDA and the kubelet would make it."""
            assert requests.post(f"{self.url}/session/{session_id}/wake", headers=KEY,
                                 timeout=10).status_code in (200, 202)
            mark_ready(session_id)

        def chat(self, session_id: str, message: str, message_id: str | None = None,
                 url: str | None = None) -> requests.Response:
            body = {"message": message, **({"message_id": message_id} if message_id else {})}
            return requests.post(f"{url or self.url}/session/{session_id}/chat", headers=KEY,
                                 json=body, timeout=60)

        def messages(self, session_id: str) -> list[dict]:
            return requests.get(f"{self.url}/session/{session_id}/messages", headers=KEY,
                                timeout=10).json()["messages"]

    return Stack()


def reply_text(events: list, message_id: str) -> tuple[list[str], str | None]:
    """(the chunk texts of the message's last attempt, its final reply text)."""
    chunks, final = [], None
    for _, kind, data in events:
        if data.get("message_id") != message_id:
            continue
        if kind == "message" and data["state"] == "delivering":
            chunks = []
        elif kind == "chunk":
            chunks.append(data["text"])
        elif kind == "reply":
            final = data["reply"]["reply"]
    return chunks, final


def is_live_view_of(chunks: list[str], final: str | None) -> bool:
    """The chunks a connected client saw are the reply's text from its start, in order,
    nothing repeated. The last few may be missing: an attempt's chunks leave the log when its
    `reply` is written, so a reader that had not read them yet gets the `reply` (the whole
    text, which replaces them) instead."""
    text = "".join(chunks)
    return bool(chunks) and final is not None and final.startswith(text)


WORDS = "one two three four five six seven eight nine ten eleven twelve"


def test_a_reply_streams_in_as_the_pod_writes_it_and_is_stored_once(stack):
    session_id = stack.running()
    reader = EventReader(stack.url, session_id)
    try:
        reader.wait_until(lambda r: r.events("status"), what="the status snapshot")
        _, kind, snapshot = reader.events()[0]
        assert (kind, snapshot["status"], snapshot["ready_replicas"]) == ("status", "running", 1)
        started = time.monotonic()
        response = stack.chat(session_id, WORDS, "m-1")  # forwarded by the API process
        assert response.status_code == 200, response.text
        assert response.json()["pod_response"]["reply"] == f"echo: {WORDS}"
        reader.wait_until(lambda r: r.events("reply"), what="the final reply")
        events = reader.events()
    finally:
        reader.close()
    chunks, final = reply_text(events, "m-1")
    assert final == f"echo: {WORDS}"
    assert is_live_view_of(chunks, final)
    assert len(chunks) >= 3  # seen in pieces, not at once
    times = [at for at, f in reader.frames if f.event == "chunk"]
    # The first chunk arrived well before the reply was complete (13 words, 50 ms apart).
    reply_at = next(at for at, f in reader.frames if f.event == "reply")
    assert reply_at - times[0] >= 0.3, (times[0] - started, reply_at - started)
    kinds = [kind for _, kind, data in events if data.get("message_id") == "m-1"]
    assert kinds[0] == "message" and kinds[-1] == "reply"
    ids = [event_id for event_id, _, _ in events]
    assert all(ids) and len(set(ids)) == len(ids)
    [stored] = stack.messages(session_id)
    assert stored["state"] == "delivered" and stored["reply"]["reply"] == final
    assert len(stack.agent.deliveries()) == 1


def test_a_client_that_lost_its_stream_resumes_with_nothing_missed_or_repeated(stack):
    session_id = stack.running()
    first = EventReader(stack.url, session_id)
    first.wait_until(lambda r: r.events("status"))
    assert stack.chat(session_id, "first message here", "a-1").status_code == 200
    first.wait_until(lambda r: r.events("reply"))
    seen = first.events()
    first.close()
    last_id = seen[-1][0]
    # While nobody listens: a chat answered, another one.
    for n in (2, 3):
        assert stack.chat(session_id, f"message number {n}", f"a-{n}").status_code == 200
    resumed = EventReader(stack.url, session_id, after=last_id)
    try:
        resumed.wait_until(lambda r: len(r.events("reply")) == 2, what="both missed replies")
        again = resumed.events()
    finally:
        resumed.close()
    everything = EventReader(f"{stack.url}", session_id, after="0")
    try:
        everything.wait_until(lambda r: len(r.events("reply")) == 3, what="the whole log")
        log = everything.events()
    finally:
        everything.close()
    # The first stream (past its snapshot) and the resumed one together are the log, in order
    # (the log no longer holds the chunks, which the final replies superseded).
    log_ids = [e[0] for e in log]
    after_snapshot = log_ids[log_ids.index(seen[0][0]) + 1:] if seen[0][0] in log_ids \
        else log_ids
    assert [e[0] for e in seen[1:] + again if e[1] != "chunk"] == after_snapshot
    assert [reply_text(again, f"a-{n}")[1] for n in (2, 3)] == [
        "echo: message number 2", "echo: message number 3"]
    # Chunks of a settled message are dropped from the log: the final reply supersedes them.
    assert not [e for e in log if e[1] == "chunk"]
    # ?after= does what Last-Event-ID does.
    query = requests.get(f"{stack.url}/session/{session_id}/events?after={last_id}",
                         headers=KEY, stream=True, timeout=10)
    lines = []
    for line in query.iter_lines(decode_unicode=True):
        lines.append(line)
        if line.startswith("event: reply") and sum(x.startswith("event: reply")
                                                   for x in lines) == 2:
            break
    query.close()
    assert [line[4:] for line in lines if line.startswith("id: ")] == [e[0] for e in again]


def test_an_event_written_by_one_process_reaches_a_stream_served_by_another(
        stack, api_process, logged_deliveries):
    other = api_process(stack.settings, **STREAM_ENV)  # a second API replica
    session_id = stack.running()
    # Asleep, so the chat is queued and delivered by the worker process, not by either API.
    stack.sleep(session_id)
    reader = EventReader(other.url, session_id)
    try:
        reader.wait_until(lambda r: r.events("status"))
        response = stack.chat(session_id, "across replicas", "x-1")
        assert response.status_code == 202
        reader.wait_until(lambda r: [e for e in r.events("message")
                                     if e[2]["state"] == "queued"], what="queued")
        stack.wake(session_id)
        reader.wait_until(lambda r: r.events("reply"), timeout=30, what="the worker's reply")
        events = reader.events()
    finally:
        reader.close()
    statuses = [data["status"] for _, kind, data in events if kind == "status"]
    assert "running" in statuses[1:]  # the status watch's change, written by the worker
    chunks, final = reply_text(events, "x-1")
    assert final == "echo: across replicas" and is_live_view_of(chunks, final)
    assert logged_deliveries(stack.worker) == 1


def test_a_stream_cut_mid_reply_is_delivered_again_and_the_client_sees_one_reply(stack):
    session_id = stack.running()
    stack.sleep(session_id)
    reader = EventReader(stack.url, session_id)
    try:
        reader.wait_until(lambda r: r.events("status"))
        assert stack.chat(session_id, f"cut: {WORDS}", "c-1").status_code == 202
        stack.wake(session_id)
        reader.wait_until(lambda r: r.events("reply"), timeout=40, what="the reply")
        events = reader.events()
    finally:
        reader.close()
    mine = [(kind, data) for _, kind, data in events if data.get("message_id") == "c-1"]
    attempts = [data["attempts"] for kind, data in mine
                if kind == "message" and data["state"] == "delivering"]
    assert attempts == [1, 2]
    retry = [data for kind, data in mine if kind == "message" and data["state"] == "queued"
             and data.get("error")]
    assert retry and "cut" in retry[0]["error"]
    first_attempt = [data["text"] for kind, data in mine if kind == "chunk"
                     and data["attempt"] == 1]
    assert first_attempt and "".join(first_attempt) != f"echo: cut: {WORDS}"  # cut part-way
    chunks, final = reply_text(events, "c-1")
    assert final == f"echo: cut: {WORDS}" and is_live_view_of(chunks, final)
    assert [kind for kind, _ in mine].count("reply") == 1
    [stored] = stack.messages(session_id)
    assert (stored["state"], stored["attempts"], stored["reply"]["reply"]) == (
        "delivered", 2, final)


def test_streams_are_bounded_per_session_and_per_process_with_429(stack, api_process):
    session_id = stack.running()
    limits = {**STREAM_ENV, "MAX_EVENT_STREAMS": "3", "MAX_EVENT_STREAMS_PER_SESSION": "2"}
    small, replica = api_process(stack.settings, **limits), api_process(stack.settings, **limits)
    readers = [EventReader(small.url, session_id) for _ in range(2)]
    try:
        refused = requests.get(f"{small.url}/session/{session_id}/events", headers=KEY,
                               timeout=10)
        assert refused.status_code == 429
        assert refused.json()["code"] == "too_many_streams" and "Retry-After" in refused.headers
        # The limit is the session's, whichever replica serves: another one refuses too.
        assert requests.get(f"{replica.url}/session/{session_id}/events", headers=KEY,
                            timeout=10).status_code == 429
        other = stack.running()
        third = EventReader(small.url, other)
        readers.append(third)
        process_full = requests.get(f"{small.url}/session/{other}/events", headers=KEY,
                                    timeout=10)
        assert process_full.status_code == 429, process_full.text
        assert "MAX_EVENT_STREAMS" in process_full.json()["error"]
        readers.pop(0).close()  # noticed at its next heartbeat (0.5 s)
        reopened = wait_until(lambda: (r := requests.get(
            f"{small.url}/session/{session_id}/events", headers=KEY, stream=True,
            timeout=10)).status_code == 200 and r, timeout=10, what="a freed place")
        reopened.close()
    finally:
        for reader in readers:
            reader.close()
    assert readers[0].comments >= 1  # heartbeats kept the idle stream alive


def test_events_follow_the_session_routes_auth_and_bad_ids_are_400(stack):
    mine = stack.create()
    theirs = stack.create()
    url = f"{stack.url}/session/{mine['uuid']}/events"
    assert requests.get(url, timeout=5).status_code == 401
    # A credential that is not a key nor this session's token: like an unknown session.
    assert requests.get(url, headers={"X-API-Key": "wrong"}, timeout=5).status_code == 404
    other_token = {"Authorization": f"Bearer {theirs['session_token']}"}
    assert requests.get(url, headers=other_token, timeout=5).status_code == 404  # no BOLA
    own = requests.get(url, headers={"Authorization": f"Bearer {mine['session_token']}"},
                       stream=True, timeout=5)
    assert own.status_code == 200
    own.close()
    # Out of Redis' range (each part of a stream id is 64 bits): refused before the stream
    # starts, not a stream dying with a Redis error on every retry.
    for bad in ("abc", "1-2-3", "-1", "1" * 30, "99999999999999999999-0",
                "18446744073709551616-0", "0-18446744073709551616",
                "18446744073709551615-18446744073709551615"):
        response = requests.get(url, headers={**KEY, "Last-Event-ID": bad}, timeout=5)
        assert response.status_code == 400 and response.json()["code"] == "invalid_field", bad
        assert requests.get(f"{url}?after={bad}", headers=KEY, timeout=5).status_code == 400
    missing = requests.get(f"{stack.url}/session/s{'0' * 16}/events", headers=KEY, timeout=5)
    assert missing.status_code == 404 and missing.json()["code"] == "session_not_found"


def test_a_deleted_session_ends_its_streams_and_a_trimmed_log_says_gap(stack, api_process):
    short = api_process(stack.settings, **STREAM_ENV, MAX_EVENTS_KEPT="10")
    session_id = stack.running()
    reader = EventReader(short.url, session_id)
    reader.wait_until(lambda r: r.events("status"))
    first_id = reader.events()[0][0]
    for n in range(8):  # 3+ events each: more than the log keeps
        requests.post(f"{short.url}/session/{session_id}/chat", headers=KEY,
                      json={"message": f"m{n}"}, timeout=30)
    late = EventReader(short.url, session_id, after=first_id)
    late.wait_until(lambda r: r.events(), what="the gap")
    assert late.events()[0][1] == "gap"
    late.close()
    assert requests.delete(f"{stack.url}/session/{session_id}", headers=KEY,
                           timeout=30).status_code == 200
    assert reader.ended.wait(5), "the stream of a deleted session did not end"
    assert reader.events()[-1][1:] == ("status", {"status": "terminated"})


def test_a_stopping_api_process_ends_its_streams_at_once(stack):
    session_id = stack.running()
    reader = EventReader(stack.url, session_id)
    reader.wait_until(lambda r: r.events("status"))
    started = time.monotonic()
    stack.api.process.terminate()
    assert stack.api.process.wait(20) == 0
    assert reader.ended.wait(5)
    assert time.monotonic() - started < 10  # not held to the graceful timeout


def test_a_live_stream_that_falls_behind_the_trim_says_gap_and_goes_on(settings, store):
    """A stream whose client stopped reading while the session wrote more than the log keeps:
    a `gap` (re-read /messages), then the events the log still has — not a silent skip."""
    short_log = store_module.Store.from_url(
        settings.redis_url, socket_timeout_seconds=2,
        session_ttl_seconds=settings.session_ttl_seconds,
        activity_ttl_seconds=settings.activity_ttl_seconds, events_kept=10)
    session_id = "s" + "b" * 16
    short_log.records.create_session(session_id, user_id="u", token_hash="x",
                             now=utc_now())
    notices = Notices(short_log)
    streams = EventStreams(settings, short_log, notices)
    stream = streams.open(session_id, None)
    frames = iter(stream)
    try:
        assert next(frames).startswith(b"retry:")
        assert b"event: status" in next(frames)  # the snapshot; the client then lags
        for n in range(15):  # 15 status events; the log keeps about 10
            short_log.records.set_status(session_id, "running" if n % 2 else "sleeping",
                                 actor=Actor.WATCH, replicas=n % 2, ready_replicas=n % 2)
        gap = next(frames)
        assert b"event: gap" in gap, gap
        after_gap = [next(frames) for _ in range(3)]
        assert all(b"event: status" in frame for frame in after_gap), after_gap
        kept = short_log.redis.xrange(f"sm:e:{session_id}")
        assert after_gap[0].startswith(f"id: {kept[0][0]}".encode())  # the oldest kept on
    finally:
        stream.close()
        notices.release()
        short_log.redis.close()
