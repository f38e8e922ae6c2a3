"""Delivery throughput: 100 sessions x 5 queued messages, all made ready at once; time until
the worker process(es) have delivered all 500 to the demo agent. 1 worker, then 2.

Messages are admitted with `Store.admit_chat` (what POST /chat does while no pod is ready).
"Ready at once" = one pipeline of `Store.records.set_status(..., "running", actor=Actor.WATCH)`, the
call the status watcher makes, which also makes the session's messages due immediately.
Done = the `delivered` counter (finish_delivery.lua) went up by 500.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time

from devcluster.processes import Daemon
from service.core.clock import iso, utc_now
from service.core.transitions import Actor
from service.store import Store

from .harness import Context, cpu_seconds, create_sessions
from .profile import profiled
from .report import Figure, Row

NAMESPACE = "bench-delivery"
SESSIONS = 100
PER_SESSION = 5
# Workers look for due messages this often (WORKER_POLL_INTERVAL_SECONDS); the timer below
# includes up to one interval before a worker notices the sessions became ready.
POLL_SECONDS = 0.5


def _counter(store: Store, name: str) -> int:
    return int(store.redis.hget("sm:stats", name) or 0)


@dataclasses.dataclass
class Round:
    whole: float  # seconds from "ready" to the last delivery
    steady: float  # seconds from the first delivery to the last
    cpu_ms: dict[str, float]  # CPU milliseconds per message: workers, agent, redis


def _one_round(ctx: Context, store: Store, workers: list[Daemon],
               timeout: float = 120) -> Round:
    sessions = create_sessions(store, SESSIONS, prefix="delivery")
    for sid in sessions:
        for index in range(PER_SESSION):
            message_id = secrets.token_hex(8)
            mode, _ = store.messages.admit_chat(
                sid, message_id=message_id,
                message={"message_id": message_id, "message": f"queued message {index}",
                         "created_at": iso(utc_now())},
                max_queued=1000, max_kept=1000, allow_forward=True, lease_seconds=60)
            if mode != "queued":
                raise RuntimeError(f"expected the message to be queued, got {mode}")
    time.sleep(0.2)  # the workers look at the not-ready sessions once and put them back
    delivered = _counter(store, "delivered")
    failed = _counter(store, "failed")
    pipe = store.redis.pipeline(transaction=False)
    on_pipe = Store(pipe, session_ttl_seconds=store.db.session_ttl,  # type: ignore[arg-type]
                    activity_ttl_seconds=store.db.activity_ttl)
    for sid in sessions:
        on_pipe.records.set_status(sid, "running", actor=Actor.WATCH, replicas=1, ready_replicas=1)
    cpu_before = _cpu(ctx, workers)
    started = time.perf_counter()
    pipe.execute()
    goal = delivered + SESSIONS * PER_SESSION
    deadline = started + timeout
    first = None
    while (count := _counter(store, "delivered")) < goal:
        if first is None and count > delivered:
            first = time.perf_counter()
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {count - delivered} of {SESSIONS * PER_SESSION} "
                               f"delivered after {timeout}s")
        if _counter(store, "failed") != failed:
            raise RuntimeError("a delivery failed; see the worker logs")
        time.sleep(0.005)
    finished = time.perf_counter()
    cpu_after = _cpu(ctx, workers)
    per_message = {k: (cpu_after[k] - cpu_before[k]) * 1000 / (SESSIONS * PER_SESSION)
                   for k in cpu_before}
    return Round(finished - started, finished - (first or started), per_message)


def _cpu(ctx: Context, workers: list[Daemon]) -> dict[str, float]:
    redis = ctx.redis().daemon
    return {"workers": sum(cpu_seconds(group=w.pid) for w in workers),
            "agent": cpu_seconds(group=ctx.agent().pid),
            "redis": cpu_seconds(pid=redis.pid) if redis is not None else 0.0}


def delivery(ctx: Context) -> Figure:
    figure = Figure("delivery", "7. Delivery: 100 sessions x 5 queued messages made ready at once")
    ctx.flush()
    store = ctx.store()
    agent = ctx.agent()
    env = {"RECONCILE_INTERVAL_SECONDS": "3600", "POD_TIMEOUT_SECONDS": "10"}
    total = SESSIONS * PER_SESSION
    rounds: dict[int, list[Round]] = {1: [], 2: []}
    try:
        workers = [ctx.start_worker("worker-1", NAMESPACE, env)]
        ctx.settle()  # its leader roles (watch, first reconcile pass) settle
        for count in (1, 2):
            if count == 2:
                workers.append(ctx.start_worker("worker-2", NAMESPACE, env))
                ctx.settle()
            _one_round(ctx, store, workers)  # warm-up
            for _ in range(ctx.rounds):
                rounds[count].append(_one_round(ctx, store, workers))
                ctx.check_alive()
            if count == 1:
                with profiled(ctx.profile_dir, "delivery-worker", workers[0].pid, 3):
                    _one_round(ctx, store, workers)
    finally:
        ctx.stop("worker-2")
        ctx.stop("worker-1")

    def values(count: int, field: str) -> list[float]:
        return [getattr(r, field) for r in rounds[count]]

    def cpu(count: int, part: str) -> list[float]:
        return [r.cpu_ms[part] for r in rounds[count]]

    def vs_one(series: list[float], first: list[float]) -> list[float]:
        return [b / a for a, b in zip(first, series, strict=True)]

    rate = {n: [(total - 1) / s for s in values(n, "steady")] for n in rounds}
    figure.rows = [
        Row("1 worker: ready -> all 500 delivered", "s", values(1, "whole")),
        Row("2 workers: ready -> all 500 delivered", "s", values(2, "whole"),
            baseline="1 worker", ratios=vs_one(values(2, "whole"), values(1, "whole"))),
        Row("1 worker: first -> last delivery", "s", values(1, "steady")),
        Row("2 workers: first -> last delivery", "s", values(2, "steady"),
            baseline="1 worker", ratios=vs_one(values(2, "steady"), values(1, "steady"))),
        Row("1 worker: delivery rate", "msg/s", rate[1]),
        Row("2 workers: delivery rate", "msg/s", rate[2], baseline="1 worker",
            ratios=vs_one(rate[2], rate[1])),
    ]
    for count in (1, 2):
        for part, label in (("workers", "worker process(es)"), ("agent", "demo agent"),
                            ("redis", "redis-server")):
            figure.rows.append(Row(f"{count} worker(s): CPU per message, {label}", "ms",
                                   cpu(count, part)))
    figure.notes = [
        f"{ctx.rounds} rounds per worker count after a warm-up round; fresh sessions each "
        f"round. Workers: `python -m service worker`, WORKER_POLL_INTERVAL_SECONDS="
        f"{POLL_SECONDS} (default), 8 delivery threads each (Worker default), namespace "
        f"{NAMESPACE}.",
        "Timer: from the pipeline that marks all 100 running to the 500th `delivered` count "
        "(includes up to one poll interval before a worker notices); 'first -> last' starts "
        "at the first delivery; rate = 499 / that.",
        f"Pod = one demo agent process (demo_agent/agent.py) for all 100 sessions on port "
        f"{agent.port}; it and Redis share the 2 cores with the workers. CPU per message = "
        "user+system CPU (from /proc) over the timed interval / 500. No target: "
        "informational.",
    ]
    figure.data = {"rounds": {str(k): [dataclasses.asdict(r) for r in v]
                              for k, v in rounds.items()},
                   "worker_env": json.dumps(env)}
    return figure
