"""Prometheus exposition of the figures `/metrics` serves as JSON, read from Redis counters.

The truth lives in Redis (shared by every replica), so a scrape of any replica sees the same
numbers and the cost does not grow with the number of sessions.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from service.core.transitions import STATUSES
from service.store import Store


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

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
