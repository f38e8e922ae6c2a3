"""Serving model: /health while chats wait on slow agents, gevent (production) vs gthread.

One API process each (WEB_CONCURRENCY=1): `python -m service serve` (gunicorn, gevent
workers) and the same app under gunicorn's gthread worker with 8 threads (`bench.gthread`,
the model the service used before). Per round and model: SLOW_CHATS running sessions each
get one chat that the agent holds AGENT_SECONDS, all at once, while one client polls /health
back to back. Reported: /health p50/p99 during the hold, and how many chats were answered
200 `processed` (the rest timed out or were refused). Alternating which model goes first.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from devcluster.ports import free_port
from devcluster.processes import Daemon, http_ok, wait_until
from service.core.transitions import Actor

from .harness import (
    SERVICE_NAMESPACE,
    Context,
    create_sessions_one_by_one,
    percentile,
)
from .report import Figure, Row, Target

SLOW_CHATS = 24  # past 8 threads: the gthread model's limit per process
AGENT_SECONDS = 4.0


def _api(ctx: Context, model: str, agent_port: int) -> Daemon:
    port = free_port()
    env = ctx.service_env(port=port, namespace=SERVICE_NAMESPACE, limits=False)
    env.update(WEB_CONCURRENCY="1", POD_URL_TEMPLATE=f"http://127.0.0.1:{agent_port}",
               POD_TIMEOUT_SECONDS="30", DELIVERY_LEASE_SECONDS="60")
    module = ["-m", "service", "serve"] if model == "gevent" else ["-m", "bench.gthread"]
    proc = ctx.spawn(f"api-{model}", [sys.executable, *module], env, port=port)
    wait_until(lambda: http_ok(f"{proc.url}/livez"), timeout=30, what=f"api ({model})",
               daemon=proc)
    return proc


def _post(port: int, path: str, body: dict, key: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=AGENT_SECONDS * 4 + 10)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json",
                                                     "X-API-Key": key})
        response = conn.getresponse()
        return response.status, json.loads(response.read()).get("status", "")
    except OSError as err:
        return -1, type(err).__name__
    finally:
        conn.close()


def _round(ctx: Context, proc: Daemon, sessions: list[str]) -> tuple[list[float], int]:
    store = ctx.store()
    for session_id in sessions:  # running with a ready pod, as the status watch writes it
        store.records.set_status(session_id, "running", actor=Actor.WATCH, replicas=1,
                                 ready_replicas=1)
    done = threading.Event()
    latencies: list[float] = []

    def poll() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=30)
        while not done.is_set():
            started = time.perf_counter()
            try:
                conn.request("GET", "/health")
                conn.getresponse().read()
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=30)
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.02)
        conn.close()

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    with ThreadPoolExecutor(len(sessions)) as pool:
        answers = list(pool.map(lambda sid: _post(
            proc.port, f"/session/{sid}/chat", {"message": "think"}, ctx.api_key), sessions))
    done.set()
    poller.join(35)
    return latencies, sum(1 for status, state in answers if (status, state) == (200, "processed"))


def serving(ctx: Context) -> Figure:
    figure = Figure("serving", "8. /health while 24 chats wait 4 s on their agents, one process")
    ctx.flush()
    ctx.kube(SERVICE_NAMESPACE)
    agent = ctx.start_agent("slow-agent", AGENT_DELAY_SECONDS=str(AGENT_SECONDS))
    models = {"gevent": _api(ctx, "gevent", agent.port),
              "gthread": _api(ctx, "gthread", agent.port)}
    sessions = create_sessions_one_by_one(ctx.store(), SLOW_CHATS)
    rounds = max(2, ctx.rounds // 2)
    results: dict[str, list[tuple[list[float], int]]] = {name: [] for name in models}
    try:
        ctx.settle()
        for index in range(rounds):
            order = list(models.items())
            for name, proc in order if index % 2 == 0 else reversed(order):
                results[name].append(_round(ctx, proc, sessions))
            ctx.check_alive()
    finally:
        for proc in (*models.values(), agent):
            proc.stop()

    def p(name: str, q: float) -> list[float]:
        return [percentile(latencies, q) for latencies, _ in results[name]]

    figure.rows = [
        Row("gevent: /health p50 (p95 col: p99)", "ms", p("gevent", 50), p95s=p("gevent", 99),
            target=Target("<=", 100, unit="ms", on="p95")),
        Row("gthread: /health p50 (p95 col: p99)", "ms", p("gthread", 50),
            p95s=p("gthread", 99), baseline="gevent p99",
            ratios=[a / b for a, b in zip(p("gthread", 99), p("gevent", 99), strict=True)]),
        Row("gevent: chats answered 200", "", [float(n) for _, n in results["gevent"]],
            target=Target(">=", SLOW_CHATS)),
        Row("gthread: chats answered 200", "", [float(n) for _, n in results["gthread"]]),
    ]
    return figure
