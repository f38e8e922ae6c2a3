"""The warm pool in Redis: sessions created ahead of their users, claimed by a create in one
step (claim_pooled.lua), and what the pool's keeper reads to recycle and refill it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.core.clock import iso
from service.store.keys import (
    ALL_INDEX,
    BUNDLED_INDEX,
    CREATED_SEQ,
    EXPIRY_INDEX,
    POOL_INDEX,
    POOL_READY,
    STATS,
    STATUS_INDEX_PREFIX,
    _reservation_key,
    events_key,
    record_key,
    work_key,
)

POOL_FIELDS = ("status", "reason", "bundle_version", "created_at")


class SessionPool:
    def __init__(self, db: Any) -> None:
        self.db = db  # client.Database

    def add(self, session_id: str, *, now: datetime, bundle_version: str,
            bundle_kinds: list[tuple[str, str]], record_ttl_seconds: int) -> None:
        """Record a session whose bundle was just applied for the pool (its id reserved)."""
        fields = {
            "user_id": "", "status": "created", "reason": "", "created_at": iso(now),
            "last_activity": iso(now), "token": "", "paused": "0", "replicas": "0",
            "ready_replicas": "0", "bundle_version": bundle_version,
            "bundle_kinds": ",".join(f"{api} {kind}" for api, kind in bundle_kinds),
            "applied_at": str(int(now.timestamp())),
        }
        added = self.db.run(
            "create_pooled",
            [record_key(session_id), POOL_INDEX, work_key(session_id),
             _reservation_key(session_id), CREATED_SEQ],
            [session_id, record_ttl_seconds, int(now.timestamp() * 1000),
             *(item for pair in fields.items() for item in pair)])
        if not added:
            raise RuntimeError(f"session {session_id} already exists")

    def claim(self, *, user_id: str, token_hash: str, now: datetime,
              bundle_version: str) -> dict[str, str] | None:
        """The oldest ready pooled session on `bundle_version`, now the user's (its id,
        created_at, replicas, ready_replicas), or None: a miss."""
        found = self.db.run(
            "claim_pooled",
            [POOL_READY, POOL_INDEX, ALL_INDEX, STATUS_INDEX_PREFIX, EXPIRY_INDEX,
             BUNDLED_INDEX, CREATED_SEQ, STATS],
            [record_key(""), work_key(""), events_key(""), user_id, token_hash, iso(now),
             self.db.session_ttl, int(now.timestamp()) + self.db.session_ttl,
             self.db.activity_ttl, bundle_version, int(now.timestamp() * 1000)])
        if not found:
            return None
        session_id, created_at, replicas, ready = found
        return {"uuid": session_id, "created_at": created_at, "replicas": replicas,
                "ready_replicas": ready}

    def members(self) -> dict[str, dict[str, Any]]:
        """Every pooled session: id -> its status, reason, bundle version, when it was added
        (epoch ms) and whether its pod is up."""
        pipe = self.db.redis.pipeline(transaction=False)
        pipe.zrange(POOL_INDEX, 0, -1, withscores=True)
        pipe.zrange(POOL_READY, 0, -1)
        entries, ready = self.db.call(pipe.execute)
        records = self.db.pipelined([("hgetall", record_key(sid)) for sid, _ in entries])
        members = {}
        for (session_id, added_ms), record in zip(entries, records, strict=True):
            members[session_id] = {
                "added_ms": added_ms, "ready": session_id in set(ready),
                **{field: (record or {}).get(field, "") for field in POOL_FIELDS},
                "exists": bool(record)}
        return members

    def drop(self, session_id: str) -> None:
        """Out of the pool's indexes (its record gone, or about to be deleted)."""
        pipe = self.db.redis.pipeline(transaction=False)
        pipe.zrem(POOL_INDEX, session_id)
        pipe.zrem(POOL_READY, session_id)
        self.db.call(pipe.execute)

    def count_refill(self) -> None:
        self.db.call(self.db.redis.hincrby, STATS, "pool_refills", 1)
