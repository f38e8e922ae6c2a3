"""Where a session's objects are: running -> sleeping (0 replicas, objects kept: the fastest
wake) -> archived (idle ARCHIVE_AFTER_SECONDS: bundle swept, record and conversation kept) ->
expired (SESSION_TTL: the reconciler reaps it). And which version of the templates a bundle is
on: a sleeping session on an older one is brought up to date as it wakes, awake ones by
`python -m service reapply`.

Whoever changes a session's objects (the archiver's deletes, a restore, a re-apply) holds its
bundle lock in Redis while it does. An archive's objects may outlive its deletes: a
ScaledObject waits on KEDA's finalizer, minutes when KEDA is busy with thousands. The archiver
does not wait for that (it would hold a slot of its pass per session): the session stays in
the sweeping index, its next passes drop it once its objects are gone, and a restore applies
only then, never onto an object about to vanish. A restore that cannot run now stays asked in
the restore index, where the worker picks it up: a chat to an archived session is never lost.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from service import bundle
from service.bundle import TemplateVersion, template_kinds
from service.core.config import Settings
from service.core.errors import ClusterNotReady, KubeError, KubeNotFound, SessionManagerError
from service.kube import Kube
from service.store import Store, keda_keys

log = logging.getLogger(__name__)

RESTORE_RETRY_SECONDS = 1.0
PAGE_SIZE = 200
# Sessions with a bundle: what `reapply` brings up to date (sleeping ones are on wake).
REAPPLIED_STATUSES = ("created", "waking", "running", "failed")
# A sleeping or failed session on an older version is re-applied before it wakes.
REFRESHED_STATUSES = ("sleeping", "failed")


# The bundle lock's life: longer than a sweep's deletes or an apply take.
LOCK_SECONDS = 120


def kinds_of(record: dict[str, str]) -> list[bundle.KindRef]:
    """The kinds a session's bundle was applied with, as its record says."""
    pairs = (item.split(" ", 1) for item in (record.get("bundle_kinds") or "").split(",") if item)
    return [bundle.KindRef(api, kind) for api, kind in pairs]


def kinds_of_pairs(pairs: list[tuple[str, str]]) -> list[bundle.KindRef]:
    return [bundle.KindRef(api, kind) for api, kind in pairs]


def sweep_kinds(settings: Settings, store: Store) -> list[bundle.KindRef]:
    """What a sweep must cover: the kinds the templates make now and every kind a bundle was
    ever applied with (a kind since removed from the templates is still swept from the
    sessions created with it)."""
    applied = [bundle.KindRef(api, kind) for api, kind in store.records.applied_kinds()]
    return list(dict.fromkeys([*template_kinds(settings, keda_keys), *applied]))


class Tiers:
    def __init__(self, settings: Settings, store: Store, kube: Kube,
                 version: TemplateVersion | None = None) -> None:
        self.settings = settings
        self.store = store
        self.kube = kube
        self.versions = version or TemplateVersion(settings, keda_keys)

    def version(self) -> str:
        return self.versions.current()

    def render(self, session_id: str) -> bundle.Bundle:
        return bundle.render(session_id, self.settings, keda_keys(session_id))

    # -- applying ------------------------------------------------------------------------

    def apply_new(self, session_id: str) -> tuple[str, list[tuple[str, str]]]:
        """Apply a new session's bundle (its id reserved, no record yet): (version, kinds).
        A failure releases the id and sweeps what was applied; a missing namespace or KEDA is
        ClusterNotReady."""
        version = self.version()
        rendered = self.render(session_id)
        kinds = [(k.api_version, k.kind) for k in rendered.kinds()]
        # Before the apply: a crash after it must not leave a kind no sweep knows of.
        self.store.records.note_applied_kinds(kinds)
        try:
            self.kube.apply(rendered)  # sweeps what it applied if it fails part-way
        except KubeNotFound as err:
            self.store.records.release_id(session_id)
            raise ClusterNotReady(
                f"Cannot create the session's objects ({err.message}): is the namespace "
                f"{self.settings.namespace!r} there and KEDA installed?") from err
        except BaseException:
            self.store.records.release_id(session_id)
            raise
        return version, kinds

    def discard(self, session_id: str, kinds: list[bundle.KindRef]) -> None:
        """Take back a bundle that has no record (a create that failed after its apply)."""
        try:
            self.kube.delete(session_id, kinds)
        except KubeError:
            log.exception("could not sweep a bundle without a record; the reconciler will",
                          extra={"session_id": session_id})

    def apply(self, session_id: str, *, statuses: Iterable[str],
              wait_for_lock_seconds: float = 0) -> str:
        """Apply the session's bundle as the templates make it now, if its status is one of
        `statuses` (read under the lock). Returns 'applied', 'skipped' (another status, or no
        record) or 'locked' (someone else is changing its objects, or its archive's are still
        being deleted). Raises KubeError."""
        token = secrets.token_hex(8)
        deadline = time.monotonic() + wait_for_lock_seconds
        while not self.store.bundles.take_bundle_lock(session_id, token, seconds=LOCK_SECONDS):
            if time.monotonic() >= deadline:
                return "locked"
            time.sleep(0.2)
        try:
            record = self.store.records.get_session(session_id)
            if record is None or record["status"] not in statuses:
                return "skipped"
            if not self._swept(session_id, record):
                return "locked"  # its archive's objects are still being deleted
            version = self.version()
            rendered = self.render(session_id)
            kinds = [(k.api_version, k.kind) for k in rendered.kinds()]
            self.store.records.note_applied_kinds(kinds)  # before: a crash must not hide a kind
            # A failure leaves the objects as they were (a live session keeps running).
            self.kube.apply(rendered, sweep_on_failure=False)
            before = self.store.bundles.note_bundle(session_id, version=version, kinds=kinds)
            if before is None or before == "terminating":
                # Deleted meanwhile: take back what this apply brought (else the reconciler
                # would, as an orphan, after its grace period).
                self.kube.delete(session_id, rendered.kinds())
                return "skipped"
            return "applied"
        finally:
            self.store.bundles.release_bundle_lock(session_id, token)

    def kinds_for(self, record: dict[str, str]) -> list[bundle.KindRef]:
        """Every kind the session's bundle may have: what it was applied with, and what the
        templates make now."""
        return list(dict.fromkeys([*kinds_of(record), *template_kinds(self.settings, keda_keys)]))

    def archived_kinds(self, record: dict[str, str]) -> list[bundle.KindRef]:
        """The kinds an archive sweeps: all but ARCHIVE_KEEP_KINDS (a workspace's claim)."""
        return [kind for kind in self.kinds_for(record)
                if kind.kind not in self.settings.archive_keep_kinds]

    def _swept(self, session_id: str, record: dict[str, str]) -> bool:
        """True unless the session's archive is still deleting its objects (under the bundle
        lock: once none is left, none comes back but by an apply)."""
        since = self.store.bundles.sweeping_since(session_id)
        if since is None:
            return True
        if self.kube.remaining(session_id, self.archived_kinds(record)):
            return False
        self.store.bundles.drop_sweeping({session_id: since})
        return True

    def restore(self, session_id: str) -> bool:
        """Bring an archived session's bundle back (a chat or a wake asked for it). False when
        it cannot now: it stays asked in the restore index and the worker tries again."""
        try:
            outcome = self.apply(session_id, statuses=("archived",))
            if outcome == "locked":
                self.store.bundles.restore_later(session_id, seconds=RESTORE_RETRY_SECONDS)
                return False
            self.store.bundles.drop_restore(session_id)  # done, or nothing left to restore
            if outcome == "applied":
                log.info("session restored from the archive", extra={"session_id": session_id})
                self.store.bundles.notify_work(session_id)
            return True
        except SessionManagerError as err:
            log.warning("could not restore the session now: %s", err.message,
                        extra={"session_id": session_id})
            # If Redis refuses this too, the ask is still due in the index: retried at once.
            with contextlib.suppress(SessionManagerError):
                self.store.bundles.restore_later(session_id, seconds=RESTORE_RETRY_SECONDS)
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
            for page in self.store.index.iter_status_pages(REAPPLIED_STATUSES, batch=PAGE_SIZE):
                records = self.store.records.get_sessions(page)
                figures["sessions"] += len(records)
                due = [sid for sid, record in records.items()
                       if force or record.get("bundle_version") != current]
                figures["current"] += len(records) - len(due)
                for outcome in pool.map(one, due):
                    figures[outcome] += 1
        return figures
