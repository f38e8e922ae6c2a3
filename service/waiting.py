"""Holding a chat until its reply (`Prefer: wait=N`, RFC 7240).

The message is in Redis before anyone waits for it, so a held request is only a client waiting
for an outcome: when the client gives up, or this process stops, nothing is lost — the answer
is 202 and the reply arrives in /messages as usual. Under the API's gevent workers a held
request is a greenlet and an Event, no thread.

One pub/sub subscription per process hears every settled message (`<session id>:<seq>`,
published by the script that settles it, from any worker or API replica) and wakes the
waiters of that message. Pub/sub is best effort (a subscription that broke, a publish made
before it was up), so each waiter also reads the message after registering and again every
few seconds: a missed notice costs latency, never the reply.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections.abc import Iterable

from .errors import SessionManagerError
from .store import Store

log = logging.getLogger(__name__)

RECHECK_SECONDS = 5.0
RESUBSCRIBE_SECONDS = 1.0
SETTLED_STATES = ("delivered", "failed")
_WAIT = re.compile(r"^\s*wait\s*=\s*(\d{1,6})\s*$", re.IGNORECASE)
_all: weakref.WeakSet[ReplyWaiter] = weakref.WeakSet()


def requested_wait(prefer_headers: Iterable[str]) -> int | None:
    """The `wait` preference of Prefer headers, in seconds, or None. A preference that is
    not understood is ignored, as RFC 7240 asks (no error)."""
    for header in prefer_headers:
        for preference in header.split(","):
            match = _WAIT.match(preference.split(";")[0])
            if match:
                return int(match.group(1))
    return None


def release_all() -> None:
    """The process is stopping: every held request answers now (202) instead of being cut
    at the graceful timeout."""
    for waiter in list(_all):
        waiter.release()


class ReplyWaiter:
    def __init__(self, store: Store, *, max_kept: int) -> None:
        self.store = store
        self.max_kept = max_kept
        self._events: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self._released = False
        _all.add(self)

    def wait(self, session_id: str, seq: int, timeout: float) -> dict | None:
        """The message once settled (delivered or failed, with its reply), or None when
        `timeout` passed first (or the process is stopping)."""
        self._listen()
        key = f"{session_id}:{seq}"
        event = threading.Event()
        with self._lock:
            self._events.setdefault(key, set()).add(event)
        deadline = time.monotonic() + timeout
        try:
            while True:
                # Read after registering: a settle between the two is not missed.
                message = self.store.message(session_id, seq, max_kept=self.max_kept)
                if message is None or message.get("state") in SETTLED_STATES:
                    return message
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._released:
                    return None
                event.wait(min(remaining, RECHECK_SECONDS))
                event.clear()
        finally:
            with self._lock:
                waiters = self._events.get(key, set())
                waiters.discard(event)
                if not waiters:
                    self._events.pop(key, None)

    def release(self) -> None:
        self._released = True
        self._stop.set()
        self._wake(None)

    def _wake(self, key: str | None) -> None:
        with self._lock:
            events = [e for k, es in self._events.items() if key is None or k == key
                      for e in es]
        for event in events:
            event.set()

    def _listen(self) -> None:
        with self._lock:
            if self._listener is None:
                self._listener = threading.Thread(target=self._run, name="reply-waiter",
                                                  daemon=True)
                self._listener.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for note in self.store.settled_notifications(self._stop):
                    # None: (re)subscribed; what was published before is re-read by all.
                    self._wake(note)
            except SessionManagerError as err:
                log.warning("settled-message notices interrupted: %s", err.message)
                self._stop.wait(RESUBSCRIBE_SECONDS)
            except Exception:
                # Never die: without this thread every held chat waits for its re-reads.
                log.exception("settled-message listener failed; resubscribing")
                self._stop.wait(RESUBSCRIBE_SECONDS)
