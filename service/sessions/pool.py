"""The warm pool: WARM_POOL_SIZE sessions created ahead of their users, their pods up, so a
create is answered by a pod that is already running, whatever the agent's start-up time.

A session id is opaque and a pod learns its session and user with every delivery, so a pooled
session is bound to its user late, with nothing rendered again: a create claims the oldest
ready one in one Redis step (two creates never get the same one) and answers `running`; an
empty pool falls back to the usual create, never an error. One worker leads the keeper: each
turn it recycles what must go (a failed pod, another version of the templates, older than
WARM_POOL_MAX_AGE_SECONDS, a record gone) and refills to the target, BUNDLE_CONCURRENCY at a
time. The pool's truth is in Redis, so replicas share it and a restart neither leaks nor
double-counts. Pooled sessions are no user's: not listed, not counted, never asleep (their work
set holds `pool`), never archived, never swept as orphans (they have a record).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from service.core.clock import utc_now
from service.core.config import Settings
from service.core.errors import SessionManagerError
from service.core.tokens import hash_token
from service.sessions.tiers import Tiers, kinds_of, kinds_of_pairs
from service.store import Store

log = logging.getLogger(__name__)

# A pooled record outlives the pool's own age limit by this much: if no keeper recycles it
# (no worker at all), the record still expires and the reconciler sweeps its bundle.
RECORD_MARGIN_SECONDS = 600


class WarmPool:
    def __init__(self, settings: Settings, store: Store, tiers: Tiers) -> None:
        self.settings = settings
        self.store = store
        self.tiers = tiers

    def claim(self, user_id: str, token: str) -> dict[str, str] | None:
        """A ready pooled session, now `user_id`'s; None when the pool is off or empty."""
        if not self.settings.warm_pool_size:
            return None
        return self.store.pool.claim(user_id=user_id, token_hash=hash_token(token),
                                     now=utc_now(), bundle_version=self.tiers.version())

    def keep(self, pool: ThreadPoolExecutor,
             beat: Callable[[], None] = lambda: None) -> dict[str, int]:
        """One turn of the keeper: recycle, shrink to WARM_POOL_SIZE, refill to it. The
        figures."""
        figures = {"recycled": 0, "added": 0, "errors": 0}
        members = self.store.pool.members()
        version = self.tiers.version()
        oldest_ms = (time.time() - self.settings.warm_pool_max_age_seconds) * 1000
        doomed = [sid for sid, m in members.items()
                  if not m["exists"] or m["status"] == "failed"
                  or m["bundle_version"] != version or m["added_ms"] < oldest_ms]
        # A smaller WARM_POOL_SIZE (0: the pool turned off) gives back the newest extras:
        # their pods would otherwise run for no one.
        kept = sorted((sid for sid in members if sid not in doomed),
                      key=lambda sid: members[sid]["added_ms"])
        doomed += kept[self.settings.warm_pool_size:]
        for session_id in doomed:
            beat()
            figures["recycled" if self._recycle(session_id) else "errors"] += 1
        missing = self.settings.warm_pool_size - (len(members) - len(doomed))
        for added in pool.map(lambda _: self._add_one(), range(max(0, missing))):
            beat()
            figures["added" if added else "errors"] += 1
        if figures["recycled"] or figures["added"] or figures["errors"]:
            log.info("warm pool kept", extra={"figures": figures})
        return figures

    def _add_one(self) -> bool:
        try:
            session_id = self.store.records.reserve_id()
            version, kinds = self.tiers.apply_new(session_id)
            try:
                self.store.pool.add(
                    session_id, now=utc_now(), bundle_version=version, bundle_kinds=kinds,
                    record_ttl_seconds=self.settings.warm_pool_max_age_seconds
                    + RECORD_MARGIN_SECONDS)
            except BaseException:
                self.tiers.discard(session_id, kinds_of_pairs(kinds))
                raise
            self.store.pool.count_refill()
            return True
        except SessionManagerError as err:
            log.warning("could not add a session to the warm pool: %s", err.message)
            return False

    def _recycle(self, session_id: str) -> bool:
        try:
            # Out of the pool first: a create claims only what is in it, so what the record
            # says from here on is final.
            self.store.pool.drop(session_id)
            record = self.store.records.get_session(session_id) or {}
            if record and record.get("pooled") != "1":
                return True  # claimed just before: the user's now
            self.tiers.kube.delete(session_id, list(dict.fromkeys(
                [*kinds_of(record), *self.tiers.kinds_for(record)])))
            self.store.records.delete_session(session_id)
            return True
        except SessionManagerError as err:
            log.warning("could not recycle a pooled session: %s", err.message,
                        extra={"session_id": session_id})
            return False
