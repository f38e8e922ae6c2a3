"""Reading sessions in bulk: a page of `/sessions`, and the figures `/metrics` serves. Both
read the per-status indexes and counters, never the keyspace."""

from __future__ import annotations

import time
from typing import Any

from service.core.clock import iso, utc_now
from service.core.errors import InvalidField
from service.core.transitions import ACTIVE_STATUSES, STATUSES
from service.sessions.results import Result
from service.store import Store


def public_session(session_id: str, record: dict[str, str]) -> dict[str, Any]:
    return {"uuid": session_id, "user_id": record["user_id"], "status": record["status"],
            "created_at": record["created_at"], "last_activity": record["last_activity"]}


class Listing:
    def __init__(self, store: Store, *, warm_pool_target: int = 0) -> None:
        self.store = store
        self.warm_pool_target = warm_pool_target

    def page(self, *, status: str | None, limit: int, cursor: int | None) -> Result:
        if status is not None and status not in STATUSES:
            raise InvalidField(f"status must be one of {', '.join(STATUSES)}")
        page, next_cursor = self.store.index.list_sessions(status=status, limit=limit,
                                                           cursor=cursor)
        counts = self.store.index.counts()
        total = counts["total"] if status is None else counts[status]
        return Result(200, {"total": total,
                            "sessions": [public_session(sid, rec) for sid, rec in page],
                            "next_cursor": next_cursor})

    def figures(self) -> dict[str, Any]:
        counts = self.store.index.counts()
        return {
            "total_sessions": counts["total"],
            "active_sessions": sum(counts[s] for s in ACTIVE_STATUSES),
            "sleeping_sessions": counts["sleeping"],
            "archived_sessions": counts["archived"],
            "failed_sessions": counts["failed"],
            "sessions_by_status": {s: counts[s] for s in STATUSES},
            "sessions_with_pending_messages": counts["sessions_with_pending_messages"],
            "messages": {k[len("messages_"):]: v for k, v in counts.items()
                         if k.startswith("messages_")},
            "warm_pool": self._pool(counts),
            "timestamp": iso(utc_now()),
        }

    def _pool(self, counts: dict[str, int]) -> dict[str, int]:
        oldest = counts["pool_oldest_added_ms"]
        return {"target": self.warm_pool_target, "size": counts["pool_size"],
                "ready": counts["pool_ready"], "claims": counts["pool_claims"],
                "misses": counts["pool_misses"], "refills": counts["pool_refills"],
                "oldest_age_seconds": int(time.time() - oldest / 1000) if oldest else 0}
