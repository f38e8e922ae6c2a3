"""Reading the session indexes: pages in creation order, the counts /metrics serves, expired
records, which ids have a record. Sorted sets scored by a creation counter, so a page is a
cursor read and a count a ZCARD: never a keyspace scan."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from service.core.transitions import STATUSES
from service.store.failures import UNAVAILABLE, unavailable
from service.store.keys import (
    ALL_INDEX,
    BUNDLED_INDEX,
    EXPIRY_INDEX,
    LISTED_FIELDS,
    PENDING_INDEX,
    POOL_INDEX,
    POOL_READY,
    RESTORE_INDEX,
    STATS,
    STATUS_INDEX_PREFIX,
    SWEEPING_INDEX,
    WAKE_HISTOGRAM,
    _reservation_key,
    record_key,
)


class SessionIndex:
    def __init__(self, db: Any) -> None:
        self.db = db  # client.Database

    def list_sessions(self, *, status: str | None, limit: int,
                      cursor: int | None) -> tuple[list[tuple[str, dict[str, str]]], int | None]:
        """One page in creation order; the cursor is the last entry's creation counter."""
        index = ALL_INDEX if status is None else STATUS_INDEX_PREFIX + status
        low = "-inf" if cursor is None else f"({cursor}"
        try:
            entries = self.db.redis.zrangebyscore(index, low, "+inf", start=0, num=limit + 1,
                                               withscores=True)
            page = entries[:limit]
            pipe = self.db.redis.pipeline(transaction=False)
            for session_id, _ in page:
                pipe.hmget(record_key(session_id), LISTED_FIELDS)
            rows = pipe.execute()
        except UNAVAILABLE as err:
            raise unavailable(err) from err
        # Records that expired but are not reaped yet are skipped, not shown half-empty.
        sessions = [(sid, dict(zip(LISTED_FIELDS, row, strict=True)))
                    for (sid, _), row in zip(page, rows, strict=True) if row[0] is not None]
        next_cursor = int(page[-1][1]) if len(entries) > limit else None
        return sessions, next_cursor

    def counts(self) -> dict[str, int]:
        """Every figure /metrics serves, in one round trip of a few commands (ZCARDs and the
        counters), whatever the number of sessions."""
        try:
            pipe = self.db.redis.pipeline(transaction=False)
            pipe.zcard(ALL_INDEX)
            for status in STATUSES:
                pipe.zcard(STATUS_INDEX_PREFIX + status)
            pipe.zcard(PENDING_INDEX)
            pipe.zcard(BUNDLED_INDEX)
            pipe.zcard(RESTORE_INDEX)
            pipe.zcard(SWEEPING_INDEX)
            pipe.hgetall(STATS)
            pipe.zcard(POOL_INDEX)
            pipe.zcard(POOL_READY)
            pipe.zrange(POOL_INDEX, 0, 0, withscores=True)
            (total, *by_status, pending, bundled, restores, sweeping, stats, pool, pool_ready,
             pool_oldest) = pipe.execute()
        except UNAVAILABLE as err:
            raise unavailable(err) from err
        counts = {"total": total, "sessions_with_pending_messages": pending,
                  "sessions_with_bundle": bundled, "restores_asked": restores,
                  "archives_sweeping": sweeping, "pool_size": pool, "pool_ready": pool_ready,
                  "pool_oldest_added_ms": int(pool_oldest[0][1]) if pool_oldest else 0}
        counts.update(dict(zip(STATUSES, by_status, strict=True)))
        for name in ("queued", "delivered", "failed", "forwarded", "pool_claims",
                     "pool_misses", "pool_refills"):
            key = name if name.startswith("pool_") else f"messages_{name}"
            counts[key] = int(stats.get(name, 0))
        return counts

    def expired_page(self, *, now: float, offset: int, limit: int) -> tuple[list[str], int]:
        """(ids whose record TTL has passed, entries scanned): the `limit` expiry-index
        entries due by `now` from `offset` on, those whose record is gone. Reaping removes
        entries, so a caller pages by advancing `offset` past what it could not reap."""
        due = self.db.call(self.db.redis.zrangebyscore, EXPIRY_INDEX, "-inf", int(now),
                         start=offset, num=limit)
        if not due:
            return [], 0
        exists = self.db.pipelined([("exists", record_key(sid)) for sid in due])
        return [sid for sid, found in zip(due, exists, strict=True) if not found], len(due)

    def known_ids(self, ids: list[str]) -> set[str]:
        """Which of these ids have a record or a create in progress."""
        if not ids:
            return set()
        try:
            pipe = self.db.redis.pipeline(transaction=False)
            for sid in ids:
                pipe.exists(record_key(sid), _reservation_key(sid))
            found = pipe.execute()
        except UNAVAILABLE as err:
            raise unavailable(err) from err
        return {sid for sid, n in zip(ids, found, strict=True) if n}

    def iter_id_pages(self, *, batch: int = 500) -> Iterator[list[str]]:
        cursor = None
        while True:
            page, cursor = self.list_ids_page(cursor, batch)
            if page:
                yield page
            if cursor is None:
                return

    def list_ids_page(self, cursor: int | None, limit: int) -> tuple[list[str], int | None]:
        low = "-inf" if cursor is None else f"({cursor}"
        entries = self.db.call(self.db.redis.zrangebyscore, ALL_INDEX, low, "+inf", start=0,
                             num=limit + 1, withscores=True)
        page = entries[:limit]
        return [sid for sid, _ in page], (int(page[-1][1]) if len(entries) > limit else None)

    def iter_status_pages(self, statuses: tuple[str, ...], *, batch: int = 500) -> \
            Iterator[list[str]]:
        """Ids in these statuses, a page at a time (each index in creation order)."""
        for status in statuses:
            low: str = "-inf"
            while True:
                entries = self.db.call(self.db.redis.zrangebyscore, STATUS_INDEX_PREFIX + status,
                                     low, "+inf", start=0, num=batch, withscores=True)
                if entries:
                    yield [sid for sid, _ in entries]
                if len(entries) < batch:
                    break
                low = f"({int(entries[-1][1])}"

    def wake_phases(self) -> dict[str, dict[str, int]]:
        """The wake phases' counters (lua/lib/wake.lua): phase -> {"count", "sum_ms", and a
        count per bucket bound in ms, cumulative}."""
        raw = self.db.call(self.db.redis.hgetall, WAKE_HISTOGRAM)
        phases: dict[str, dict[str, int]] = {}
        for field, value in raw.items():
            phase, _, name = field.partition(":")
            phases.setdefault(phase, {})[name] = int(value)
        return phases
