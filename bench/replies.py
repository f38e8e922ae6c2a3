"""Replies without polling: time to the first chunk and to the full reply, three ways.

One API process (gunicorn + gevent) and one worker process; the demo agent streams its reply
word by word (WORDS words, STREAM_DELAY_SECONDS apart: about a second of "writing", as an LLM
agent does). Per round, for a running session and for a sleeping one, each way of getting the
reply on a fresh session:

- /events: the stream is open before the chat is sent; first chunk and final reply as they
  arrive (the reply streams in);
- Prefer: wait=30: the chat is held until its reply (no chunks: first = full);
- 202 then poll: the chat as a frontend sent it before this, /messages read every 1 s until
  the reply is there (a running session answers the chat itself, 200, with no poll).

"Sleeping" is a session scaled to 0 whose pod is ready WAKE_SECONDS after the chat (the bench
records `running` then, as the status watch would; a wake on the real cluster adds KEDA's and
the kubelet's time, see the `wake` figure). Ways alternate their order from round to round.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

from devcluster.ports import free_port
from devcluster.processes import wait_until
from service.core import sse
from service.core.transitions import Actor

from .harness import (
    SERVICE_NAMESPACE,
    Context,
    create_sessions_one_by_one,
    median,
)
from .report import Figure, Row, Target

WORDS = 20
STREAM_DELAY_SECONDS = 0.05
WAKE_SECONDS = 1.0
POLL_SECONDS = 1.0
WAYS = ("events", "wait", "poll")


def _request(port: int, method: str, path: str, key: str, body: dict | None = None,
             headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None,
                     {"Content-Type": "application/json", "X-API-Key": key, **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


class _Stream:
    """An open /events stream; the arrival time of each frame."""

    def __init__(self, port: int, session_id: str, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.request("GET", f"/session/{session_id}/events", headers={"X-API-Key": key})
        self.response = self.conn.getresponse()
        if self.response.status != 200:
            raise RuntimeError(f"/events answered {self.response.status}")
        self.arrivals: list[tuple[float, str, dict]] = []
        self.snapshot = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self.snapshot.wait(10):
            raise RuntimeError("no status snapshot on /events")

    def _read(self) -> None:
        try:
            body = iter(lambda: self.response.read1(65536), b"")
            for frame in sse.parse(sse.lines(body)):
                self.arrivals.append((time.perf_counter(), frame.event, json.loads(frame.data)))
                self.snapshot.set()
        except (OSError, ValueError, AttributeError):
            pass  # closed

    def first(self, kind: str, message_id: str, timeout: float = 30) -> float:
        def arrived() -> float | None:
            return next((at for at, event, data in list(self.arrivals)
                         if event == kind and data.get("message_id") == message_id), None)

        return wait_until(arrived, timeout=timeout, interval=0.002,
                          what=f"a {kind} event for {message_id}")

    def close(self) -> None:
        self.conn.close()


def _trial(ctx: Context, port: int, way: str, session_id: str, asleep: bool) -> tuple[float,
                                                                                    float]:
    """(seconds to the first chunk, seconds to the full reply) for one chat."""
    store = ctx.store()
    key = ctx.api_key
    message_id = f"{way}-{session_id}"
    body = {"message": " ".join(f"w{i}" for i in range(WORDS - 1)), "message_id": message_id}
    path = f"/session/{session_id}/chat"
    waker = None
    if asleep:
        waker = threading.Timer(WAKE_SECONDS, lambda: store.records.set_status(
            session_id, "running", replicas=1, ready_replicas=1, actor=Actor.WATCH))
    stream = _Stream(port, session_id, key) if way == "events" else None
    try:
        started = time.perf_counter()
        if waker:
            waker.start()
        if way == "wait":
            status, answer = _request(port, "POST", path, key, body, {"Prefer": "wait=30"})
            if status != 200:
                raise RuntimeError(f"held chat answered {status} {answer}")
            done = time.perf_counter() - started
            return done, done
        status, answer = _request(port, "POST", path, key, body)
        if stream is not None:
            first = stream.first("chunk", message_id) - started
            return first, stream.first("reply", message_id) - started
        if status == 200:
            done = time.perf_counter() - started
            return done, done
        while True:  # 202: poll /messages as a frontend did
            time.sleep(POLL_SECONDS)
            _, page = _request(port, "GET", f"/session/{session_id}/messages", key)
            if any(m["message_id"] == message_id and m["state"] == "delivered"
                   for m in page["messages"]):
                done = time.perf_counter() - started
                return done, done
            if time.perf_counter() - started > 60:
                raise RuntimeError("no reply within 60 s")
    finally:
        if waker:
            waker.join()
        if stream is not None:
            stream.close()


def replies(ctx: Context) -> Figure:
    figure = Figure("replies", "9. time to the first chunk and to the full reply: /events, "
                    "Prefer: wait, 202 then a 1 s poll")
    ctx.flush()
    ctx.kube(SERVICE_NAMESPACE)
    agent = ctx.start_agent("streaming-agent", AGENT_STREAM="1",
                            AGENT_STREAM_DELAY_SECONDS=str(STREAM_DELAY_SECONDS))
    pod_url = agent.url
    port = free_port()
    env = ctx.service_env(port=port, namespace=SERVICE_NAMESPACE, limits=False)
    env.update(WEB_CONCURRENCY="1", POD_URL_TEMPLATE=pod_url)
    api = ctx.spawn_service("api-replies", env)
    worker = None
    trials = 2 if ctx.quick else 3
    rounds = max(2, ctx.rounds // 2)
    # results[state][way] = one (first, full) median pair per round
    results: dict[str, dict[str, list[tuple[float, float]]]] = {
        state: {way: [] for way in WAYS} for state in ("running", "sleeping")}
    try:
        worker = ctx.start_worker("worker-replies", SERVICE_NAMESPACE,
                                  {"POD_URL_TEMPLATE": pod_url,
                                   "RECONCILE_INTERVAL_SECONDS": "3600"})
        ctx.settle()
        store = ctx.store()
        for index in range(rounds):
            ways = WAYS if index % 2 == 0 else tuple(reversed(WAYS))
            for state in ("running", "sleeping"):
                for way in ways:
                    sessions = create_sessions_one_by_one(store, trials, prefix="replies")
                    timings = []
                    for session_id in sessions:
                        if state == "running":
                            store.records.set_status(session_id, "running", replicas=1,
                                             ready_replicas=1, actor=Actor.WATCH)
                        else:
                            store.records.set_status(session_id, "sleeping", actor=Actor.WATCH)
                        timings.append(_trial(ctx, port, way, session_id, state == "sleeping"))
                    results[state][way].append((median(t[0] for t in timings),
                                                median(t[1] for t in timings)))
            ctx.check_alive()
    finally:
        for proc in (api, agent):
            proc.stop()
        if worker is not None:
            ctx.stop("worker-replies")

    def ms(state: str, way: str, which: int) -> list[float]:
        return [pair[which] * 1000 for pair in results[state][way]]

    rows = []
    for state in ("running", "sleeping"):
        poll_full = ms(state, "poll", 1)
        first = ms(state, "events", 0)
        rows += [
            Row(f"{state}: /events first chunk", "ms", first, baseline="202+poll full",
                ratios=[a / b for a, b in zip(first, poll_full, strict=True)],
                target=Target("<=", 0.8, on="ratio")),
            Row(f"{state}: /events full reply", "ms", ms(state, "events", 1)),
            Row(f"{state}: Prefer: wait full reply", "ms", ms(state, "wait", 1),
                baseline="202+poll full",
                ratios=[a / b for a, b in zip(ms(state, "wait", 1), poll_full, strict=True)],
                target=Target("<=", 1.1, on="ratio")),
            Row(f"{state}: 202 then poll (1 s) full reply", "ms", poll_full,
                note="a running session answers the chat itself (200)"
                if state == "running" else ""),
        ]
    figure.rows = rows
    return figure
