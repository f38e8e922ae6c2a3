"""Nothing runs forever without a record, and no record points at nothing.

One pass: (1) records whose TTL passed are swept from the cluster and the indexes; (2) bundles
in the cluster with no record and no create in progress are swept once older than a grace
period; (3) records whose Deployment is gone are marked failed, and deletes that were
interrupted are finished; (4) a paused flag that drifted from the ScaledObject's pause
annotation (a crash or a Redis error between the two writes of a sleep or a wake) is set back
to what the cluster does — the annotation is always written first. The figures are returned
and logged.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from . import bundle
from .bundle import KindRef
from .config import Settings
from .errors import KubeError, KubeUnavailable, SessionManagerError
from .kube import DEPLOYMENT_KIND, PAUSE_KIND, PAUSED_REPLICAS_ANNOTATION, Kube
from .sessions import template_kinds
from .status import session_of
from .store import Store

log = logging.getLogger(__name__)

BUNDLE_MISSING = "BundleMissing"


class Reconciler:
    def __init__(self, settings: Settings, store: Store, kube: Kube) -> None:
        self.settings = settings
        self.store = store
        self.kube = kube

    def run_once(self) -> dict[str, int]:
        figures = {"expired_swept": 0, "orphans_swept": 0, "records_failed": 0,
                   "deletes_finished": 0, "pauses_repaired": 0, "errors": 0}
        self._paused: dict[str, bool] = {}
        kinds = template_kinds(self.settings)
        try:
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

    def _sweep(self, session_id: str, kinds: list[bundle.KindRef],
               figures: dict[str, int]) -> bool:
        """Label-sweep one session. A refusal about this session (403, 409...) is counted and
        skipped so it cannot block every other session; an unreachable API stops the pass."""
        try:
            self.kube.delete(session_id, kinds)
        except KubeUnavailable:
            raise
        except KubeError as err:
            figures["errors"] += 1
            log.warning("could not sweep the session's objects: %s", err.message,
                        extra={"session_id": session_id})
            return False
        return True

    def _sweep_expired(self, kinds: list[bundle.KindRef], figures: dict[str, int]) -> None:
        for session_id in self.store.expired_ids(now=time.time()):
            if self._sweep(session_id, kinds, figures):
                self.store.delete_session(session_id)
                figures["expired_swept"] += 1

    def _live_bundles(self, kinds: list[bundle.KindRef]) -> dict[str, float]:
        """Session id -> oldest creation time (epoch s) of any of its objects."""
        live: dict[str, float] = {}
        for kind in kinds:
            for obj in self.kube.list_objects(kind, bundle.label_selector()):
                session_id = session_of(obj)
                if session_id is None or obj["metadata"].get("deletionTimestamp"):
                    continue  # not ours, or already being deleted (e.g. waiting on KEDA)
                created = _epoch(obj["metadata"].get("creationTimestamp"))
                live[session_id] = min(created, live.get(session_id, created))
                if KindRef.of(obj) == PAUSE_KIND:
                    annotations = obj["metadata"].get("annotations") or {}
                    self._paused[session_id] = (
                        annotations.get(PAUSED_REPLICAS_ANNOTATION) == "0")
        return live

    def _sweep_orphans(self, live: dict[str, float], kinds: list[bundle.KindRef],
                       figures: dict[str, int]) -> None:
        known = self.store.known_ids(list(live))
        cutoff = time.time() - self.settings.reconcile_grace_seconds
        for session_id, created in live.items():
            if session_id not in known and created <= cutoff:
                log.info("sweeping a bundle with no session record",
                         extra={"session_id": session_id})
                if self._sweep(session_id, kinds, figures):
                    figures["orphans_swept"] += 1

    def _check_records(self, live: dict[str, float], kinds: list[bundle.KindRef],
                       figures: dict[str, int]) -> None:
        deployments = {session_of(obj) for obj in self.kube.list_objects(
            DEPLOYMENT_KIND, bundle.label_selector())}
        cutoff = time.time() - self.settings.reconcile_grace_seconds
        for session_id in self.store.iter_ids():
            record = self.store.get_session(session_id)
            if record is None or _epoch(record["created_at"]) > cutoff:
                continue
            if record["status"] == "terminating":
                if self._sweep(session_id, kinds, figures):  # a delete that died half-way
                    self.store.delete_session(session_id)
                    figures["deletes_finished"] += 1
            elif session_id not in deployments and record["status"] != "failed":
                self.store.set_status(session_id, "failed", reason=BUNDLE_MISSING)
                figures["records_failed"] += 1
            elif (paused := self._paused.get(session_id)) is not None \
                    and paused != (record.get("paused") == "1") \
                    and self._still_drifted(session_id, paused):
                log.info("pause flag drifted from the cluster; repaired",
                         extra={"session_id": session_id, "paused": paused})
                self.store.set_paused(session_id, paused)
                figures["pauses_repaired"] += 1


    def _still_drifted(self, session_id: str, listed_paused: bool) -> bool:
        """The listing is from the start of the pass: a sleep or wake since then is not drift.
        Read the annotation again and the flag after it (both writers set the annotation
        first, so a flag that disagrees with a fresh read is one that lags)."""
        try:
            paused = self.kube.is_paused(session_id)
        except KubeUnavailable:
            raise
        except KubeError:
            return False
        record = self.store.get_session(session_id)
        return (paused == listed_paused and record is not None
                and (record.get("paused") == "1") != paused)


def _epoch(timestamp: Any) -> float:
    if isinstance(timestamp, datetime):
        return timestamp.timestamp()
    if not timestamp:
        return time.time()
    return datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()

