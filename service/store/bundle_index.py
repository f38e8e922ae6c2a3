"""What the tiers need of Redis: which sessions have a bundle in the cluster and since when
they are idle, archiving one, archives whose objects are still being deleted, restores asked
for, the bundle lock and the version a session runs."""

from __future__ import annotations

import time
from typing import Any

from service.core.clock import iso, utc_now
from service.store.keys import (
    BUNDLED_INDEX,
    FAILING_INDEX,
    RESTORE_INDEX,
    STATUS_INDEX_PREFIX,
    SWEEPING_INDEX,
    WORK_CHANNEL,
    _bundle_lock,
    _inflight_key,
    events_key,
    queue_key,
    record_key,
)


class BundleIndex:
    def __init__(self, db: Any) -> None:
        self.db = db  # client.Database

    def idle_bundled(self, *, idle_since: float, limit: int) -> list[str]:
        """Sessions with a bundle in the cluster and no activity since `idle_since` (epoch s),
        the longest idle first."""
        return self.db.call(self.db.redis.zrangebyscore, BUNDLED_INDEX, "-inf", int(idle_since),
                          start=0, num=limit)

    def bundled_count(self) -> int:
        return int(self.db.call(self.db.redis.zcard, BUNDLED_INDEX))

    def archive(self, session_id: str, *, idle_since: float, lock_token: str,
                lock_seconds: int) -> str:
        """Mark an idle session archived, put it in the sweeping index and take its bundle
        lock (the caller deletes its objects, then releases it). Returns 'archived', or why
        not (see archive_session.lua)."""
        return self.db.run(
            "archive_session",
            [record_key(session_id), STATUS_INDEX_PREFIX, BUNDLED_INDEX, RESTORE_INDEX,
             queue_key(session_id), _inflight_key(session_id), events_key(session_id),
             _bundle_lock(session_id), SWEEPING_INDEX, FAILING_INDEX],
            [session_id, int(idle_since), lock_token, lock_seconds * 1000, iso(utc_now()),
             int(time.time() * 1000)])

    # An archive's objects are being deleted: in the sweeping index until they are gone.

    def mark_sweeping(self, session_id: str) -> None:
        """An archived session's objects are being deleted again (a failed sweep found)."""
        self.db.call(self.db.redis.zadd, SWEEPING_INDEX, {session_id: int(time.time() * 1000)},
                   nx=True)

    def sweeping(self, *, limit: int) -> dict[str, float]:
        """Archives whose objects may still be there, the oldest first: id -> when (ms)."""
        return dict(self.db.call(self.db.redis.zrange, SWEEPING_INDEX, 0, limit - 1,
                               withscores=True))

    def sweeping_since(self, session_id: str) -> float | None:
        return self.db.call(self.db.redis.zscore, SWEEPING_INDEX, session_id)

    def drop_sweeping(self, entries: dict[str, float]) -> int:
        """These archives' objects are gone: out of the index, each only if its entry is the
        one read (a session restored and archived again since is sweeping anew)."""
        if not entries:
            return 0
        return int(self.db.run("drop_if_score", [SWEEPING_INDEX],
                             [item for pair in entries.items() for item in pair]))

    def take_bundle_lock(self, session_id: str, token: str, *, seconds: int) -> bool:
        return bool(self.db.call(self.db.redis.set, _bundle_lock(session_id), token, nx=True,
                               px=seconds * 1000))

    def release_bundle_lock(self, session_id: str, token: str) -> None:
        self.db.run("release_lease", [_bundle_lock(session_id)], [token])

    def note_bundle(self, session_id: str, *, version: str, kinds: list[tuple[str, str]]) -> \
            str | None:
        """A bundle of `version` with `kinds` is applied: recorded; an archived session is
        `waking` from now. Returns the status before (None: the record is gone)."""
        return self.db.run(
            "note_bundle",
            [record_key(session_id), STATUS_INDEX_PREFIX, BUNDLED_INDEX, RESTORE_INDEX,
             events_key(session_id), SWEEPING_INDEX, FAILING_INDEX],
            [session_id, version, ",".join(f"{api} {kind}" for api, kind in kinds),
             int(time.time())]) or None

    def ask_restore(self, session_id: str) -> None:
        """An archived session is wanted (a wake): kept until a restore has applied it."""
        self.db.call(self.db.redis.zadd, RESTORE_INDEX, {session_id: int(time.time() * 1000)},
                   nx=True)

    def restore_later(self, session_id: str, *, seconds: float) -> None:
        """A restore could not run now (the lock is held, the API server refused): due again
        in `seconds`, if it is still asked for."""
        self.db.call(self.db.redis.zadd, RESTORE_INDEX,
                   {session_id: int((time.time() + seconds) * 1000)}, xx=True)

    def drop_restore(self, session_id: str) -> None:
        self.db.call(self.db.redis.zrem, RESTORE_INDEX, session_id)

    def restores_due(self, *, limit: int = 100) -> list[str]:
        return self.db.call(self.db.redis.zrangebyscore, RESTORE_INDEX, "-inf",
                          int(time.time() * 1000), start=0, num=limit)

    def restores_asked(self) -> int:
        return int(self.db.call(self.db.redis.zcard, RESTORE_INDEX))

    def notify_work(self, session_id: str) -> None:
        """Tell the push scaler the session has work (after its bundle was brought up to date:
        admit_chat leaves that to the caller then)."""
        self.db.call(self.db.redis.publish, WORK_CHANNEL, session_id)
