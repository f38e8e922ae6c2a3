"""Prometheus exposition of the figures `/metrics` serves as JSON, read from Redis counters.

The truth lives in Redis (shared by every replica), so a scrape of any replica sees the same
numbers and the cost does not grow with the number of sessions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from service.core.transitions import STATUSES
from service.store import Store


class StoreCollector(Collector):
    def __init__(self, store: Store, *, warm_pool_target: int = 0) -> None:
        self.store = store
        self.warm_pool_target = warm_pool_target

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        counts = self.store.index.counts()
        sessions = GaugeMetricFamily("session_manager_sessions", "Sessions by status",
                                     labels=["status"])
        for status in STATUSES:
            sessions.add_metric([status], counts[status])
        yield sessions
        yield GaugeMetricFamily("session_manager_sessions_total_current",
                                "Sessions with a record", value=counts["total"])
        yield GaugeMetricFamily("session_manager_sessions_with_pending_messages",
                                "Sessions with undelivered messages",
                                value=counts["sessions_with_pending_messages"])
        yield GaugeMetricFamily("session_manager_sessions_with_bundle",
                                "Sessions whose objects are in the cluster (not archived)",
                                value=counts["sessions_with_bundle"])
        yield GaugeMetricFamily("session_manager_restores_asked",
                                "Archived sessions a chat or a wake asked back, not yet restored",
                                value=counts["restores_asked"])
        yield GaugeMetricFamily("session_manager_archives_sweeping",
                                "Archived sessions whose objects are still being deleted "
                                "(waiting on a finalizer: KEDA's, on the ScaledObject)",
                                value=counts["archives_sweeping"])
        messages = CounterMetricFamily("session_manager_messages", "Chat messages by outcome",
                                       labels=["outcome"])
        for outcome in ("queued", "delivered", "failed", "forwarded"):
            messages.add_metric([outcome], counts[f"messages_{outcome}"])
        yield messages
        yield from self._warm_pool(counts)
        yield self._wake_phases()

    def _wake_phases(self) -> HistogramMetricFamily:
        """Seconds from a wake's ask (a create, a wake, a restore, a pool claim) to each
        phase: scaled, scheduled, image, started, ready, first_byte (lua/lib/wake.lua)."""
        histogram = HistogramMetricFamily(
            "session_manager_wake_phase_seconds",
            "Seconds from a wake's ask to each of its phases", labels=["phase"])
        for phase, counts in sorted(self.store.index.wake_phases().items()):
            bounds = sorted(int(name) for name in counts if name.isdigit())
            buckets = [(f"{bound / 1000:g}", counts[str(bound)]) for bound in bounds]
            buckets.append(("+Inf", counts.get("count", 0)))
            histogram.add_metric([phase], buckets, sum_value=counts.get("sum_ms", 0) / 1000)
        return histogram

    def _warm_pool(self, counts: dict[str, int]
                   ) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        pool = {"size": counts["pool_size"], "ready": counts["pool_ready"],
                "claims": counts["pool_claims"], "misses": counts["pool_misses"],
                "refills": counts["pool_refills"],
                "oldest_added_ms": counts["pool_oldest_added_ms"]}
        sessions = GaugeMetricFamily("session_manager_warm_pool_sessions",
                                     "Sessions in the warm pool, by whether their pod is up",
                                     labels=["state"])
        sessions.add_metric(["ready"], pool["ready"])
        sessions.add_metric(["warming"], pool["size"] - pool["ready"])
        yield sessions
        yield GaugeMetricFamily("session_manager_warm_pool_target",
                                "WARM_POOL_SIZE", value=self.warm_pool_target)
        for name, what in (("claims", "Creates answered from the warm pool"),
                           ("misses", "Creates that found the warm pool empty"),
                           ("refills", "Sessions added to the warm pool")):
            yield CounterMetricFamily(f"session_manager_warm_pool_{name}", what,
                                      value=pool[name])
        age = (time.time() * 1000 - pool["oldest_added_ms"]) / 1000 \
            if pool["oldest_added_ms"] else 0
        yield GaugeMetricFamily("session_manager_warm_pool_oldest_age_seconds",
                                "Age of the oldest session in the warm pool", value=age)
