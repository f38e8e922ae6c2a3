"""One pub/sub subscription per process that wakes the requests waiting on Redis: chats held
with `Prefer: wait` (a message settled) and open /events streams (a session's log grew).

Pub/sub is best effort (a subscription that broke, a publish made before it was up), so every
waiter also re-reads what it waits for after registering and every few seconds: a missed
notice costs latency, never data. Under the API's gevent workers a waiter is a greenlet and an
Event, no thread.
"""

from __future__ import annotations

import logging
import threading
import weakref

from service.core.errors import SessionManagerError
from service.store import EVENTS_CHANNEL, SETTLED_CHANNEL, Store

log = logging.getLogger(__name__)

RESUBSCRIBE_SECONDS = 1.0
CHANNELS = (SETTLED_CHANNEL, EVENTS_CHANNEL)
_all: weakref.WeakSet[Notices] = weakref.WeakSet()


def release_all() -> None:
    """The process is stopping: wake every waiter for good (held chats answer 202, event
    streams end so their clients resume on another replica)."""
    for notices in list(_all):
        notices.release()


class Notices:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiters: dict[tuple[str, str], set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self.released = False
        _all.add(self)

    def register(self, channel: str, key: str) -> threading.Event:
        """An Event set whenever `key` is published on `channel` (and at release)."""
        self._listen()
        event = threading.Event()
        if self.released:
            event.set()
        with self._lock:
            self._waiters.setdefault((channel, key), set()).add(event)
        return event

    def unregister(self, channel: str, key: str, event: threading.Event) -> None:
        with self._lock:
            waiters = self._waiters.get((channel, key), set())
            waiters.discard(event)
            if not waiters:
                self._waiters.pop((channel, key), None)

    def release(self) -> None:
        self.released = True
        self._stop.set()
        self._wake(None)

    def _wake(self, notice: tuple[str, str] | None) -> None:
        with self._lock:
            if notice is None:
                events = [e for es in self._waiters.values() for e in es]
            else:
                events = list(self._waiters.get(notice, ()))
        for event in events:
            event.set()

    def _listen(self) -> None:
        with self._lock:
            if self._listener is None and not self.released:
                self._listener = threading.Thread(target=self._run, name="notices",
                                                  daemon=True)
                self._listener.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for notice in self.store.coordination.notices(CHANNELS, self._stop):
                    # None: (re)subscribed; what was published before is re-read by all.
                    self._wake(notice)
            except SessionManagerError as err:
                log.warning("notices interrupted: %s", err.message)
                self._stop.wait(RESUBSCRIBE_SECONDS)
            except Exception:
                # Never die: without this thread every waiter waits for its re-reads.
                log.exception("notice listener failed; resubscribing")
                self._stop.wait(RESUBSCRIBE_SECONDS)
