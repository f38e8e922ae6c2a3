"""Holding a chat until its reply (`Prefer: wait=N`, RFC 7240).

The message is in Redis before anyone waits for it, so a held request is only a client waiting
for an outcome: when the client gives up, or this process stops, nothing is lost — the answer
is 202 and the reply arrives in /messages and /events as usual. The process's `Notices` hears
every settled message (`<session id>:<seq>`, published by the script that settles it, from
any worker or API replica); each waiter also re-reads its message every few seconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from service.sessions.notices import Notices
from service.store import SETTLED_CHANNEL, Store

RECHECK_SECONDS = 5.0
SETTLED_STATES = ("delivered", "failed")
_WAIT = re.compile(r"^\s*wait\s*=\s*(\d{1,6})\s*$", re.IGNORECASE)


def requested_wait(prefer_headers: Iterable[str]) -> int | None:
    """The `wait` preference of Prefer headers, in seconds, or None. A preference that is
    not understood is ignored, as RFC 7240 asks (no error)."""
    for header in prefer_headers:
        for preference in header.split(","):
            match = _WAIT.match(preference.split(";")[0])
            if match:
                return int(match.group(1))
    return None


class ReplyWaiter:
    def __init__(self, store: Store, notices: Notices, *, max_kept: int) -> None:
        self.store = store
        self.notices = notices
        self.max_kept = max_kept

    def wait(self, session_id: str, seq: int, timeout: float) -> dict | None:
        """The message once settled (delivered or failed, with its reply), or None when
        `timeout` passed first (or the process is stopping)."""
        key = f"{session_id}:{seq}"
        event = self.notices.register(SETTLED_CHANNEL, key)
        deadline = time.monotonic() + timeout
        try:
            while True:
                # Read after registering: a settle between the two is not missed.
                message = self.store.messages.message(session_id, seq, max_kept=self.max_kept)
                if message is None or message.get("state") in SETTLED_STATES:
                    return message
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.notices.released:
                    return None
                event.wait(min(remaining, RECHECK_SECONDS))
                event.clear()
        finally:
            self.notices.unregister(SETTLED_CHANNEL, key, event)
