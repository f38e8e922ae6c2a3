"""Rate-limit overhead: GET /session/<id>/status with the limiter on and off, same run.

Two service instances that differ only in RATE_LIMITS_ENABLED (the enabled one allows
1000000/minute per route, so it counts every request and refuses none). Throughput with 8
clients, alternating which goes first. Redis round trips per request come from INFO stats:
`total_reads_processed` counts the reads Redis did from client sockets — one per round trip,
a pipeline included. `total_commands_processed` is reported too, but it also counts the
commands a Lua script runs (the limiter's one EVALSHA shows as EVALSHA + INCR + EXPIRE).
"""

from __future__ import annotations

from . import load
from .harness import Context, create_sessions_one_by_one
from .profile import profiled
from .report import Figure, Row, Target

SESSIONS = 50
CONNECTIONS = 8


def _stats(ctx: Context) -> tuple[int, int]:
    info = ctx.redis_info("stats")
    return int(info["total_reads_processed"]), int(info["total_commands_processed"])


def ratelimit(ctx: Context) -> Figure:
    figure = Figure("ratelimit", "6. Rate-limit overhead on GET /session/<id>/status")
    ctx.flush()
    on, off = ctx.service("limits-on"), ctx.service("limits-off")
    sessions = create_sessions_one_by_one(ctx.store(), SESSIONS)
    paths = [f"/session/{sid}/status" for sid in sessions]
    headers = {"X-API-Key": ctx.api_key}
    seconds = 2 if ctx.quick else 4

    def hit(proc, duration: int) -> tuple[load.LoadResult, float, float]:
        reads, commands = _stats(ctx)
        cpu = ctx.cpu(proc)
        result = load.run(proc.port, "GET", paths, headers=headers, connections=CONNECTIONS,
                          seconds=duration)
        cpu2 = ctx.cpu(proc)
        reads2, commands2 = _stats(ctx)
        result.cpu_ms = [(b - a) * 1000 / max(1, result.requests)
                         for a, b in zip(cpu, cpu2, strict=True)]
        # The INFO call itself is one read and one command.
        return (result, (reads2 - reads - 1) / result.requests,
                (commands2 - commands - 1) / result.requests)

    ctx.settle()
    hit(on, 1)
    hit(off, 1)
    results: dict[str, list[tuple[load.LoadResult, float, float]]] = {"on": [], "off": []}
    for index in range(ctx.rounds):
        order = [("on", on), ("off", off)]
        for name, proc in order if index % 2 == 0 else reversed(order):
            results[name].append(hit(proc, seconds))
        ctx.check_alive()
    for name, proc in (("on", on), ("off", off)):
        with profiled(ctx.profile_dir, f"status-limits-{name}", proc.pid, seconds):
            hit(proc, seconds)

    def col(name: str, field: int, attr: str | None = None) -> list[float]:
        values = [r[field] for r in results[name]]
        return [getattr(v, attr) for v in values] if attr else values

    rps_on, rps_off = col("on", 0, "rps"), col("off", 0, "rps")
    rt_on, rt_off = col("on", 1), col("off", 1)
    cmd_on, cmd_off = col("on", 2), col("off", 2)
    errors = sum(r[0].errors for rs in results.values() for r in rs)
    figure.rows = [
        Row("limits on: status req/s", "req/s", rps_on, baseline="off",
            ratios=[a / b for a, b in zip(rps_on, rps_off, strict=True)],
            target=Target(">=", 0.9, on="ratio")),
        Row("limits off: status req/s", "req/s", rps_off),
        Row("latency, limits on", "ms", col("on", 0, "p50_ms"), p95s=col("on", 0, "p95_ms")),
        Row("latency, limits off", "ms", col("off", 0, "p50_ms"), p95s=col("off", 0, "p95_ms")),
        Row("service CPU per request, on", "ms", [r[0].cpu_ms[0] for r in results["on"]],
            baseline="off", ratios=[a[0].cpu_ms[0] / b[0].cpu_ms[0] for a, b in
                                    zip(results["on"], results["off"], strict=True)]),
        Row("service CPU per request, off", "ms", [r[0].cpu_ms[0] for r in results["off"]]),
        Row("redis-server CPU per request, on", "ms", [r[0].cpu_ms[1] for r in results["on"]]),
        Row("redis-server CPU per request, off", "ms",
            [r[0].cpu_ms[1] for r in results["off"]]),
        Row("Redis round trips/request, on", "", rt_on),
        Row("Redis round trips/request, off", "", rt_off),
        Row("limiter round trips/request (on - off)", "",
            [a - b for a, b in zip(rt_on, rt_off, strict=True)], target=Target("<=", 1.05)),
        Row("Redis commands/request incl. inside Lua (on - off)", "",
            [a - b for a, b in zip(cmd_on, cmd_off, strict=True)]),
    ]
    figure.notes = [
        f"{ctx.rounds} rounds x {seconds} s per side, {CONNECTIONS} keep-alive connections, "
        f"load tool: {results['on'][0][0].tool}, requests rotate over {SESSIONS} sessions; "
        f"{errors} HTTP errors (a 429 would count).",
        "Throughput cost = 1 - ratio; target ratio ≥ 0.90 (cost ≤ 10%). The round-trip "
        "target is ≤ 1 per request (1.05 allows for background traffic such as the redis "
        "client's idle health-check PINGs).",
        "Round trips from Δ total_reads_processed / requests; commands from Δ "
        "total_commands_processed (which counts each command a script runs).",
    ]
    return figure
