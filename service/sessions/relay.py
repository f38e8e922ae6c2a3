"""Relaying a streaming pod's reply, as it is written, to the session's event log.

Chunks are coalesced: the first goes out at once (time to first chunk), later ones at most
every FLUSH_SECONDS, so a pod writing token by token costs a few Redis writes a second, not
one per token; what is left goes out before the final reply is stored, so a client reading
along sees the whole text in chunks. Chunks are a live view (the log drops them when the reply
is written, so a reader that lags gets the reply where the last chunks were): the final reply,
stored once when the pod is done, is what the conversation keeps. So a chunk that cannot be
written (Redis away, the attempt's lease lost to another worker) stops the relay, never the
delivery.
"""

from __future__ import annotations

import logging
import time

from service.core.errors import SessionManagerError
from service.store import Store

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.05


class ChunkRelay:
    def __init__(self, store: Store, session_id: str, *, seq: int, message_id: str,
                 attempt: int, lease_token: str) -> None:
        self.store = store
        self.session_id = session_id
        self.seq = seq
        self.message_id = message_id
        self.attempt = attempt
        self.lease_token = lease_token
        self.relayed = 0  # chunks written to the log
        self._pending: list[str] = []
        self._flushed_at = float("-inf")
        self._stopped = False

    def __call__(self, text: str) -> None:
        if self._stopped or not text:
            return
        self._pending.append(text)
        if time.monotonic() - self._flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._stopped or not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._flushed_at = time.monotonic()
        try:
            taken = self.store.events.append_chunk(
                self.session_id, lease_token=self.lease_token, seq=self.seq,
                message_id=self.message_id, attempt=self.attempt, text=text)
        except SessionManagerError as err:
            log.warning("reply chunks not relayed (%s); the final reply will be",
                        err.message, extra={"session_id": self.session_id})
            taken = False
        except Exception:
            log.exception("reply chunks not relayed; the final reply will be",
                          extra={"session_id": self.session_id})
            taken = False
        if taken:
            self.relayed += 1
        else:
            self._stopped = True
