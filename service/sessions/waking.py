"""Waking a session, for a wake and for a chat's wake alike: lift KEDA's pause, then record the
wake in one step that never overwrites what the status watch saw (`Store.records.resume`). An
archived session — archived since it was read, too — gets its restore asked in that same step
and is restored here."""

from __future__ import annotations

import logging

from service.core.config import Settings
from service.core.errors import Conflict, KubeError, KubeNotFound, SessionNotFound, Unavailable
from service.core.transitions import IN_CLUSTER
from service.kube import Kube
from service.sessions.tiers import Tiers
from service.store import Store

log = logging.getLogger(__name__)


class Waker:
    def __init__(self, settings: Settings, store: Store, kube: Kube, tiers: Tiers) -> None:
        self.settings = settings
        self.store = store
        self.kube = kube
        self.tiers = tiers

    def resume(self, session_id: str, *, touch: bool,
               status: str | None = None) -> tuple[str, int]:
        """(status, ready replicas) once woken. The unpause is sent whatever the paused flag
        says (it is idempotent, and a flag that drifted from the annotation must not keep a
        session asleep). `touch`: count it as activity (a chat already did); `status`: the
        one the caller just read, if it has."""
        if status is None:
            status = (self.store.records.get_session(session_id) or {}).get("status")
        if status != "archived":
            try:
                if self.kube.set_paused(session_id, False):
                    raise Unavailable("KEDA pause annotation could not be removed; retry")
            except KubeNotFound:
                # Swept meanwhile (the archiver: the step below sees it), or lost: applied
                # again, if it is not archived (a wake brings a session's objects back).
                self.tiers.apply(session_id, statuses=IN_CLUSTER, wait_for_lock_seconds=2)
        outcome, now, ready = self.store.records.resume(session_id, touch=touch)
        if outcome == "gone":
            raise SessionNotFound()
        if outcome == "terminating":
            raise Conflict("The session is being deleted")
        if outcome == "restore":
            self.tiers.restore(session_id)  # else the restore index keeps it for the worker
            record = self.store.records.get_session(session_id) or {}
            return record.get("status", "archived"), 0
        return now or "waking", ready

    def resume_for_chat(self, session_id: str) -> None:
        """A chat was admitted for a session that is not running: make sure it is not held
        asleep. The message is already kept, so a failure here is logged, never answered as
        an error (a retry of the same message_id, a wake or the reconciler resumes it)."""
        try:
            self.resume(session_id, touch=False)
        except (Unavailable, KubeError) as err:
            log.warning("could not resume the session for a queued chat: %s", err.message,
                        extra={"session_id": session_id})
