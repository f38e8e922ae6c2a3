"""Chat: the 202 path under load against a floor app, and the 200 path's overhead over the pod.

chat202 — POST /session/<id>/chat to sessions with no ready pod (message queued), 8 keep-alive
clients for a fixed time, against `python -m service serve` and the floor (`bench.floor`),
alternating which goes first each round.

chat200 — one client, sequential: the same message posted straight to the demo agent
(`POST /chat`, what the service does) and through the service to a session whose Deployment is
ready and whose status the watcher published, alternating request by request.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import time

from kubernetes import client as k8s

from service.core import names
from service.worker.status_watch import StatusTracker

from . import load
from .harness import Client, Context, create_sessions_one_by_one, median, percentile
from .profile import profiled
from .report import Figure, Row, Target

SESSIONS = 50
CONNECTIONS = 8


def chat202(ctx: Context) -> Figure:
    figure = Figure("chat202", "1. Chat, no ready pod (202 queued): throughput with 8 clients")
    ctx.flush()
    service, floor = ctx.service("limits-on"), ctx.floor()
    store = ctx.store()
    sessions = create_sessions_one_by_one(store, SESSIONS)
    paths = [f"/session/{sid}/chat" for sid in sessions]
    body = {"message": "hello from the benchmark, please queue me"}
    seconds = 2 if ctx.quick else 5
    headers = {"X-API-Key": ctx.api_key}

    def hit(proc, duration: int) -> load.LoadResult:
        cpu = ctx.cpu(proc)
        result = load.run(proc.port, "POST", paths, body=body, headers=headers,
                          connections=CONNECTIONS, seconds=duration)
        cpu2 = ctx.cpu(proc)
        # CPU milliseconds per request: the server's processes, and redis-server.
        result.cpu_ms = [(b - a) * 1000 / max(1, result.requests)
                         for a, b in zip(cpu, cpu2, strict=True)]
        return result

    ctx.settle()
    hit(service, 1)  # warm-up: connections, imports, Lua script cache
    hit(floor, 1)
    ours: list[load.LoadResult] = []
    base: list[load.LoadResult] = []
    queued_before = int(store.redis.hget("sm:stats", "queued") or 0)
    for index in range(ctx.rounds):
        order = [(service, ours), (floor, base)]
        for proc, results in order if index % 2 == 0 else reversed(order):
            results.append(hit(proc, seconds))
        ctx.check_alive()
    queued = int(store.redis.hget("sm:stats", "queued") or 0) - queued_before
    with profiled(ctx.profile_dir, "chat202-service", service.pid, seconds):
        hit(service, seconds)
    sent = sum(r.requests for r in ours)
    errors = sum(r.errors for r in ours) + sum(r.errors for r in base)

    ratios = [o.rps / b.rps for o, b in zip(ours, base, strict=True)]
    figure.rows = [
        Row("service: 202 chats", "req/s", [r.rps for r in ours], ratios=ratios,
            baseline="floor", target=Target(">=", 0.7, on="ratio")),
        Row("floor: Flask + 1 LPUSH", "req/s", [r.rps for r in base]),
        Row("service latency", "ms", [r.p50_ms for r in ours], p95s=[r.p95_ms for r in ours],
            ratios=[o.p50_ms / b.p50_ms for o, b in zip(ours, base, strict=True)],
            baseline="floor"),
        Row("floor latency", "ms", [r.p50_ms for r in base], p95s=[r.p95_ms for r in base]),
        Row("service CPU per chat (gunicorn)", "ms", [r.cpu_ms[0] for r in ours],
            ratios=[o.cpu_ms[0] / b.cpu_ms[0] for o, b in zip(ours, base, strict=True)],
            baseline="floor"),
        Row("floor CPU per chat (gunicorn)", "ms", [r.cpu_ms[0] for r in base]),
        Row("redis-server CPU per chat, service", "ms", [r.cpu_ms[1] for r in ours],
            ratios=[o.cpu_ms[1] / b.cpu_ms[1] for o, b in zip(ours, base, strict=True)],
            baseline="floor"),
        Row("redis-server CPU per chat, floor", "ms", [r.cpu_ms[1] for r in base]),
    ]
    workers = os.environ.get("WEB_CONCURRENCY") or "default"
    figure.notes = [
        f"{ctx.rounds} rounds x {seconds} s per side, {CONNECTIONS} keep-alive connections, "
        f"load tool: {ours[0].tool}; requests rotate over {SESSIONS} sessions "
        "(MAX_QUEUED_MESSAGES=1000000, so the backlog cap never answers 429).",
        "Both servers: service.http.serve.gunicorn_options (gthread; WEB_CONCURRENCY="
        f"{workers}, WEB_THREADS={os.environ.get('WEB_THREADS') or 'default'}). Rate limiter "
        "enabled with every route at 1000000/minute (its Redis round trip is paid, never a 429).",
        "CPU per chat = user+system CPU of the server's process group (master + workers) or "
        "of redis-server during the run / requests (from /proc): on 2 cores the server is "
        "CPU-bound, so the throughput ratio follows the CPU ratio.",
        f"Check: {sent} chats sent to the service, {queued} counted as queued in Redis "
        f"(up to {CONNECTIONS} per run are still in flight when wrk stops); {errors} HTTP "
        "errors in all runs.",
    ]
    figure.data = {"service": [vars(r) for r in ours], "floor": [vars(r) for r in base],
                   "machine_busy_before": ctx.settled[-1:]}
    return figure


# -- the 200 path -------------------------------------------------------------------------


def make_running(ctx: Context, client: Client) -> str:
    """Create a session through the API, mark its Deployment ready as a kubelet would, and
    publish the status the worker's watcher would (StatusTracker.on_deployment)."""
    kube = ctx.kube("bench")
    session_id = client.json("POST", "/session/create", {"user_id": "bench@example.com"},
                             expect=201)["uuid"]
    apps = k8s.AppsV1Api(kube.api_client)
    name = names.object_name(session_id)
    apps.patch_namespaced_deployment_scale(name, kube.namespace, {"spec": {"replicas": 1}})
    apps.patch_namespaced_deployment_status(name, kube.namespace, {"status": {
        "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1}})
    deployment = apps.read_namespaced_deployment(name, kube.namespace)
    StatusTracker(ctx.store()).on_deployment(
        "MODIFIED", kube.api_client.sanitize_for_serialization(deployment))
    return session_id


def _direct(port: int, payload: bytes) -> float:
    """POST /chat to the demo agent as the service does (it closes: HTTP/1.0)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/chat", body=payload, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"demo agent answered {response.status}")
    return elapsed


def chat200(ctx: Context) -> Figure:
    figure = Figure("chat200", "2. Chat to a running session (200 via the demo agent): overhead")
    ctx.flush()
    service, agent = ctx.service("limits-on"), ctx.agent()
    client = Client(service.port, {"X-API-Key": ctx.api_key})
    session_id = make_running(ctx, client)
    path = f"/session/{session_id}/chat"
    per_round = 60 if ctx.quick else 200

    def via_service() -> float:
        message_id = secrets.token_hex(8)
        status, payload, elapsed = client.request(
            "POST", path, {"message": "hello agent", "message_id": message_id})
        if status != 200 or json.loads(payload)["status"] != "processed":
            raise RuntimeError(f"expected a 200 processed chat, got {status} {payload[:200]!r}")
        return elapsed

    def direct() -> float:
        body = {"message": "hello agent", "message_id": secrets.token_hex(8),
                "session_id": session_id}
        return _direct(agent.port, json.dumps(body).encode())

    ctx.settle()
    for _ in range(30):  # warm-up
        via_service()
        direct()
    rounds: list[tuple[list[float], list[float]]] = []
    for _ in range(ctx.rounds):
        ours, base = [], []
        for index in range(per_round):
            pair = [(via_service, ours), (direct, base)]
            for call, sink in pair if index % 2 == 0 else reversed(pair):
                sink.append(call() * 1000)
        rounds.append((ours, base))
        ctx.check_alive()
    with profiled(ctx.profile_dir, "chat200-service", service.pid, 5):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            via_service()
    client.close()

    def stat(q: float, which: int) -> list[float]:
        return [percentile(r[which], q) for r in rounds]

    over50 = [a - b for a, b in zip(stat(50, 0), stat(50, 1), strict=True)]
    over95 = [a - b for a, b in zip(stat(95, 0), stat(95, 1), strict=True)]
    figure.rows = [
        Row("through the service", "ms", stat(50, 0), p95s=stat(95, 0),
            ratios=[a / b for a, b in zip(stat(50, 0), stat(50, 1), strict=True)],
            baseline="direct"),
        Row("direct to the demo agent", "ms", stat(50, 1), p95s=stat(95, 1)),
        Row("overhead p50 (service - direct)", "ms", over50, target=Target("<=", 5, "ms")),
        Row("overhead p95 (service - direct)", "ms", over95),
    ]
    figure.notes = [
        f"{ctx.rounds} rounds x {per_round} requests each way, one client, alternating "
        "service/direct request by request; overhead = difference of the round's percentiles.",
        "Service side: keep-alive client → gunicorn → the chat route (rate limiter, admission "
        "in Redis, PodClient POST to the agent, delivery bookkeeping in Redis).",
        "Direct side: a new connection per request, as the service makes (the agent is "
        "HTTP/1.0 and closes). Agent = demo_agent/agent.py, "
        "no delay.",
    ]
    figure.data = {"rounds": [{"service_ms": [round(x, 3) for x in o],
                               "direct_ms": [round(x, 3) for x in b]} for o, b in rounds],
                   "overhead_p50_median": median(over50)}
    return figure
