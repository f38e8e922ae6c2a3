"""Redis: the only package that knows key names (`keys`).

Session records are hashes with a TTL refreshed on activity. Indexes are sorted sets scored by
a creation counter (so `/sessions` pages by cursor and `/metrics` reads ZCARDs: O(1)/O(log n)
in the number of sessions, never a keyspace scan). Every multi-key change is one Lua script.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from .. import names
from ..errors import RedisUnavailable
from ..transitions import STATUSES, Actor, lua_table
from .coordination import Coordination
from .events import DEFAULT_EVENTS_KEPT, EventLog
from .failures import UNAVAILABLE, unavailable
from .keys import (
    ACTIVE_MEMBER,
    ALL_INDEX,
    APPLIED_KINDS,
    BUNDLED_INDEX,
    CREATED_SEQ,
    EVENTS_CHANNEL,
    EXPIRY_INDEX,
    FAILING_INDEX,
    LISTED_FIELDS,
    PENDING_INDEX,
    RESTORE_INDEX,
    SETTLED_CHANNEL,
    STATS,
    STATUS_INDEX_PREFIX,
    SWEEPING_INDEX,
    WORK_CHANNEL,
    _data_keys,
    _delivery_lease,
    _inflight_key,
    _message_ids_key,
    _messages_key,
    _reservation_key,
    events_key,
    queue_key,
    record_key,
    refresh_hold_key,
    work_key,
)
from .keys import (
    WORKER_REPORTS as WORKER_REPORTS,
)
from .keys import (
    keda_keys as keda_keys,
)
from .tiers import BundleTiers

ACTIVE_STATUSES = ("created", "waking", "running")
DEFAULT_MAX_CONNECTIONS = 100  # per process (REDIS_MAX_CONNECTIONS)
SETTLE_RETRY_SECONDS = 0.5  # how often an outcome is offered again while Redis is away

_LUA = Path(__file__).resolve().parent.parent / "lua"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class Store(EventLog, BundleTiers, Coordination):
    def __init__(self, client: redis.Redis, *, session_ttl_seconds: int,
                 activity_ttl_seconds: int, events_kept: int = DEFAULT_EVENTS_KEPT) -> None:
        self.redis = client
        self.session_ttl = session_ttl_seconds
        self.activity_ttl = activity_ttl_seconds
        # Each script is sent with the shared functions of lua/lib/ in front of it, and the
        # constants they read.
        library = (f"local EVENTS_KEPT, EVENTS_CHANNEL = {int(events_kept)}, "
                   f"'{EVENTS_CHANNEL}'\nlocal TRANSITIONS = {lua_table()}\n")
        library += "".join(path.read_text() + "\n"
                           for path in sorted((_LUA / "lib").glob("*.lua")))
        self._scripts = {
            path.stem: client.register_script(library + path.read_text())
            for path in _LUA.glob("*.lua")
        }

    @classmethod
    def from_url(cls, url: str, *, socket_timeout_seconds: float, session_ttl_seconds: int,
                 activity_ttl_seconds: int, events_kept: int = DEFAULT_EVENTS_KEPT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Store:
        # A bounded pool that makes a caller wait for a free connection (up to the socket
        # timeout) rather than fail: under gevent a thousand requests may want Redis at the
        # same instant (one event fanned out to every open stream), and redis-py's default
        # pool raises past 100 connections.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=socket_timeout_seconds,
            socket_timeout=socket_timeout_seconds,
            socket_connect_timeout=socket_timeout_seconds, health_check_interval=30,
            decode_responses=True,
        )
        return cls(redis.Redis(connection_pool=pool), session_ttl_seconds=session_ttl_seconds,
                   activity_ttl_seconds=activity_ttl_seconds, events_kept=events_kept)

    def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return self._scripts[script](keys=keys, args=args)
        except UNAVAILABLE as err:
            raise unavailable(err) from err

    def ping(self) -> None:
        try:
            self.redis.ping()
        except UNAVAILABLE as err:
            raise unavailable(err) from err

    def memory(self) -> tuple[int, int]:
        """(used_memory, maxmemory) in bytes; maxmemory 0 means no limit."""
        info = self._call(self.redis.info, "memory")
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))

    # -- sessions ------------------------------------------------------------------------

    def reserve_id(self, *, seconds: int = 600) -> str:
        """A fresh id no record or other create holds; the reservation marks a create in
        progress (the reconciler leaves such bundles alone)."""
        for _ in range(8):
            session_id = names.new_session_id()
            try:
                if self.redis.exists(record_key(session_id)):
                    continue
                if self.redis.set(_reservation_key(session_id), "1", nx=True, ex=seconds):
                    return session_id
            except UNAVAILABLE as err:
                raise unavailable(err) from err
        raise RuntimeError("could not allocate a unique session id")

    def note_applied_kinds(self, kinds: list[tuple[str, str]]) -> None:
        """Remember (apiVersion, kind) pairs a bundle is about to be applied with."""
        if kinds:
            self._call(self.redis.sadd, APPLIED_KINDS, *(f"{api} {kind}" for api, kind in kinds))

    def applied_kinds(self) -> list[tuple[str, str]]:
        """Every (apiVersion, kind) a bundle was ever applied with, sorted."""
        members = self._call(self.redis.smembers, APPLIED_KINDS)
        return sorted(tuple(member.split(" ", 1)) for member in members)  # type: ignore[misc]

    def release_id(self, session_id: str) -> None:
        self._call(self.redis.delete, _reservation_key(session_id))

    def is_reserved(self, session_id: str) -> bool:
        return bool(self._call(self.redis.exists, _reservation_key(session_id)))

    def create_session(self, session_id: str, *, user_id: str, token_hash: str,
                       now: datetime, bundle_version: str = "",
                       bundle_kinds: list[tuple[str, str]] = ()) -> dict[str, str]:
        fields = {
            "user_id": user_id, "status": "created", "reason": "", "created_at": iso(now),
            "last_activity": iso(now), "token": token_hash, "paused": "0",
            "replicas": "0", "ready_replicas": "0", "bundle_version": bundle_version,
            "bundle_kinds": ",".join(f"{api} {kind}" for api, kind in bundle_kinds),
            "applied_at": str(int(now.timestamp())),
        }
        flat = [item for pair in fields.items() for item in pair]
        created = self._run(
            "create_session",
            [record_key(session_id), ALL_INDEX, STATUS_INDEX_PREFIX + "created", EXPIRY_INDEX,
             work_key(session_id), _reservation_key(session_id), CREATED_SEQ, BUNDLED_INDEX],
            [session_id, self.session_ttl, self.activity_ttl,
             int(now.timestamp()) + self.session_ttl, *flat],
        )
        if not created:
            raise RuntimeError(f"session {session_id} already exists")
        return fields

    def get_session(self, session_id: str) -> dict[str, str] | None:
        record = self._call(self.redis.hgetall, record_key(session_id))
        return record or None

    def pod_address(self, session_id: str) -> str | None:
        """The ready pod's IP, as the status watch last saw it."""
        return self._call(self.redis.hget, record_key(session_id), "pod_ip") or None

    def set_status(self, session_id: str, status: str, *, actor: Actor, reason: str = "",
                   **fields: Any) -> tuple[str | None, bool]:
        """(the status before or None when the record is gone, whether `status` was written):
        written only when `actor` may make that move from the status the record has now
        (`transitions`); with the watch as actor, a paused session stays sleeping."""
        assert status in STATUSES, status
        extra = [item for key, value in fields.items() for item in (key, str(value))]
        result = self._run("set_status",
                           [record_key(session_id), STATUS_INDEX_PREFIX, PENDING_INDEX,
                            queue_key(session_id), _inflight_key(session_id),
                            events_key(session_id), FAILING_INDEX],
                           [session_id, status, reason, _now_ms(), actor.value, *extra])
        if not isinstance(result, list):  # no record (or a pipeline's, answered later)
            return None, False
        return result[0], bool(int(result[1]))

    def touch(self, session_id: str) -> bool:
        """Mark activity: refresh TTLs and `active` in the work set (and tell the scaler)."""
        return bool(self._run(
            "touch",
            [record_key(session_id), EXPIRY_INDEX, work_key(session_id), BUNDLED_INDEX,
             *_data_keys(session_id)],
            [session_id, *self._activity_args()],
        ))

    def _activity_args(self) -> list[Any]:
        """now_iso, ttl, expires_at, activity_ttl, work_channel: what lib/activity.lua needs."""
        now = utc_now()
        return [iso(now), self.session_ttl, int(now.timestamp()) + self.session_ttl,
                self.activity_ttl, WORK_CHANNEL]

    def clear_activity(self, session_id: str) -> None:
        """Forget recent activity (the session is idle from now); pending messages stay work."""
        self._call(self.redis.srem, work_key(session_id), ACTIVE_MEMBER)

    def sleep(self, session_id: str) -> str | None:
        """An explicit sleep once KEDA's pause annotation is set: paused, `sleeping`, recent
        activity dropped (pending messages stay work), unless the session is archived or
        terminating. Returns the status before (None: no record)."""
        return self._run("sleep_session",
                         [record_key(session_id), STATUS_INDEX_PREFIX, events_key(session_id),
                          work_key(session_id), FAILING_INDEX],
                         [session_id, _now_ms()]) or None

    def resume(self, session_id: str, *, touch: bool) -> tuple[str, str | None, int]:
        """A wake once KEDA's pause annotation is gone: (outcome, status, ready replicas).
        outcome: 'resumed' (not paused; `waking` if it slept, or what the watch saw while the
        sleep masked it), 'restore' (archived: a restore is asked), 'gone' or 'terminating'.
        With touch, it also counts as activity."""
        result = self._run(
            "resume_session",
            [record_key(session_id), STATUS_INDEX_PREFIX, events_key(session_id),
             FAILING_INDEX, RESTORE_INDEX, EXPIRY_INDEX, work_key(session_id), BUNDLED_INDEX,
             PENDING_INDEX, queue_key(session_id), _inflight_key(session_id),
             *_data_keys(session_id)],
            [session_id, _now_ms(), "1" if touch else "0", *self._activity_args()])
        if result[0] != "resumed":
            return result[0], None, 0
        return "resumed", result[1], int(result[2] or 0)

    def repair_paused(self, session_id: str, paused: bool) -> bool:
        """Set the paused flag back to what KEDA's annotation says (the reconciler)."""
        return bool(self._run("repair_paused",
                              [record_key(session_id), STATUS_INDEX_PREFIX,
                               events_key(session_id), FAILING_INDEX],
                              [session_id, _now_ms(), "1" if paused else "0"]))

    def release_refresh_hold(self, session_id: str) -> None:
        """A chat's re-apply is done (or failed): the scalers may act on the work now."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(refresh_hold_key(session_id))
        pipe.publish(WORK_CHANNEL, session_id)
        self._call(pipe.execute)

    def work(self, session_ids: list[str]) -> dict[str, int]:
        """Per session: the size of its work set (0: nothing to do), or -1 when it must not
        run — paused (slept), held while a chat re-applies its bundle, terminating, or gone.
        What the push scaler answers KEDA."""
        if not session_ids:
            return {}
        try:
            pipe = self.redis.pipeline(transaction=False)
            for session_id in session_ids:
                pipe.scard(work_key(session_id))
                pipe.hmget(record_key(session_id), ("status", "paused"))
                pipe.exists(refresh_hold_key(session_id))
            found = pipe.execute()
        except UNAVAILABLE as err:
            raise unavailable(err) from err
        work = {}
        for index, session_id in enumerate(session_ids):
            size, (status, paused), hold = found[3 * index:3 * index + 3]
            held = status is None or status == "terminating" or paused == "1" or hold
            work[session_id] = -1 if held else int(size)
        return work

    def delete_session(self, session_id: str) -> bool:
        return bool(self._run(
            "delete_session",
            [record_key(session_id), ALL_INDEX, EXPIRY_INDEX, PENDING_INDEX,
             STATUS_INDEX_PREFIX, BUNDLED_INDEX, RESTORE_INDEX, SWEEPING_INDEX, FAILING_INDEX,
             work_key(session_id), _delivery_lease(session_id),
             refresh_hold_key(session_id), *_data_keys(session_id)],
            [session_id, *STATUSES],
        ))

    # -- failed sessions -----------------------------------------------------------------

    def failing_since(self, *, before_ms: int, offset: int = 0, limit: int) -> list[str]:
        """Sessions unhealthy (failed, or between two crashes) since before `before_ms`."""
        return self._call(self.redis.zrangebyscore, FAILING_INDEX, "-inf", before_ms,
                          start=offset, num=limit)

    def fail_pending(self, session_id: str, *, before_ms: int, grace_seconds: int) -> int:
        """Fail the pending messages of a session unhealthy since before `before_ms` (see
        fail_pending.lua); returns how many were failed."""
        return int(self._run(
            "fail_pending",
            [record_key(session_id), queue_key(session_id), _inflight_key(session_id),
             _messages_key(session_id), PENDING_INDEX, _delivery_lease(session_id),
             work_key(session_id), events_key(session_id), STATS, FAILING_INDEX],
            [session_id, before_ms, iso(utc_now()), self.activity_ttl, SETTLED_CHANNEL,
             grace_seconds]))

    def list_sessions(self, *, status: str | None, limit: int,
                      cursor: int | None) -> tuple[list[tuple[str, dict[str, str]]], int | None]:
        """One page in creation order; the cursor is the last entry's creation counter."""
        index = ALL_INDEX if status is None else STATUS_INDEX_PREFIX + status
        low = "-inf" if cursor is None else f"({cursor}"
        try:
            entries = self.redis.zrangebyscore(index, low, "+inf", start=0, num=limit + 1,
                                               withscores=True)
            page = entries[:limit]
            pipe = self.redis.pipeline(transaction=False)
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
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(ALL_INDEX)
            for status in STATUSES:
                pipe.zcard(STATUS_INDEX_PREFIX + status)
            pipe.zcard(PENDING_INDEX)
            pipe.zcard(BUNDLED_INDEX)
            pipe.zcard(RESTORE_INDEX)
            pipe.zcard(SWEEPING_INDEX)
            pipe.hgetall(STATS)
            total, *by_status, pending, bundled, restores, sweeping, stats = pipe.execute()
        except UNAVAILABLE as err:
            raise unavailable(err) from err
        counts = {"total": total, "sessions_with_pending_messages": pending,
                  "sessions_with_bundle": bundled, "restores_asked": restores,
                  "archives_sweeping": sweeping}
        counts.update(dict(zip(STATUSES, by_status, strict=True)))
        for name in ("queued", "delivered", "failed", "forwarded"):
            counts[f"messages_{name}"] = int(stats.get(name, 0))
        return counts

    def expired_page(self, *, now: float, offset: int, limit: int) -> tuple[list[str], int]:
        """(ids whose record TTL has passed, entries scanned): the `limit` expiry-index
        entries due by `now` from `offset` on, those whose record is gone. Reaping removes
        entries, so a caller pages by advancing `offset` past what it could not reap."""
        due = self._call(self.redis.zrangebyscore, EXPIRY_INDEX, "-inf", int(now),
                         start=offset, num=limit)
        if not due:
            return [], 0
        exists = self._pipelined([("exists", record_key(sid)) for sid in due])
        return [sid for sid, found in zip(due, exists, strict=True) if not found], len(due)

    def get_sessions(self, ids: list[str]) -> dict[str, dict[str, str]]:
        """Records of these ids in one round trip; an id without a record is left out."""
        records = self._pipelined([("hgetall", record_key(sid)) for sid in ids])
        return {sid: record for sid, record in zip(ids, records, strict=True) if record}

    def _pipelined(self, calls: list[tuple[str, str]]) -> list[Any]:
        if not calls:
            return []
        try:
            pipe = self.redis.pipeline(transaction=False)
            for command, key in calls:
                getattr(pipe, command)(key)
            return pipe.execute()
        except UNAVAILABLE as err:
            raise unavailable(err) from err

    def known_ids(self, ids: list[str]) -> set[str]:
        """Which of these ids have a record or a create in progress."""
        if not ids:
            return set()
        try:
            pipe = self.redis.pipeline(transaction=False)
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
        entries = self._call(self.redis.zrangebyscore, ALL_INDEX, low, "+inf", start=0,
                             num=limit + 1, withscores=True)
        page = entries[:limit]
        return [sid for sid, _ in page], (int(page[-1][1]) if len(entries) > limit else None)

    # -- chat and delivery ---------------------------------------------------------------

    def admit_chat(self, session_id: str, *, message_id: str, message: dict,
                   max_queued: int, max_kept: int, allow_forward: bool,
                   lease_seconds: int, budget_bytes: int = 0,
                   bundle_version: str = "", hold_seconds: float = 30) -> tuple[str, dict]:
        """Returns (mode, info): mode is forward|queued|duplicate|backlog|budget|gone|
        terminating. A queued message's info["needs"] is "restore" (archived: asked in the
        restore index), "refresh" (asleep on a bundle other than `bundle_version`) or "";
        when not "", the scalers have not been told (the caller does, once it is applied).
        An admitted message also counts as activity (TTLs and KEDA's activity key)."""
        token = secrets.token_hex(8)
        now = utc_now()
        result = self._run(
            "admit_chat",
            [record_key(session_id), queue_key(session_id), _inflight_key(session_id),
             _messages_key(session_id), _message_ids_key(session_id), PENDING_INDEX,
             _delivery_lease(session_id), STATS, EXPIRY_INDEX, work_key(session_id),
             events_key(session_id), BUNDLED_INDEX, RESTORE_INDEX,
             refresh_hold_key(session_id)],
            [session_id, message_id, json.dumps(message), int(now.timestamp() * 1000),
             max_queued, max_kept, token, lease_seconds * 1000, "1" if allow_forward else "0",
             iso(now), self.session_ttl, int(now.timestamp()) + self.session_ttl,
             WORK_CHANNEL, budget_bytes, bundle_version, int(hold_seconds * 1000)],
        )
        mode = result[0]
        if mode in ("forward", "queued"):
            return mode, {"seq": int(result[1]), "envelope": result[2],
                          "paused": result[3] == "1", "lease_token": token,
                          "status": result[4], "needs": result[5]}
        if mode == "duplicate":
            return mode, {"seq": int(result[1]),
                          "message": json.loads(result[2]) if result[2] else {},
                          "status": result[3]}
        if mode == "backlog":
            return mode, {"backlog": int(result[1])}
        if mode == "budget":
            return mode, {"kept_bytes": int(result[1])}
        return mode, {}

    def claim_delivery(self, session_id: str, *, lease_seconds: int,
                       max_attempts: int) -> dict | None:
        """The next message to deliver under the session's lease, or None. A message that
        had `max_attempts` claims and no outcome is failed on the way."""
        token = secrets.token_hex(8)
        result = self._run(
            "claim_delivery",
            [record_key(session_id), queue_key(session_id), _inflight_key(session_id),
             _messages_key(session_id), PENDING_INDEX, _delivery_lease(session_id),
             work_key(session_id), events_key(session_id), STATS],
            [session_id, token, lease_seconds * 1000, _now_ms(), self.activity_ttl,
             max_attempts, iso(utc_now()), SETTLED_CHANNEL],
        )
        if result[0] != "claimed":
            return None
        return {"envelope": result[1], "message": json.loads(result[2]), "lease_token": token}

    def finish_delivery(self, session_id: str, *, envelope: str, lease_token: str,
                        delivered: bool, reply_or_error: str, max_attempts: int,
                        retry_in_seconds: float, forwarded: bool = False,
                        budget_bytes: int = 0, not_sent: bool = False,
                        retry_for_seconds: float = 0, warning: str = "") -> dict:
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
                    max_attempts, retry_in_seconds, forwarded, budget_bytes, not_sent, warning)
            except RedisUnavailable:
                if time.monotonic() + SETTLE_RETRY_SECONDS > deadline:
                    raise
                time.sleep(SETTLE_RETRY_SECONDS)

    def _finish_delivery(self, session_id: str, envelope: str, lease_token: str,
                         delivered: bool, reply_or_error: str, max_attempts: int,
                         retry_in_seconds: float, forwarded: bool, budget_bytes: int,
                         not_sent: bool, warning: str) -> dict:
        moment = utc_now()
        now = int(moment.timestamp() * 1000)
        stored = self._run(
            "finish_delivery",
            [record_key(session_id), queue_key(session_id), _inflight_key(session_id),
             _messages_key(session_id), PENDING_INDEX, _delivery_lease(session_id), STATS,
             EXPIRY_INDEX, work_key(session_id), _message_ids_key(session_id),
             events_key(session_id), BUNDLED_INDEX],
            [session_id, envelope, lease_token, "delivered" if delivered else "failed",
             reply_or_error, iso(moment), now, max_attempts,
             now + int(retry_in_seconds * 1000), self.session_ttl,
             int(moment.timestamp()) + self.session_ttl, self.activity_ttl,
             "forwarded" if forwarded else "", budget_bytes, "1" if not_sent else "0",
             SETTLED_CHANNEL, warning],
        )
        return json.loads(stored) if stored else {}

    def due_sessions(self, *, limit: int = 100) -> list[str]:
        return self._call(self.redis.zrangebyscore, PENDING_INDEX, "-inf", _now_ms(),
                          start=0, num=limit)

    def queue_length(self, session_id: str) -> int:
        try:
            pipe = self.redis.pipeline(transaction=False)
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
        last = int(self._call(self.redis.hget, record_key(session_id), "msg_seq") or 0)
        first = max(after + 1, last - max_kept + 1, 1)
        seqs = list(range(first, min(last, first + limit - 1) + 1))
        if not seqs:
            return [], None
        fields = [f for seq in seqs for f in (str(seq), f"{seq}:reply")]
        values = self._call(self.redis.hmget, _messages_key(session_id), fields)
        messages = []
        for index in range(0, len(values), 2):
            stored, reply = values[index], values[index + 1]
            if stored is None:
                continue
            message = json.loads(stored)
            message["reply"] = json.loads(reply) if reply else None
            messages.append(message)
        return messages, (seqs[-1] if seqs[-1] < last else None)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UNAVAILABLE as err:
            raise unavailable(err) from err


def _now_ms() -> int:
    return int(time.time() * 1000)
