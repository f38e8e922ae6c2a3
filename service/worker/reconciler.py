"""Nothing runs forever without a record, and no record points at nothing.

One pass: (1) records whose TTL passed are swept from the cluster and the indexes; (2) bundles
in the cluster with no record and no create in progress are swept once older than a grace
period; (3) records whose Deployment is gone are marked failed, and deletes that were
interrupted are finished; (4) a paused flag that drifted from the ScaledObject's pause
annotation (a crash or a Redis error between the two writes of a sleep or a wake) is set back
to what the cluster does — the annotation is always written first; (5) an archived session
with objects not being deleted (its archive's deletes failed) is swept again; (6) a session
unhealthy (failed, or crash-looping) for FAILED_SESSION_GRACE_SECONDS has its pending messages
failed with the reason, so they neither wait forever nor hold the pod up. The figures are
returned and logged.

At scale: cluster lists are paged and metadata-only, records are read a page at a time in one
round trip, and every expired record is reaped in the pass however many there are. A session
whose sweep fails is counted and skipped; only an API server that fails several sessions in a
row (it is down, not refusing one) ends the pass early. A pass beats (`beat`) per page and per
sweep, so the worker's liveness judges the pass's progress, not its length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from service import bundle
from service.core import names
from service.core.config import Settings
from service.core.errors import KubeError, KubeUnavailable, SessionManagerError
from service.core.transitions import Actor
from service.kube import DEPLOYMENT_KIND, PAUSE_KIND, PAUSED_REPLICAS_ANNOTATION, Kube
from service.sessions.archiver import Archiver
from service.sessions.tiers import Tiers, sweep_kinds
from service.store import Store

log = logging.getLogger(__name__)

BUNDLE_MISSING = "BundleMissing"
PAGE_SIZE = 500
# Unreachable-API failures in a row after which the pass stops: the server is down, and
# trying every other session would only add a timeout each.
UNAVAILABLE_IN_A_ROW = 3


class Reconciler:
    def __init__(self, settings: Settings, store: Store, kube: Kube, *,
                 archiver: Archiver | None = None) -> None:
        self.settings = settings
        self.store = store
        self.kube = kube
        self.archiver = archiver or Archiver(settings, store, kube, Tiers(settings, store, kube))

    def run_once(self, beat: Callable[[], None] = lambda: None) -> dict[str, int]:
        figures = {"expired_swept": 0, "orphans_swept": 0, "records_failed": 0,
                   "deletes_finished": 0, "pauses_repaired": 0, "archives_swept": 0,
                   "messages_failed": 0, "errors": 0}
        self._paused: dict[str, bool] = {}
        self._unkept: set[str] = set()  # sessions with objects an archive does not keep
        self._unavailable_in_a_row = 0
        self._beat = beat
        try:
            self._fail_pending_of_failed(figures)
            kinds = sweep_kinds(self.settings, self.store)
            self._sweep_expired(kinds, figures)
            live = self._live_bundles(kinds)
            self._sweep_orphans(live, kinds, figures)
            self._check_records(live, kinds, figures)
        except SessionManagerError as err:
            figures["errors"] += 1
            log.warning("reconcile pass stopped early: %s", err.message)
        if any(figures.values()):
            log.info("reconciled", extra={"figures": figures})
        return figures

    def _fail_pending_of_failed(self, figures: dict[str, int]) -> None:
        grace = self.settings.failed_session_grace_seconds
        before_ms = int((time.time() - grace) * 1000)
        offset = 0
        while True:
            page = self.store.messages.failing_since(before_ms=before_ms, offset=offset,
                                                     limit=PAGE_SIZE)
            self._beat()
            for session_id in page:
                failed = self.store.messages.fail_pending(session_id, before_ms=before_ms,
                                                 grace_seconds=grace)
                if failed:
                    log.info("failed the pending messages of a session that did not recover",
                             extra={"session_id": session_id, "messages": failed})
                figures["messages_failed"] += failed
            if len(page) < PAGE_SIZE:
                return
            offset += len(page)

    def _sweep(self, session_id: str, kinds: list[bundle.KindRef],
               figures: dict[str, int]) -> bool:
        """Label-sweep one session. A failure is counted and the session skipped (the next
        pass retries it), so one session cannot block every other; several unreachable-API
        failures in a row stop the pass."""
        self._beat()
        try:
            self.kube.delete(session_id, kinds)
        except KubeError as err:
            figures["errors"] += 1
            log.warning("could not sweep the session's objects: %s", err.message,
                        extra={"session_id": session_id})
            if isinstance(err, KubeUnavailable):
                self._unavailable_in_a_row += 1
                if self._unavailable_in_a_row >= UNAVAILABLE_IN_A_ROW:
                    raise
            return False
        self._unavailable_in_a_row = 0
        return True

    def _sweep_expired(self, kinds: list[bundle.KindRef], figures: dict[str, int]) -> None:
        now = time.time()
        offset = 0  # past the entries this pass could not reap (they stay in the index)
        while True:
            expired, scanned = self.store.index.expired_page(now=now, offset=offset,
                                                       limit=PAGE_SIZE)
            if not scanned:
                return
            self._beat()
            reaped = 0
            for session_id in expired:
                if self._sweep(session_id, kinds, figures):
                    self.store.records.delete_session(session_id)
                    figures["expired_swept"] += 1
                    reaped += 1
            offset += scanned - reaped

    def _live_bundles(self, kinds: list[bundle.KindRef]) -> dict[str, float]:
        """Session id -> oldest creation time (epoch s) of any of its objects."""
        live: dict[str, float] = {}
        for kind in kinds:
            for page in self.kube.list_pages(kind, bundle.label_selector(), metadata_only=True,
                                             page_size=PAGE_SIZE):
                self._beat()
                for obj in page:
                    self._note_live(obj, live, pause_kind=kind == PAUSE_KIND,
                                    kept=kind.kind in self.settings.archive_keep_kinds)
        return live

    def _note_live(self, obj: dict, live: dict[str, float], *, pause_kind: bool,
                   kept: bool) -> None:
        session_id = names.session_of_object(obj)
        if session_id is None or obj["metadata"].get("deletionTimestamp"):
            return  # not ours, or already being deleted (e.g. waiting on KEDA)
        created = _epoch(obj["metadata"].get("creationTimestamp"))
        live[session_id] = min(created, live.get(session_id, created))
        if not kept:  # an archive keeps these (a workspace): not a sign its sweep failed
            self._unkept.add(session_id)
        if pause_kind:  # metadata-only objects do not say their kind: the listing does
            annotations = obj["metadata"].get("annotations") or {}
            self._paused[session_id] = annotations.get(PAUSED_REPLICAS_ANNOTATION) == "0"

    def _sweep_orphans(self, live: dict[str, float], kinds: list[bundle.KindRef],
                       figures: dict[str, int]) -> None:
        known = self.store.index.known_ids(list(live))
        cutoff = time.time() - self.settings.reconcile_grace_seconds
        for session_id, created in live.items():
            if session_id not in known and created <= cutoff:
                log.info("sweeping a bundle with no session record",
                         extra={"session_id": session_id})
                if self._sweep(session_id, kinds, figures):
                    figures["orphans_swept"] += 1

    def _check_records(self, live: dict[str, float], kinds: list[bundle.KindRef],
                       figures: dict[str, int]) -> None:
        deployments = {names.session_of_object(obj) for page in self.kube.list_pages(
            DEPLOYMENT_KIND, bundle.label_selector(), metadata_only=True, page_size=PAGE_SIZE)
            for obj in page}
        cutoff = time.time() - self.settings.reconcile_grace_seconds
        for ids in self.store.index.iter_id_pages(batch=PAGE_SIZE):
            self._beat()
            for session_id, record in self.store.records.get_sessions(ids).items():
                # Not a bundle applied since the listing (a create, a restore) either.
                applied = float(record.get("applied_at") or 0)
                if _epoch(record["created_at"]) <= cutoff and applied <= cutoff:
                    self._check_record(session_id, record, deployments, live, kinds,
                                       figures)

    def _check_record(self, session_id: str, record: dict[str, str], deployments: set,
                      live: dict[str, float], kinds: list[bundle.KindRef],
                      figures: dict[str, int]) -> None:
        if record["status"] == "terminating":
            if self._sweep(session_id, kinds, figures):  # a delete that died half-way
                self.store.records.delete_session(session_id)
                figures["deletes_finished"] += 1
        elif record["status"] == "archived":
            # `live` leaves out objects being deleted (an archive's ScaledObject waiting on
            # KEDA), and the kinds an archive keeps: these are an archive whose deletes
            # failed, or a restore's record update.
            if session_id in self._unkept:
                try:
                    if self.archiver.sweep_if_free(session_id):
                        figures["archives_swept"] += 1
                except KubeError as err:
                    figures["errors"] += 1
                    log.warning("could not sweep an archived session: %s", err.message,
                                extra={"session_id": session_id})
        elif session_id not in deployments and record["status"] != "failed":
            _, written = self.store.records.set_status(session_id, "failed", actor=Actor.RECONCILER,
                                               reason=BUNDLE_MISSING)
            figures["records_failed"] += int(written)
        elif (paused := self._paused.get(session_id)) is not None \
                and paused != (record.get("paused") == "1") \
                and self._still_drifted(session_id, paused):
            log.info("pause flag drifted from the cluster; repaired",
                     extra={"session_id": session_id, "paused": paused})
            figures["pauses_repaired"] += int(self.store.records.repair_paused(session_id, paused))

    def _still_drifted(self, session_id: str, listed_paused: bool) -> bool:
        """The listing is from the start of the pass: a sleep or wake since then is not drift.
        Read the annotation again and the flag after it (both writers set the annotation
        first, so a flag that disagrees with a fresh read is one that lags)."""
        try:
            paused = self.kube.is_paused(session_id)
        except KubeError:
            return False  # judged again next pass
        record = self.store.records.get_session(session_id)
        return (paused == listed_paused and record is not None
                and (record.get("paused") == "1") != paused)


def _epoch(timestamp: Any) -> float:
    if isinstance(timestamp, datetime):
        return timestamp.timestamp()
    if not timestamp:
        return time.time()
    return datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()

