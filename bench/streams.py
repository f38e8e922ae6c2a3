"""Open /events streams one API process holds while idle: CPU and memory per stream.

One API process (WEB_CONCURRENCY=1, gunicorn + gevent, the production heartbeat of 30 s).
Per round: STREAMS streams opened over raw sockets (PER_SESSION on each of STREAMS/PER_SESSION
sessions, the per-session limit), then IDLE_SECONDS with nothing happening but heartbeats,
during which the process group's CPU time is read from /proc; its resident memory is read
before the streams open and once they are all open. Then one event is written to every
session and the time until every stream has it is taken (the fan-out), and the streams close.
Reported: streams held open to the end, CPU % of one core while idle, memory per stream, the
fan-out time.
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import threading
import time

from devcluster.ports import free_port
from devcluster.processes import wait_until
from service.core.transitions import Actor

from .harness import (
    SERVICE_NAMESPACE,
    Context,
    cpu_seconds,
    create_sessions_one_by_one,
)
from .report import Figure, Row, Target

STREAMS = 1000
PER_SESSION = 5
IDLE_SECONDS = 60.0  # two heartbeats


def _rss_bytes(group: int) -> int:
    """Resident memory of every process in a process group (a gunicorn master + worker)."""
    total = 0
    for entry in (d for d in os.listdir("/proc") if d.isdigit()):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[2]) != group:
                    continue
            with open(f"/proc/{entry}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class _Streams:
    """Many open streams on raw sockets, drained by one thread: how many are open, and which
    saw a given text since it was asked for."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.open = 0
        self.closed = 0
        self._seen: dict[socket.socket, bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def add(self, port: int, session_id: str, key: str) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"GET /session/{session_id}/events HTTP/1.1\r\nHost: bench\r\n"
                     f"X-API-Key: {key}\r\nAccept: text/event-stream\r\n\r\n".encode())
        head = b""
        while b"event: status" not in head:  # the headers, then the status snapshot
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"/events closed at once: {head[:200]!r}")
            head += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"/events answered {head[:100]!r}")
        sock.setblocking(False)
        with self._lock:
            self._seen[sock] = b""
            self.open += 1
        self.selector.register(sock, selectors.EVENT_READ)

    def _drain(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(timeout=0.2):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                with self._lock:
                    if data:
                        self._seen[sock] = (self._seen[sock] + data)[-4096:]  # type: ignore[index]
                    else:
                        self.selector.unregister(sock)
                        self.open -= 1
                        self.closed += 1

    def forget(self) -> None:
        with self._lock:
            for sock in self._seen:
                self._seen[sock] = b""

    def seen_by_all(self, text: bytes) -> bool:
        with self._lock:
            return all(text in seen for seen in self._seen.values())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in list(self._seen):
            sock.close()
        self.selector.close()


def streams(ctx: Context) -> Figure:
    figure = Figure("streams", f"10. {STREAMS} open /events streams on one API process, idle")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * STREAMS:  # both ends of each stream are on this machine; children inherit
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * STREAMS), hard))
    ctx.flush()
    ctx.kube(SERVICE_NAMESPACE)
    port = free_port()
    env = ctx.service_env(port=port, namespace=SERVICE_NAMESPACE, limits=False)
    env.update(WEB_CONCURRENCY="1", MAX_EVENT_STREAMS=str(STREAMS + 100),
               WEB_CONNECTIONS=str(2 * STREAMS + 500), LOG_LEVEL="WARNING")
    api = ctx.spawn_service("api-streams", env)
    store = ctx.store()
    rounds = max(1, ctx.rounds // 3)
    held, cpu, per_stream, fanout = [], [], [], []
    try:
        sessions = create_sessions_one_by_one(store, STREAMS // PER_SESSION, prefix="streams")
        for _ in range(rounds):
            ctx.settle()
            before = _rss_bytes(api.pid)
            opened = _Streams()
            try:
                for session_id in sessions:
                    for _ in range(PER_SESSION):
                        opened.add(port, session_id, ctx.api_key)
                time.sleep(2)
                after = _rss_bytes(api.pid)
                cpu_start = cpu_seconds(group=api.pid)
                time.sleep(IDLE_SECONDS)
                cpu.append(100 * (cpu_seconds(group=api.pid) - cpu_start) / IDLE_SECONDS)
                held.append(float(opened.open))
                per_stream.append((after - before) / 1024 / STREAMS)
                opened.forget()
                started = time.perf_counter()
                for session_id in sessions:  # one status change each, to every stream
                    store.records.set_status(session_id, "waking", actor=Actor.WATCH)
                wait_until(lambda held=opened: held.seen_by_all(b'"status":"waking"'), timeout=60,
                           what="every stream seeing its session's event", daemon=api)
                fanout.append((time.perf_counter() - started) * 1000)
                for session_id in sessions:
                    store.records.set_status(session_id, "sleeping", actor=Actor.WATCH)
            finally:
                opened.close()
            # The server notices a client gone at its next heartbeat write (<= 30 s).
            wait_until(lambda: sum(store.events.open_streams(s) for s in sessions) == 0, timeout=60,
                       what="the server to notice the streams closed")
            ctx.check_alive()
    finally:
        api.stop()
    figure.rows = [
        Row("streams held open", "", held, target=Target(">=", STREAMS)),
        Row(f"CPU while idle ({IDLE_SECONDS:.0f} s, heartbeats only)", "%", cpu,
            target=Target("<=", 1.0, unit="%")),
        Row("resident memory per stream", "KiB", per_stream),
        Row(f"one event to each of {len(sessions)} sessions: all {STREAMS} streams have it",
            "ms", fanout),
    ]
    return figure
