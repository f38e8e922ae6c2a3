"""Archiving, mixed into Tiers: an idle session's bundle is deleted, its record and
conversation kept. The archiver does not wait for finalizers (KEDA's on the ScaledObject takes
minutes when KEDA is busy with thousands): the session stays in the sweeping index, the next
passes drop it once its objects are gone (one listing of each kind serves every archive), and
a restore applies only then."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from . import bundle
from .config import Settings
from .errors import SessionManagerError
from .kube import Kube
from .status import session_of
from .store import Store
from .templates import template_kinds

log = logging.getLogger("service.tiers")

# The bundle lock's life: longer than a sweep's deletes or an apply take.
LOCK_SECONDS = 120
PAGE_SIZE = 200  # idle sessions read at a time
# Sessions one pass looks at, at most: a backlog (archiving just switched on, an outage) is
# worked off over several passes, each short, instead of one pass of hours.
MAX_PER_PASS = 2000
# Archives a pass looks at for objects still there (one listing of each kind serves them all).
SWEEPING_BATCH = 10_000
# An archive whose objects are still there after this is worth a warning (KEDA down or slow).
SWEEP_WARN_SECONDS = 600


def kinds_of(record: dict[str, str]) -> list[bundle.KindRef]:
    """The kinds a session's bundle was applied with, as its record says."""
    pairs = (item.split(" ", 1) for item in (record.get("bundle_kinds") or "").split(",") if item)
    return [bundle.KindRef(api, kind) for api, kind in pairs]


class Archiving:
    """Mixed into Tiers (which provides settings, store and kube)."""

    settings: Settings
    store: Store
    kube: Kube

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
            page = [sid for sid in self.store.idle_bundled(
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
        outcome = self.store.archive(session_id, idle_since=idle_since, lock_token=token,
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
            self.store.release_bundle_lock(session_id, token)
        log.info("session archived", extra={"session_id": session_id})
        return "archived"

    def sweep(self, session_id: str) -> None:
        """Delete the session's bundle, every kind it was applied with and the templates make
        now (the caller holds the bundle lock). Objects with finalizers linger a while: the
        session is in the sweeping index until they are gone."""
        self.kube.delete(session_id, self._kinds(self.store.get_session(session_id) or {}))

    def _kinds(self, record: dict[str, str]) -> list[bundle.KindRef]:
        return list(dict.fromkeys([*kinds_of(record), *template_kinds(self.settings)]))

    def _swept(self, session_id: str, record: dict[str, str]) -> bool:
        """True unless the session's archive is still deleting its objects (under the bundle
        lock: once none is left, none comes back but by an apply)."""
        since = self.store.sweeping_since(session_id)
        if since is None:
            return True
        if self.kube.remaining(session_id, self._kinds(record)):
            return False
        self.store.drop_sweeping({session_id: since})
        return True

    def finish_sweeps(self) -> dict[str, int]:
        """The archives whose objects were being deleted: those whose objects are gone leave
        the sweeping index; one with an object not being deleted (its delete failed, or the
        archiver stopped between marking and deleting) is deleted again. One metadata-only
        listing of each kind serves every archive, however many. Returns 'swept' (gone now)
        and 'sweeping' (still there)."""
        entries = self.store.sweeping(limit=SWEEPING_BATCH)
        if not entries:
            return {"swept": 0, "sweeping": 0}
        records = self.store.get_sessions(list(entries))
        kinds = list(dict.fromkeys(
            [kind for record in records.values() for kind in kinds_of(record)]
            + template_kinds(self.settings)))
        undeleted: dict[str, bool] = {}  # archive with objects left -> one not being deleted
        for kind in kinds:
            for page in self.kube.list_pages(kind, bundle.label_selector(), metadata_only=True):
                for obj in page:
                    if (session_id := session_of(obj)) in entries:
                        deleting = bool(obj["metadata"].get("deletionTimestamp"))
                        undeleted[session_id] = undeleted.get(session_id, False) or not deleting
        # Gone, or no longer archived (restored, deleted: not this index's business).
        done = {sid: since for sid, since in entries.items()
                if sid not in undeleted or records.get(sid, {}).get("status") != "archived"}
        swept = self.store.drop_sweeping(done)
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
        if not self.store.take_bundle_lock(session_id, token, seconds=LOCK_SECONDS):
            return False
        try:
            record = self.store.get_session(session_id)
            if record is None or record["status"] != "archived":
                return False
            self.store.mark_sweeping(session_id)
            self.kube.delete(session_id, self._kinds(record))
            return True
        finally:
            self.store.release_bundle_lock(session_id, token)
