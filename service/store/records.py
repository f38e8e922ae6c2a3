"""Session records: a hash per session with a TTL refreshed on activity, and what changes them
— create, status (through the transition table), activity, sleep and wake, delete — each one
Lua script that also keeps the indexes and the event log in step."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from service.core import names
from service.core.clock import iso, now_ms
from service.core.transitions import STATUSES, Actor
from service.store.failures import UNAVAILABLE, unavailable
from service.store.keys import (
    ACTIVE_MEMBER,
    ALL_INDEX,
    APPLIED_KINDS,
    BUNDLED_INDEX,
    CREATED_SEQ,
    EXPIRY_INDEX,
    FAILING_INDEX,
    PENDING_INDEX,
    RESTORE_INDEX,
    STATUS_INDEX_PREFIX,
    SWEEPING_INDEX,
    WORK_CHANNEL,
    _data_keys,
    _delivery_lease,
    _inflight_key,
    _reservation_key,
    events_key,
    queue_key,
    record_key,
    refresh_hold_key,
    work_key,
)


class SessionRecords:
    def __init__(self, db: Any) -> None:
        self.db = db  # client.Database

    def reserve_id(self, *, seconds: int = 600) -> str:
        """A fresh id no record or other create holds; the reservation marks a create in
        progress (the reconciler leaves such bundles alone)."""
        for _ in range(8):
            session_id = names.new_session_id()
            try:
                if self.db.redis.exists(record_key(session_id)):
                    continue
                if self.db.redis.set(_reservation_key(session_id), "1", nx=True, ex=seconds):
                    return session_id
            except UNAVAILABLE as err:
                raise unavailable(err) from err
        raise RuntimeError("could not allocate a unique session id")

    def release_id(self, session_id: str) -> None:
        self.db.call(self.db.redis.delete, _reservation_key(session_id))

    def is_reserved(self, session_id: str) -> bool:
        return bool(self.db.call(self.db.redis.exists, _reservation_key(session_id)))

    def note_applied_kinds(self, kinds: list[tuple[str, str]]) -> None:
        """Remember (apiVersion, kind) pairs a bundle is about to be applied with."""
        if kinds:
            self.db.call(self.db.redis.sadd, APPLIED_KINDS,
                         *(f"{api} {kind}" for api, kind in kinds))

    def applied_kinds(self) -> list[tuple[str, str]]:
        """Every (apiVersion, kind) a bundle was ever applied with, sorted."""
        members = self.db.call(self.db.redis.smembers, APPLIED_KINDS)
        return sorted(tuple(member.split(" ", 1)) for member in members)  # type: ignore[misc]

    def create_session(self, session_id: str, *, user_id: str, token_hash: str,
                       now: datetime, bundle_version: str = "",
                       bundle_kinds: list[tuple[str, str]] = ()) -> dict[str, str]:
        fields = {
            "user_id": user_id, "status": "created", "reason": "", "created_at": iso(now),
            "last_activity": iso(now), "token": token_hash, "paused": "0",
            "replicas": "0", "ready_replicas": "0", "bundle_version": bundle_version,
            "bundle_kinds": ",".join(f"{api} {kind}" for api, kind in bundle_kinds),
            "applied_at": str(int(now.timestamp())),
            # The create is the session's first wake: its phases count from now.
            "wake_phases": json.dumps({"at": int(now.timestamp() * 1000), "kind": "create"}),
        }
        flat = [item for pair in fields.items() for item in pair]
        created = self.db.run(
            "create_session",
            [record_key(session_id), ALL_INDEX, STATUS_INDEX_PREFIX + "created", EXPIRY_INDEX,
             work_key(session_id), _reservation_key(session_id), CREATED_SEQ, BUNDLED_INDEX],
            [session_id, self.db.session_ttl, self.db.activity_ttl,
             int(now.timestamp()) + self.db.session_ttl, *flat],
        )
        if not created:
            raise RuntimeError(f"session {session_id} already exists")
        return fields

    def get_session(self, session_id: str) -> dict[str, str] | None:
        record = self.db.call(self.db.redis.hgetall, record_key(session_id))
        return record or None

    def get_sessions(self, ids: list[str]) -> dict[str, dict[str, str]]:
        """Records of these ids in one round trip; an id without a record is left out."""
        records = self.db.pipelined([("hgetall", record_key(sid)) for sid in ids])
        return {sid: record for sid, record in zip(ids, records, strict=True) if record}

    def pod_address(self, session_id: str) -> str | None:
        """The ready pod's IP, as the status watch last saw it."""
        return self.db.call(self.db.redis.hget, record_key(session_id), "pod_ip") or None

    def set_status(self, session_id: str, status: str, *, actor: Actor, reason: str = "",
                   reached: tuple[str, ...] = (), **fields: Any) -> tuple[str | None, bool]:
        """(the status before or None when the record is gone, whether `status` was written):
        written only when `actor` may make that move from the status the record has now
        (`transitions`); with the watch as actor, a paused session stays sleeping. `reached`:
        the wake phases the cluster shows done (lua/lib/wake.lua), recorded once per wake."""
        assert status in STATUSES, status
        extra = [item for key, value in fields.items() for item in (key, str(value))]
        result = self.db.run("set_status",
                           [record_key(session_id), STATUS_INDEX_PREFIX, PENDING_INDEX,
                            queue_key(session_id), _inflight_key(session_id),
                            events_key(session_id), FAILING_INDEX],
                           [session_id, status, reason, now_ms(), actor.value, ",".join(reached),
                            *extra])
        if not isinstance(result, list):  # no record (or a pipeline's, answered later)
            return None, False
        return result[0], bool(int(result[1]))

    def touch(self, session_id: str) -> bool:
        """Mark activity: refresh TTLs and `active` in the work set (and tell the scaler)."""
        return bool(self.db.run(
            "touch",
            [record_key(session_id), EXPIRY_INDEX, work_key(session_id), BUNDLED_INDEX,
             *_data_keys(session_id)],
            [session_id, *self.db.activity_args()],
        ))

    def clear_activity(self, session_id: str) -> None:
        """Forget recent activity (the session is idle from now); pending messages stay work."""
        self.db.call(self.db.redis.srem, work_key(session_id), ACTIVE_MEMBER)

    def sleep(self, session_id: str) -> str | None:
        """An explicit sleep once KEDA's pause annotation is set: paused, `sleeping`, recent
        activity dropped (pending messages stay work), unless the session is archived or
        terminating. Returns the status before (None: no record)."""
        return self.db.run("sleep_session",
                         [record_key(session_id), STATUS_INDEX_PREFIX, events_key(session_id),
                          work_key(session_id), FAILING_INDEX],
                         [session_id, now_ms()]) or None

    def resume(self, session_id: str, *, touch: bool) -> tuple[str, str | None, int]:
        """A wake once KEDA's pause annotation is gone: (outcome, status, ready replicas).
        outcome: 'resumed' (not paused; `waking` if it slept, or what the watch saw while the
        sleep masked it), 'restore' (archived: a restore is asked), 'gone' or 'terminating'.
        With touch, it also counts as activity."""
        result = self.db.run(
            "resume_session",
            [record_key(session_id), STATUS_INDEX_PREFIX, events_key(session_id),
             FAILING_INDEX, RESTORE_INDEX, EXPIRY_INDEX, work_key(session_id), BUNDLED_INDEX,
             PENDING_INDEX, queue_key(session_id), _inflight_key(session_id),
             *_data_keys(session_id)],
            [session_id, now_ms(), "1" if touch else "0", *self.db.activity_args()])
        if result[0] != "resumed":
            return result[0], None, 0
        return "resumed", result[1], int(result[2] or 0)

    def repair_paused(self, session_id: str, paused: bool) -> bool:
        """Set the paused flag back to what KEDA's annotation says (the reconciler)."""
        return bool(self.db.run("repair_paused",
                              [record_key(session_id), STATUS_INDEX_PREFIX,
                               events_key(session_id), FAILING_INDEX],
                              [session_id, now_ms(), "1" if paused else "0"]))

    def release_refresh_hold(self, session_id: str) -> None:
        """A chat's re-apply is done (or failed): the scalers may act on the work now."""
        pipe = self.db.redis.pipeline(transaction=False)
        pipe.delete(refresh_hold_key(session_id))
        pipe.publish(WORK_CHANNEL, session_id)
        self.db.call(pipe.execute)

    def work(self, session_ids: list[str]) -> dict[str, int]:
        """Per session: the size of its work set (0: nothing to do), or -1 when it must not
        run — paused (slept), held while a chat re-applies its bundle, terminating, or gone.
        What the push scaler answers KEDA."""
        if not session_ids:
            return {}
        try:
            pipe = self.db.redis.pipeline(transaction=False)
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
        return bool(self.db.run(
            "delete_session",
            [record_key(session_id), ALL_INDEX, EXPIRY_INDEX, PENDING_INDEX,
             STATUS_INDEX_PREFIX, BUNDLED_INDEX, RESTORE_INDEX, SWEEPING_INDEX, FAILING_INDEX,
             work_key(session_id), _delivery_lease(session_id),
             refresh_hold_key(session_id), *_data_keys(session_id)],
            [session_id, *STATUSES],
        ))
