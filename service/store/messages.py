"""A session's messages: admission (dedupe, backlog and byte budget, forward or queue), the
claim under the session's delivery lease, the settle of an attempt, the conversation as stored,
and failing what a failed session still holds. Each change is one Lua script that also keeps
the work set (what the scalers read) and the event log in step."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from service.core.clock import iso, now_ms, utc_now
from service.core.errors import RedisUnavailable
from service.store.failures import UNAVAILABLE, unavailable
from service.store.keys import (
    BUNDLED_INDEX,
    EXPIRY_INDEX,
    FAILING_INDEX,
    PENDING_INDEX,
    RESTORE_INDEX,
    SETTLED_CHANNEL,
    STATS,
    WORK_CHANNEL,
    _delivery_lease,
    _inflight_key,
    _message_ids_key,
    _messages_key,
    events_key,
    queue_key,
    record_key,
    refresh_hold_key,
    work_key,
)

SETTLE_RETRY_SECONDS = 0.5  # how often an outcome is offered again while Redis is away


class Messages:
    def __init__(self, db: Any) -> None:
        self.db = db  # client.Database

    def admit_chat(self, session_id: str, *, message_id: str, message: dict,
                   max_queued: int, max_kept: int, allow_forward: bool,
                   lease_seconds: int, budget_bytes: int = 0,
                   bundle_version: str = "", hold_seconds: float = 30,
                   history_limits: tuple[int, int] = (0, 0)) -> tuple[str, dict]:
        """Returns (mode, info): mode is forward|queued|duplicate|backlog|budget|gone|
        terminating. A queued message's info["needs"] is "restore" (archived: asked in the
        restore index), "refresh" (asleep on a bundle other than `bundle_version`) or "";
        when not "", the scalers have not been told (the caller does, once it is applied).
        A forwarded message's info carries the conversation for its pod ("history", JSON text
        bounded by `history_limits`: messages, bytes) and "user_id", read in the same step.
        A duplicate's info["message"] is the message stored under that id, with its reply.
        An admitted message also counts as activity (TTLs and KEDA's activity key)."""
        token = secrets.token_hex(8)
        now = utc_now()
        result = self.db.run(
            "admit_chat",
            [record_key(session_id), queue_key(session_id), _inflight_key(session_id),
             _messages_key(session_id), _message_ids_key(session_id), PENDING_INDEX,
             _delivery_lease(session_id), STATS, EXPIRY_INDEX, work_key(session_id),
             events_key(session_id), BUNDLED_INDEX, RESTORE_INDEX,
             refresh_hold_key(session_id)],
            [session_id, message_id, json.dumps(message), int(now.timestamp() * 1000),
             max_queued, max_kept, token, lease_seconds * 1000, "1" if allow_forward else "0",
             iso(now), self.db.session_ttl, int(now.timestamp()) + self.db.session_ttl,
             WORK_CHANNEL, budget_bytes, bundle_version, int(hold_seconds * 1000),
             *history_limits],
        )
        mode = result[0]
        if mode in ("forward", "queued"):
            return mode, {"seq": int(result[1]), "envelope": result[2],
                          "paused": result[3] == "1", "lease_token": token,
                          "status": result[4], "needs": result[5], "history": result[6],
                          "user_id": result[7]}
        if mode == "duplicate":
            message = json.loads(result[2]) if result[2] else {}
            if message:
                message["reply"] = json.loads(result[4]) if result[4] else None
            return mode, {"seq": int(result[1]), "message": message, "status": result[3]}
        if mode == "backlog":
            return mode, {"backlog": int(result[1])}
        if mode == "budget":
            return mode, {"kept_bytes": int(result[1])}
        return mode, {}

    def claim_delivery(self, session_id: str, *, lease_seconds: int, max_attempts: int,
                       history_limits: tuple[int, int] = (0, 0)) -> dict | None:
        """The next message to deliver under the session's lease, or None; with it, in the
        same step, the conversation for its pod ("history", JSON text bounded by
        `history_limits`) and "user_id". A message that had `max_attempts` claims and no
        outcome is failed on the way."""
        token = secrets.token_hex(8)
        result = self.db.run(
            "claim_delivery",
            [record_key(session_id), queue_key(session_id), _inflight_key(session_id),
             _messages_key(session_id), PENDING_INDEX, _delivery_lease(session_id),
             work_key(session_id), events_key(session_id), STATS],
            [session_id, token, lease_seconds * 1000, now_ms(), self.db.activity_ttl,
             max_attempts, iso(utc_now()), SETTLED_CHANNEL, *history_limits],
        )
        if result[0] != "claimed":
            return None
        return {"envelope": result[1], "message": json.loads(result[2]), "lease_token": token,
                "history": result[3], "user_id": result[4]}

    def finish_delivery(self, session_id: str, *, envelope: str, lease_token: str,
                        delivered: bool, reply_or_error: str, max_attempts: int,
                        retry_in_seconds: float, forwarded: bool = False,
                        budget_bytes: int = 0, not_sent: bool = False,
                        retry_for_seconds: float = 0, warning: str = "",
                        first_byte_ms: int = 0) -> dict:
        """Settle or reschedule an attempt; a delivery also counts as activity (and, when
        `forwarded`, as a chat answered directly by the pod). With retry_for_seconds, an
        outcome already had is not given up to a Redis outage that short: until it is
        recorded, the message stays in flight and its session's later messages wait behind
        the lease."""
        deadline = time.monotonic() + retry_for_seconds
        while True:
            try:
                return self._finish_delivery(
                    session_id, envelope, lease_token, delivered, reply_or_error,
                    max_attempts, retry_in_seconds, forwarded, budget_bytes, not_sent, warning,
                    first_byte_ms)
            except RedisUnavailable:
                if time.monotonic() + SETTLE_RETRY_SECONDS > deadline:
                    raise
                time.sleep(SETTLE_RETRY_SECONDS)

    def _finish_delivery(self, session_id: str, envelope: str, lease_token: str,
                         delivered: bool, reply_or_error: str, max_attempts: int,
                         retry_in_seconds: float, forwarded: bool, budget_bytes: int,
                         not_sent: bool, warning: str, first_byte_ms: int) -> dict:
        moment = utc_now()
        now = int(moment.timestamp() * 1000)
        stored = self.db.run(
            "finish_delivery",
            [record_key(session_id), queue_key(session_id), _inflight_key(session_id),
             _messages_key(session_id), PENDING_INDEX, _delivery_lease(session_id), STATS,
             EXPIRY_INDEX, work_key(session_id), _message_ids_key(session_id),
             events_key(session_id), BUNDLED_INDEX],
            [session_id, envelope, lease_token, "delivered" if delivered else "failed",
             reply_or_error, iso(moment), now, max_attempts,
             now + int(retry_in_seconds * 1000), self.db.session_ttl,
             int(moment.timestamp()) + self.db.session_ttl, self.db.activity_ttl,
             "forwarded" if forwarded else "", budget_bytes, "1" if not_sent else "0",
             SETTLED_CHANNEL, warning, first_byte_ms],
        )
        return json.loads(stored) if stored else {}

    def due_sessions(self, *, limit: int = 100) -> list[str]:
        return self.db.call(self.db.redis.zrangebyscore, PENDING_INDEX, "-inf", now_ms(),
                          start=0, num=limit)

    def queue_length(self, session_id: str) -> int:
        try:
            pipe = self.db.redis.pipeline(transaction=False)
            pipe.llen(queue_key(session_id))
            pipe.llen(_inflight_key(session_id))
            queued, inflight = pipe.execute()
        except UNAVAILABLE as err:
            raise unavailable(err) from err
        return int(queued) + int(inflight)

    def message(self, session_id: str, seq: int, *, max_kept: int) -> dict | None:
        """One message of the conversation with its reply; None once trimmed or deleted."""
        messages, _ = self.list_messages(session_id, after=seq - 1, limit=1, max_kept=max_kept)
        return messages[0] if messages and messages[0].get("seq") == seq else None

    def list_messages(self, session_id: str, *, after: int, limit: int,
                      max_kept: int) -> tuple[list[dict], int | None]:
        last = int(self.db.call(self.db.redis.hget, record_key(session_id), "msg_seq") or 0)
        first = max(after + 1, last - max_kept + 1, 1)
        seqs = list(range(first, min(last, first + limit - 1) + 1))
        if not seqs:
            return [], None
        fields = [f for seq in seqs for f in (str(seq), f"{seq}:reply")]
        values = self.db.call(self.db.redis.hmget, _messages_key(session_id), fields)
        messages = []
        for index in range(0, len(values), 2):
            stored, reply = values[index], values[index + 1]
            if stored is None:
                continue
            message = json.loads(stored)
            message["reply"] = json.loads(reply) if reply else None
            messages.append(message)
        return messages, (seqs[-1] if seqs[-1] < last else None)

    def failing_since(self, *, before_ms: int, offset: int = 0, limit: int) -> list[str]:
        """Sessions unhealthy (failed, or between two crashes) since before `before_ms`."""
        return self.db.call(self.db.redis.zrangebyscore, FAILING_INDEX, "-inf", before_ms,
                          start=offset, num=limit)

    def fail_pending(self, session_id: str, *, before_ms: int, grace_seconds: int) -> int:
        """Fail the pending messages of a session unhealthy since before `before_ms` (see
        fail_pending.lua); returns how many were failed."""
        return int(self.db.run(
            "fail_pending",
            [record_key(session_id), queue_key(session_id), _inflight_key(session_id),
             _messages_key(session_id), PENDING_INDEX, _delivery_lease(session_id),
             work_key(session_id), events_key(session_id), STATS, FAILING_INDEX],
            [session_id, before_ms, iso(utc_now()), self.db.activity_ttl, SETTLED_CHANNEL,
             grace_seconds]))
