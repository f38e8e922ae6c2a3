"""/metrics and /sessions latency at 1k, 10k and 100k sessions (they must stay flat).

Sessions are added in bulk through `Store.create_session` (harness.create_sessions); after each
size, every round sends sequential requests on one keep-alive connection, alternating
GET /metrics and GET /sessions?limit=100 (the first page, which the API serves by default).
"""

from __future__ import annotations

import json
import time

from .harness import Client, Context, create_sessions, percentile
from .profile import profiled
from .report import Figure, Row, Target

SIZES = (1_000, 10_000, 100_000)
TARGET_METRICS_MS = 2.0
TARGET_SESSIONS_MS = 10.0


def _label(size: int) -> str:
    return f"{size // 1000}k"


def metrics(ctx: Context) -> Figure:
    figure = Figure("metrics", "3. GET /metrics and GET /sessions (page of 100) vs sessions")
    ctx.flush()
    service = ctx.service("limits-on")
    store = ctx.store()
    client = Client(service.port, {"X-API-Key": ctx.api_key})
    per_round = 40 if ctx.quick else 150
    series: dict[str, list[dict]] = {"metrics": [], "sessions": []}
    metric_rows, session_rows = [], []
    created = 0
    creation_seconds = []
    for size in SIZES:
        started = time.perf_counter()
        create_sessions(store, size - created)
        creation_seconds.append(round(time.perf_counter() - started, 2))
        created = size
        # Sanity: both routes see every session.
        assert client.json("GET", "/metrics")["total_sessions"] == size
        page = client.json("GET", "/sessions?limit=100")
        assert page["total"] == size and len(page["sessions"]) == 100, page["total"]
        ctx.settle()
        for _ in range(50):  # warm-up after the bulk load
            client.request("GET", "/metrics")
            client.request("GET", "/sessions?limit=100")
        rounds: dict[str, list[list[float]]] = {"metrics": [], "sessions": []}
        for _ in range(ctx.rounds):
            samples: dict[str, list[float]] = {"metrics": [], "sessions": []}
            for _ in range(per_round):
                for key, path in (("metrics", "/metrics"), ("sessions", "/sessions?limit=100")):
                    status, payload, elapsed = client.request("GET", path)
                    if status != 200:
                        raise RuntimeError(f"{path}: HTTP {status} {payload[:200]!r}")
                    samples[key].append(elapsed * 1000)
            for key in rounds:
                rounds[key].append(samples[key])
            ctx.check_alive()
        for key, rows, target in (("metrics", metric_rows, TARGET_METRICS_MS),
                                  ("sessions", session_rows, TARGET_SESSIONS_MS)):
            medians = [percentile(r, 50) for r in rounds[key]]
            p95s = [percentile(r, 95) for r in rounds[key]]
            route = "/metrics" if key == "metrics" else "/sessions?limit=100"
            rows.append(Row(f"{route} @ {_label(size)}", "ms", medians, p95s=p95s,
                            target=Target("<=", target, "ms")))
            series[key].append({"size": size, "median": rows[-1].median, "p95": rows[-1].p95,
                                "min": min(medians), "max": max(medians)})
    for key, path in (("metrics", "/metrics"), ("sessions", "/sessions?limit=100")):
        with profiled(ctx.profile_dir, f"{key}-{_label(SIZES[-1])}", service.pid, 4):
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                client.request("GET", path)
    client.close()
    for rows in (metric_rows, session_rows):
        first, last = rows[0], rows[-1]
        last.ratios = [b / a for a, b in zip(first.values, last.values, strict=True)]
        last.baseline = _label(SIZES[0])
    figure.rows = metric_rows + session_rows
    raw_size = len(json.dumps(page).encode())
    figure.notes = [
        f"{ctx.rounds} rounds x {per_round} requests per route and size, one keep-alive "
        "client, sequential (latency = client-measured round trip through gunicorn).",
        "Sessions created with Store.create_session (create_session.lua) on a pipeline, "
        f"1000 per batch; batches took {creation_seconds} s for the three steps.",
        f"Ratio on the 100k rows = 100k median / 1k median (flat ≈ 1.0). A 100-session page "
        f"is {raw_size:,} bytes of JSON.",
        "Plot: metrics_latency.png in the results directory.",
    ]
    figure.data = {"sizes": list(SIZES), "metrics": series["metrics"],
                   "sessions": series["sessions"],
                   "targets": {"metrics": TARGET_METRICS_MS, "sessions": TARGET_SESSIONS_MS}}
    return figure
