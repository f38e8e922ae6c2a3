"""Where a session's objects are: running -> sleeping (0 replicas, objects kept: the fastest
wake) -> archived (idle ARCHIVE_AFTER_SECONDS: bundle swept, record and conversation kept) ->
expired (SESSION_TTL: the reconciler reaps it). And which version of the templates a bundle is
on: a sleeping session on an older one is brought up to date as it wakes, awake ones by
`python -m service reapply`.

Whoever changes a session's objects (the archiver's sweep, a restore, a re-apply) holds its
bundle lock in Redis, so a restore never applies onto objects a sweep is still deleting (a
ScaledObject waits on KEDA's finalizer). A restore that cannot run now stays asked in the
restore index, where the worker picks it up: a chat to an archived session is never lost.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from . import bundle
from .config import Settings
from .errors import SessionManagerError
from .kube import Kube
from .store import Store, keda_keys
from .templates import TemplateVersion, template_kinds

log = logging.getLogger(__name__)

# The bundle lock's life: longer than a sweep, its finalizers and an apply take.
LOCK_SECONDS = 120
SWEEP_WAIT_SECONDS = 90  # how long an archive waits for its objects to be gone
RESTORE_RETRY_SECONDS = 1.0
PAGE_SIZE = 200
# Sessions with a bundle: what `reapply` brings up to date (sleeping ones are on wake).
REAPPLIED_STATUSES = ("created", "waking", "running", "failed")
# A sleeping or failed session on an older version is re-applied before it wakes.
REFRESHED_STATUSES = ("sleeping", "failed")


def kinds_of(record: dict[str, str]) -> list[bundle.KindRef]:
    """The kinds a session's bundle was applied with, as its record says."""
    pairs = (item.split(" ", 1) for item in (record.get("bundle_kinds") or "").split(",") if item)
    return [bundle.KindRef(api, kind) for api, kind in pairs]


class Tiers:
    def __init__(self, settings: Settings, store: Store, kube: Kube,
                 version: TemplateVersion | None = None) -> None:
        self.settings = settings
        self.store = store
        self.kube = kube
        self.versions = version or TemplateVersion(settings)

    def version(self) -> str:
        return self.versions.current()

    def render(self, session_id: str) -> bundle.Bundle:
        return bundle.render(session_id, self.settings, keda_keys(session_id))

    # -- applying ------------------------------------------------------------------------

    def apply(self, session_id: str, *, statuses: Iterable[str],
              wait_for_lock_seconds: float = 0) -> str:
        """Apply the session's bundle as the templates make it now, if its status is one of
        `statuses` (read under the lock). Returns 'applied', 'skipped' (another status, or no
        record) or 'locked' (someone else is changing its objects). Raises KubeError."""
        token = secrets.token_hex(8)
        deadline = time.monotonic() + wait_for_lock_seconds
        while not self.store.take_bundle_lock(session_id, token, seconds=LOCK_SECONDS):
            if time.monotonic() >= deadline:
                return "locked"
            time.sleep(0.2)
        try:
            record = self.store.get_session(session_id)
            if record is None or record["status"] not in statuses:
                return "skipped"
            version = self.version()
            rendered = self.render(session_id)
            kinds = [(k.api_version, k.kind) for k in rendered.kinds()]
            self.store.note_applied_kinds(kinds)  # before: a crash must not hide a kind
            # A failure leaves the objects as they were (a live session keeps running).
            self.kube.apply(rendered, sweep_on_failure=False)
            before = self.store.note_bundle(session_id, version=version, kinds=kinds)
            if before is None or before == "terminating":
                # Deleted meanwhile: take back what this apply brought (else the reconciler
                # would, as an orphan, after its grace period).
                self.kube.delete(session_id, rendered.kinds())
                return "skipped"
            return "applied"
        finally:
            self.store.release_bundle_lock(session_id, token)

    def restore(self, session_id: str) -> bool:
        """Bring an archived session's bundle back (a chat or a wake asked for it). False when
        it cannot now: it stays asked in the restore index and the worker tries again."""
        try:
            outcome = self.apply(session_id, statuses=("archived",))
            if outcome == "locked":
                self.store.restore_later(session_id, seconds=RESTORE_RETRY_SECONDS)
                return False
            self.store.drop_restore(session_id)  # done, or nothing left to restore
            if outcome == "applied":
                log.info("session restored from the archive", extra={"session_id": session_id})
                self.store.notify_work(session_id)
            return True
        except SessionManagerError as err:
            log.warning("could not restore the session now: %s", err.message,
                        extra={"session_id": session_id})
            # If Redis refuses this too, the ask is still due in the index: retried at once.
            with contextlib.suppress(SessionManagerError):
                self.store.restore_later(session_id, seconds=RESTORE_RETRY_SECONDS)
            return False

    def refresh(self, session_id: str) -> None:
        """A sleeping (or failed) session about to wake on an older version of the templates:
        re-apply first, so its pod starts from the new one. A failure is logged and the
        session wakes on what it has (the next wake tries again)."""
        try:
            self.apply(session_id, statuses=REFRESHED_STATUSES, wait_for_lock_seconds=2)
        except SessionManagerError as err:
            log.warning("could not bring the bundle up to date before a wake: %s", err.message,
                        extra={"session_id": session_id})

    def reapply(self, *, concurrency: int, force: bool = False) -> dict[str, int]:
        """Re-apply every session with a bundle that is not asleep (REAPPLIED_STATUSES) and
        is on another version than the templates' now (every one with `force`), at most
        `concurrency` at once. Idempotent: a second run finds nothing to do, and a forced
        re-apply of an unchanged bundle changes no object (server-side apply)."""
        figures = {"sessions": 0, "applied": 0, "current": 0, "skipped": 0, "locked": 0,
                   "failed": 0}
        current = self.version()

        def one(session_id: str) -> str:
            try:
                return self.apply(session_id, statuses=REAPPLIED_STATUSES,
                                  wait_for_lock_seconds=5)
            except SessionManagerError as err:
                log.warning("re-apply failed: %s", err.message, extra={"session_id": session_id})
                return "failed"

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="reapply") as pool:
            for page in self.store.iter_status_pages(REAPPLIED_STATUSES, batch=PAGE_SIZE):
                records = self.store.get_sessions(page)
                figures["sessions"] += len(records)
                due = [sid for sid, record in records.items()
                       if force or record.get("bundle_version") != current]
                figures["current"] += len(records) - len(due)
                for outcome in pool.map(one, due):
                    figures[outcome] += 1
        return figures

    # -- archiving -----------------------------------------------------------------------

    def archive_idle(self, pool: ThreadPoolExecutor) -> dict[str, int]:
        """One pass: archive every session with a bundle idle ARCHIVE_AFTER_SECONDS, the
        sweeps run on `pool`. Returns the figures."""
        figures = {"archived": 0, "errors": 0}
        if not self.settings.archive_after_seconds:
            return figures
        idle_since = time.time() - self.settings.archive_after_seconds
        seen: set[str] = set()
        while True:
            # Archived ones leave the index; those kept (busy, locked) are skipped by `seen`.
            page = [sid for sid in self.store.idle_bundled(
                idle_since=idle_since, limit=PAGE_SIZE + len(seen)) if sid not in seen]
            if not page:
                return figures
            seen.update(page)
            for outcome in pool.map(lambda sid: self.archive(sid, idle_since), page):
                if outcome in figures:
                    figures[outcome] += 1

    def archive(self, session_id: str, idle_since: float) -> str:
        """Archive one session if it is still idle and has nothing to deliver: 'archived',
        'errors' (its sweep failed; the reconciler sweeps it again), or why it was not."""
        token = secrets.token_hex(8)
        outcome = self.store.archive(session_id, idle_since=idle_since, lock_token=token,
                                     lock_seconds=LOCK_SECONDS)
        if outcome != "archived":
            return outcome
        try:
            self.sweep(session_id)
        except SessionManagerError as err:
            log.warning("archived, but its objects could not be swept yet: %s", err.message,
                        extra={"session_id": session_id})
            return "errors"
        finally:
            self.store.release_bundle_lock(session_id, token)
        log.info("session archived", extra={"session_id": session_id})
        return "archived"

    def sweep(self, session_id: str) -> None:
        """Sweep the session's bundle and wait until it is gone, finalizers included (the
        caller holds the bundle lock, so no restore applies onto objects being deleted)."""
        record = self.store.get_session(session_id) or {}
        kinds = list(dict.fromkeys([*kinds_of(record), *template_kinds(self.settings)]))
        self.kube.delete(session_id, kinds)
        # Most kinds are gone at once; only those with finalizers (KEDA's on the ScaledObject)
        # linger. A kind found empty stays empty (the lock is held), so each later look lists
        # only what was left, less and less often: every list costs the API server a pass
        # over the namespace's objects of that kind.
        deadline = time.monotonic() + SWEEP_WAIT_SECONDS
        pause = 0.1
        while kinds := [kind for kind in kinds if self.kube.remaining(session_id, [kind])]:
            if time.monotonic() > deadline:
                log.warning("objects still there %ss after the sweep", SWEEP_WAIT_SECONDS,
                            extra={"session_id": session_id,
                                   "kinds": [kind.kind for kind in kinds]})
                return
            time.sleep(pause)
            pause = min(2.0, pause * 2)

    def sweep_if_free(self, session_id: str) -> bool:
        """Sweep an archived session's objects if nobody holds its bundle lock (the
        reconciler, for an archive whose sweep failed). True when it swept."""
        token = secrets.token_hex(8)
        if not self.store.take_bundle_lock(session_id, token, seconds=LOCK_SECONDS):
            return False
        try:
            record = self.store.get_session(session_id)
            if record is None or record["status"] != "archived":
                return False
            self.sweep(session_id)
            return True
        finally:
            self.store.release_bundle_lock(session_id, token)
