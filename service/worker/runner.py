"""The worker: delivers queued chats, keeps session status true to the cluster, and reclaims
what has no record. Safe to run as several replicas:

- delivery: any worker may deliver any session, one message at a time under a per-session
  lease in Redis (claim = atomic move into an in-flight list that survives a crash);
- status watching, reconciling and archiving: one leader each, elected with a renewed lease;
- restores of archived sessions a chat or a wake asked for (and their API process could not
  do): any worker, under the session's bundle lock;
- KEDA's external-push scaler (KEDA_SCALER=push): every replica serves it (`scaler`);
- liveness: every loop beats (`health`); /healthz on WORKER_HEALTH_PORT fails when one stalls.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from service.core.config import Settings
from service.core.errors import SessionManagerError
from service.kube import WATCH_READ_MARGIN_SECONDS, Kube
from service.pods import PodClient
from service.sessions.archiver import Archiver
from service.sessions.delivery import Claim, Deliveries
from service.sessions.pool import WarmPool
from service.sessions.tiers import Tiers
from service.store import Store
from service.worker.health import HealthServer, Heartbeats
from service.worker.leadership import LEADER_LEASE_SECONDS, Leadership
from service.worker.push_scaler import ScalerServer
from service.worker.reconciler import Reconciler
from service.worker.status_watch import StatusTracker, StatusWatch

log = logging.getLogger(__name__)

POOL_KEEP_INTERVAL_SECONDS = 1.0
REPORT_INTERVAL_SECONDS = 5.0  # how often a worker tells /health it is alive
WATCH_TIMEOUT_SECONDS = 2  # a watch request ends this often: how soon a term notices its end


class Worker:
    def __init__(self, settings: Settings, store: Store, kube: Kube,
                 pods: PodClient | None = None, *, worker_id: str | None = None,
                 delivery_threads: int | None = None,
                 watch_timeout_seconds: int = WATCH_TIMEOUT_SECONDS) -> None:
        self.settings = settings
        self.store = store
        self.kube = kube
        self.pods = pods or PodClient(settings, address_of=store.records.pod_address)
        self.deliveries = Deliveries(settings, store, self.pods)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.watch_timeout_seconds = watch_timeout_seconds
        # One thread per session being drained (a delivery waits on its agent).
        self.delivery_pool = ThreadPoolExecutor(
            delivery_threads or settings.delivery_concurrency, thread_name_prefix="deliver")
        self._draining: set[str] = set()
        self._draining_lock = threading.Lock()
        self.tracker = StatusTracker(store)
        self.health: HealthServer | None = None  # set by run(health_port=...)
        self.tiers = Tiers(settings, store, kube)
        self.archiver = Archiver(settings, store, kube, self.tiers)
        self.pool = WarmPool(settings, store, self.tiers)
        self.reconciler = Reconciler(settings, store, kube, archiver=self.archiver)
        self.leadership = Leadership(store, worker_id=self.worker_id,
                                     namespace=settings.namespace)
        # Sweeps of the archiver's passes, restores and the warm pool's new sessions: each
        # their own threads, so a long archive pass never keeps a restore (a chat waiting) or
        # a refill (the next create) behind it.
        self.archive_pool = ThreadPoolExecutor(settings.bundle_concurrency,
                                               thread_name_prefix="archive")
        self.restore_pool = ThreadPoolExecutor(settings.bundle_concurrency,
                                               thread_name_prefix="restore")
        self.refill_pool = ThreadPoolExecutor(settings.bundle_concurrency,
                                              thread_name_prefix="refill")
        self._restoring: set[str] = set()
        # What each loop may take between two beats before /healthz calls the worker stalled.
        watch_allowance = 2 * (watch_timeout_seconds + WATCH_READ_MARGIN_SECONDS) + 10
        self.heartbeats = Heartbeats({
            "delivery": 30.0,
            "watch:Deployment": watch_allowance, "watch:Pod": watch_allowance,
            # Both beat per page or sweep of a pass (a long pass is progress, not a stall),
            # and wait up to their interval between passes.
            "reconciler": max(180.0, 3.0 * settings.reconcile_interval_seconds),
            "archiver": 180.0, "pool": 180.0,
            "scaler": 30.0, "scaler-notify": 30.0,
        })
        self.status_watch = StatusWatch(kube, self.tracker, self.heartbeats,
                                        timeout_seconds=watch_timeout_seconds)

    # -- delivery ------------------------------------------------------------------------

    def deliver_due(self) -> int:
        """Start draining every session with due messages; returns how many were started."""
        return self._start_each(self.store.messages.due_sessions(limit=200), self._draining,
                                self.delivery_pool, self._drain_safely)

    def _start_each(self, session_ids: list[str], in_progress: set[str],
                    pool: ThreadPoolExecutor, job) -> int:
        """Submit `job(session_id)` for each session not already in `in_progress` (the job
        takes itself out of it when done); returns how many were started."""
        started = 0
        for session_id in session_ids:
            with self._draining_lock:
                if session_id in in_progress:
                    continue
                in_progress.add(session_id)
            pool.submit(job, session_id)
            started += 1
        return started

    def _drain_safely(self, session_id: str) -> None:
        try:
            self.drain(session_id)
        except SessionManagerError as err:
            log.warning("delivery paused: %s", err.message, extra={"session_id": session_id})
        except Exception:
            log.exception("delivery failed unexpectedly", extra={"session_id": session_id})
        finally:
            with self._draining_lock:
                self._draining.discard(session_id)

    def drain(self, session_id: str) -> int:
        """Deliver this session's messages in order until none is left or one fails."""
        delivered = 0
        while True:
            claimed = self.store.messages.claim_delivery(
                session_id, lease_seconds=self.settings.delivery_lease_seconds,
                max_attempts=self.settings.delivery_max_attempts,
                history_limits=(self.settings.history_max_messages,
                                self.settings.history_max_bytes))
            if claimed is None:
                return delivered
            # No touch needed: the message stays in the session's work set until it is
            # settled, so no scaler takes the pod away under the delivery.
            if not self.deliveries.attempt(Claim.of(session_id, claimed)).delivered:
                return delivered
            delivered += 1

    # -- archive and restore -------------------------------------------------------------

    def restore_due(self) -> int:
        """Start every restore that is due; returns how many were started."""
        return self._start_each(self.store.bundles.restores_due(limit=100), self._restoring,
                                self.restore_pool, self._restore_safely)

    def _restore_safely(self, session_id: str) -> None:
        try:
            self.tiers.restore(session_id)
        except Exception:
            log.exception("restore failed unexpectedly", extra={"session_id": session_id})
        finally:
            with self._draining_lock:
                self._restoring.discard(session_id)

    def archive_periodically(self, term_over: threading.Event) -> None:
        # A tenth of ARCHIVE_AFTER_SECONDS between passes (1 to 60 s): a session is archived
        # at most that much later than it could be.
        interval = min(60.0, max(1.0, self.settings.archive_after_seconds / 10))
        while not term_over.is_set():
            self.heartbeats.beat("archiver")
            figures = self.archiver.archive_idle(self.archive_pool,
                                              beat=lambda: self.heartbeats.beat("archiver"))
            if any(figures.values()):
                log.info("archive pass", extra={"figures": figures})
            self.heartbeats.beat("archiver")
            term_over.wait(interval)
        self.heartbeats.forget("archiver")

    def keep_pool_periodically(self, term_over: threading.Event) -> None:
        """The warm pool's keeper (one leader): recycle and refill every second."""
        while not term_over.is_set():
            self.heartbeats.beat("pool")
            self.pool.keep(self.refill_pool, beat=lambda: self.heartbeats.beat("pool"))
            self.heartbeats.beat("pool")
            term_over.wait(POOL_KEEP_INTERVAL_SECONDS)
        self.heartbeats.forget("pool")

    def reconcile_periodically(self, term_over: threading.Event) -> None:
        while not term_over.is_set():
            self.heartbeats.beat("reconciler")
            self.reconciler.run_once(beat=lambda: self.heartbeats.beat("reconciler"))
            self.heartbeats.beat("reconciler")
            term_over.wait(self.settings.reconcile_interval_seconds)
        self.heartbeats.forget("reconciler")

    # -- main loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event, *, health_port: int | None = None,
            scaler: bool | None = None) -> int:
        """Until `stop`; returns the exit code (2: this Redis database serves another
        installation). `health_port`: serve /healthz there; `scaler`: serve the push scaler
        (default: when KEDA_SCALER=push and SCALER_TLS_DIR is set)."""
        log.info("worker started", extra={"worker_id": self.worker_id})
        health = push = None
        if health_port is not None:
            health = self.health = HealthServer(self.heartbeats, port=health_port)
            health.start()
            log.info("health serving", extra={"port": health.port})
        if scaler is None:
            scaler = (self.settings.keda_scaler == "push"
                      and self.settings.scaler_tls_dir is not None)
        if scaler:
            push = ScalerServer(self.store, port=self.settings.scaler_port,
                                tls_dir=self.settings.scaler_tls_dir, heartbeats=self.heartbeats)
            push.start()
        leaders = [
            threading.Thread(target=self.leadership.lead,
                             args=("status-watcher", stop, self.status_watch.run),
                             daemon=True, name="status-watcher"),
            threading.Thread(target=self.leadership.lead,
                             args=("reconciler", stop, self.reconcile_periodically),
                             daemon=True, name="reconciler"),
        ]
        if self.settings.archive_after_seconds:
            leaders.append(threading.Thread(
                target=self.leadership.lead, args=("archiver", stop, self.archive_periodically),
                daemon=True, name="archiver"))
        # Led even with WARM_POOL_SIZE=0: what a larger size left behind is given back.
        leaders.append(threading.Thread(
            target=self.leadership.lead, args=("pool", stop, self.keep_pool_periodically),
            daemon=True, name="pool"))
        for thread in leaders:
            thread.start()
        reported_at = float("-inf")
        exit_code = 0
        installation_checked = False
        while not stop.is_set():
            self.heartbeats.beat("delivery")
            try:
                if not installation_checked:
                    # Before the first delivery, as every leader term does: a worker of
                    # another installation must not deliver (and fail) this one's messages.
                    # Checked here too because Redis may have been away at start.
                    conflict = self.store.coordination.installation_conflict(
                        self.settings.namespace)
                    if conflict:
                        log.error("stopping: %s", conflict)
                        exit_code = 2
                        stop.set()
                        break
                    installation_checked = True
                self.deliver_due()
                self.restore_due()
                if time.monotonic() - reported_at >= REPORT_INTERVAL_SECONDS:
                    # What the API's /health tells of the workers (stalled loops included).
                    self.store.coordination.report_worker(self.worker_id,
                                                          sorted(self.heartbeats.stalled()))
                    reported_at = time.monotonic()
            except SessionManagerError as err:
                log.warning("delivery loop: %s", err.message)
            stop.wait(self.settings.worker_poll_interval_seconds)
        for thread in leaders:
            thread.join(timeout=LEADER_LEASE_SECONDS)
        if push is not None:
            push.stop()
        self.delivery_pool.shutdown(wait=True)
        self.restore_pool.shutdown(wait=True)
        self.archive_pool.shutdown(wait=True, cancel_futures=True)
        self.refill_pool.shutdown(wait=True, cancel_futures=True)
        if health is not None:
            health.stop()
        log.info("worker stopped", extra={"worker_id": self.worker_id})
        return exit_code

