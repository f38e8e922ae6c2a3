"""Archiving: an idle session's bundle is deleted, its record and conversation kept. The
archiver does not wait for finalizers (KEDA's on the ScaledObject takes minutes when KEDA is
busy with thousands): the session stays in the sweeping index, the next passes drop it once its
objects are gone (one listing of each kind serves every archive), and a restore applies only
then."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from service import bundle
from service.bundle import template_kinds
from service.core import names
from service.core.config import Settings
from service.core.errors import SessionManagerError
from service.kube import Kube
from service.sessions.tiers import LOCK_SECONDS, Tiers, kinds_of
from service.store import Store, keda_keys

log = logging.getLogger("service.sessions.tiers")

PAGE_SIZE = 200  # idle sessions read at a time
# Sessions one pass looks at, at most: a backlog (archiving just switched on, an outage) is
# worked off over several passes, each short, instead of one pass of hours.
MAX_PER_PASS = 2000
# Archives a pass looks at for objects still there (one listing of each kind serves them all).
SWEEPING_BATCH = 10_000
# An archive whose objects are still there after this is worth a warning (KEDA down or slow).
SWEEP_WARN_SECONDS = 600


class Archiver:
    def __init__(self, settings: Settings, store: Store, kube: Kube, tiers: Tiers) -> None:
        self.settings = settings
        self.store = store
        self.kube = kube
        self.tiers = tiers

    def archive_idle(self, pool: ThreadPoolExecutor,
                     beat: Callable[[], None] = lambda: None) -> dict[str, int]:
        """One pass: first the earlier archives whose objects were still being deleted, then
        archive the sessions with a bundle idle ARCHIVE_AFTER_SECONDS (MAX_PER_PASS at most),
        their deletes on `pool`; `beat` after each session. Returns the figures."""
        figures = {"archived": 0, "errors": 0, "swept": 0, "sweeping": 0}
        if not self.settings.archive_after_seconds:
            return figures
        try:
            figures.update(self.finish_sweeps())
        except SessionManagerError as err:  # the next pass looks again; archiving goes on
            log.warning("could not check the archives still being deleted: %s", err.message)
        idle_since = time.time() - self.settings.archive_after_seconds
        beat()
        seen: set[str] = set()
        while len(seen) < MAX_PER_PASS:
            # Archived ones leave the index; those kept (busy, locked) are skipped by `seen`.
            page = [sid for sid in self.store.bundles.idle_bundled(
                idle_since=idle_since, limit=PAGE_SIZE + len(seen)) if sid not in seen]
            if not page:
                return figures
            seen.update(page)
            for outcome in pool.map(lambda sid: self.archive(sid, idle_since), page):
                beat()
                if outcome in figures:
                    figures[outcome] += 1
        return figures

    def archive(self, session_id: str, idle_since: float) -> str:
        """Archive one session if it is still idle and has nothing to deliver, and delete its
        objects (without waiting for finalizers): 'archived', 'errors' (a delete failed; the
        next pass deletes again), or why it was not."""
        token = secrets.token_hex(8)
        outcome = self.store.bundles.archive(session_id, idle_since=idle_since, lock_token=token,
                                     lock_seconds=LOCK_SECONDS)
        if outcome != "archived":
            return outcome
        try:
            self.sweep(session_id)
        except SessionManagerError as err:
            log.warning("archived, but its objects could not be deleted yet: %s", err.message,
                        extra={"session_id": session_id})
            return "errors"
        finally:
            self.store.bundles.release_bundle_lock(session_id, token)
        log.info("session archived", extra={"session_id": session_id})
        return "archived"

    def sweep(self, session_id: str) -> None:
        """Delete the session's bundle, every kind it was applied with and the templates make
        now but ARCHIVE_KEEP_KINDS (the caller holds the bundle lock). Objects with
        finalizers linger a while: the session is in the sweeping index until they are
        gone."""
        record = self.store.records.get_session(session_id) or {}
        self.kube.delete(session_id, self.tiers.archived_kinds(record))

    def finish_sweeps(self) -> dict[str, int]:
        """The archives whose objects were being deleted: those whose objects are gone leave
        the sweeping index; one with an object not being deleted (its delete failed, or the
        archiver stopped between marking and deleting) is deleted again. One metadata-only
        listing of each kind serves every archive, however many. Returns 'swept' (gone now)
        and 'sweeping' (still there)."""
        entries = self.store.bundles.sweeping(limit=SWEEPING_BATCH)
        if not entries:
            return {"swept": 0, "sweeping": 0}
        records = self.store.records.get_sessions(list(entries))
        kinds = [kind for kind in dict.fromkeys(
            [kind for record in records.values() for kind in kinds_of(record)]
            + template_kinds(self.settings, keda_keys))
            if kind.kind not in self.settings.archive_keep_kinds]
        undeleted: dict[str, bool] = {}  # archive with objects left -> one not being deleted
        for kind in kinds:
            for page in self.kube.list_pages(kind, bundle.label_selector(), metadata_only=True):
                for obj in page:
                    if (session_id := names.session_of_object(obj)) in entries:
                        deleting = bool(obj["metadata"].get("deletionTimestamp"))
                        undeleted[session_id] = undeleted.get(session_id, False) or not deleting
        # Gone, or no longer archived (restored, deleted: not this index's business).
        done = {sid: since for sid, since in entries.items()
                if sid not in undeleted or records.get(sid, {}).get("status") != "archived"}
        swept = self.store.bundles.drop_sweeping(done)
        for session_id in [sid for sid, left in undeleted.items() if left and sid not in done]:
            try:
                self.sweep_if_free(session_id)
            except SessionManagerError as err:
                log.warning("could not delete an archived session's objects: %s", err.message,
                            extra={"session_id": session_id})
        still = {sid: since for sid, since in entries.items() if sid not in done}
        if still and (oldest := time.time() - min(still.values()) / 1000) > SWEEP_WARN_SECONDS:
            log.warning("objects of archived sessions still there long after their deletes "
                        "(is KEDA running, and keeping up?)",
                        extra={"sessions": len(still), "oldest_seconds": int(oldest)})
        return {"swept": swept, "sweeping": len(still)}

    def sweep_if_free(self, session_id: str) -> bool:
        """Delete an archived session's objects again if nobody holds its bundle lock (an
        archive whose deletes failed, a restore whose record update did). True when it
        did."""
        token = secrets.token_hex(8)
        if not self.store.bundles.take_bundle_lock(session_id, token, seconds=LOCK_SECONDS):
            return False
        try:
            record = self.store.records.get_session(session_id)
            if record is None or record["status"] != "archived":
                return False
            self.store.bundles.mark_sweeping(session_id)
            self.kube.delete(session_id, self.tiers.archived_kinds(record))
            return True
        finally:
            self.store.bundles.release_bundle_lock(session_id, token)
