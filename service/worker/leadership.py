"""Leader roles among worker replicas: a named lease in Redis, renewed every third of its
life, held by one replica at a time. The archiver, the reconciler and the status watch act on
every record of the database, so a replica of another installation leads none of them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from service.core.errors import SessionManagerError
from service.store import Store

log = logging.getLogger(__name__)

LEADER_LEASE_SECONDS = 15


class Leadership:
    def __init__(self, store: Store, *, worker_id: str, namespace: str) -> None:
        self.store = store
        self.worker_id = worker_id
        self.namespace = namespace

    def lead(self, name: str, stop: threading.Event,
             body: Callable[[threading.Event], None]) -> None:
        """Run `body(term_over)` whenever this worker holds the `name` lease."""
        while not stop.is_set():
            try:
                # The archiver, reconciler and watch act on every record in this database:
                # a worker of another installation leads none of them here.
                conflict = self.store.coordination.installation_conflict(self.namespace)
                if conflict:
                    log.error("not leading the %s: %s", name, conflict)
                    stop.wait(LEADER_LEASE_SECONDS)
                    continue
                if not self.store.coordination.acquire_lease(name, self.worker_id,
                                                seconds=LEADER_LEASE_SECONDS):
                    stop.wait(LEADER_LEASE_SECONDS / 3)
                    continue
            except SessionManagerError as err:
                log.warning("cannot take the %s lease: %s", name, err.message)
                stop.wait(2)
                continue
            term_over = threading.Event()
            renewer = threading.Thread(target=self._renew, args=(name, stop, term_over),
                                       daemon=True)
            renewer.start()
            try:
                body(term_over)
            except SessionManagerError as err:
                log.warning("%s interrupted: %s", name, err.message)
                stop.wait(1)
            except Exception:
                log.exception("%s failed", name)
                stop.wait(1)
            finally:
                term_over.set()
                renewer.join()
        # A clean stop hands the role over at once instead of after the lease lapses.
        try:
            self.store.coordination.release_lease(name, self.worker_id)
        except SessionManagerError as err:
            log.warning("cannot release the %s lease: %s", name, err.message)

    def _renew(self, name: str, stop: threading.Event, term_over: threading.Event) -> None:
        """Renew the lease every third of its life; end the term when it is lost or at stop
        (checked often, so a stopping worker does not hold its roles for seconds)."""
        renew_at = time.monotonic() + LEADER_LEASE_SECONDS / 3
        while not term_over.wait(0.2):
            if stop.is_set():
                term_over.set()
                return
            if time.monotonic() < renew_at:
                continue
            renew_at = time.monotonic() + LEADER_LEASE_SECONDS / 3
            try:
                held = self.store.coordination.acquire_lease(name, self.worker_id,
                                                seconds=LEADER_LEASE_SECONDS)
            except SessionManagerError:
                held = False
            if not held:
                term_over.set()
