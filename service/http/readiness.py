"""What `GET /health` reports: Redis (reachable, and how close to `maxmemory`), the Kubernetes
API, and the workers (each reports every few seconds through Redis, with any loop of its own
that has stalled).

Only an unreachable Redis makes the API unready (503): every route needs it. Memory pressure,
an unreachable Kubernetes API or no live worker leave it serving reads and queueing chats, so
they make it `degraded` (200) — an operator's alert, not a reason to pull every replica out of
the Service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from service import __version__
from service.core.clock import iso, utc_now
from service.core.errors import SessionManagerError
from service.store import Store

KUBE_CHECK_SECONDS = 5.0  # readiness probes must not hammer the Kubernetes API
# used_memory / maxmemory from which Redis counts as under pressure: writes are refused at
# 1.0 (noeviction), and an AOF rewrite needs headroom on top.
MEMORY_PRESSURE_RATIO = 0.9
# A worker that has not reported for this long is not delivering (it reports every 5 s).
WORKER_SILENT_SECONDS = 30.0


class Readiness:
    def __init__(self, store: Store, kube_ping: Callable[[], object]) -> None:
        self.store = store
        self.kube_health = CachedProbe(kube_ping, KUBE_CHECK_SECONDS)

    def report(self) -> tuple[dict[str, Any], int]:
        body: dict[str, Any] = {"status": "healthy", "version": __version__}
        try:
            used, limit = self.store.memory()
            body["redis"] = "healthy"
            if limit:
                body["redis_memory"] = {"used_bytes": used, "max_bytes": limit,
                                        "ratio": round(used / limit, 3)}
                if used >= limit * MEMORY_PRESSURE_RATIO:
                    body["redis"] = "memory_pressure"
            body["workers"] = self._workers()
        except SessionManagerError:
            body.update(status="unhealthy", redis="unhealthy")
        body["kubernetes"] = "healthy" if self.kube_health() else "unhealthy"
        if body["status"] == "healthy" and (
                body["redis"] != "healthy" or body["kubernetes"] != "healthy"
                or body["workers"]["status"] != "healthy"):
            body["status"] = "degraded"  # still serves reads and queues chats
        body["timestamp"] = iso(utc_now())
        return body, (503 if body["status"] == "unhealthy" else 200)

    def _workers(self) -> dict[str, Any]:
        reports = self.store.coordination.worker_reports()
        now = time.time()
        live = {worker: report for worker, report in reports.items()
                if now - report["at"] <= WORKER_SILENT_SECONDS}
        stalled = sorted({loop for report in live.values() for loop in report["stalled"]})
        status = "healthy" if live and not stalled else ("stalled" if live else "none")
        summary: dict[str, Any] = {"status": status, "live": len(live)}
        if stalled:
            summary["stalled_loops"] = stalled
        if reports and not live:
            summary["last_report_seconds_ago"] = round(now - max(r["at"] for r in
                                                                 reports.values()), 1)
        return summary


class CachedProbe:
    """Ask at most every `seconds`."""

    def __init__(self, probe: Callable[[], object], seconds: float) -> None:
        self.probe = probe
        self.seconds = seconds
        self.checked_at = float("-inf")
        self.ok = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.checked_at >= self.seconds:
            try:
                self.probe()
                self.ok = True
            except SessionManagerError:
                self.ok = False
            self.checked_at = now
        return self.ok
