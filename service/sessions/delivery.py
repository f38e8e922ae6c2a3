"""One delivery attempt, the only one: relay -> pod -> settle.

The API uses it when it forwards a chat straight to a running pod, the worker for every
queued message. Whatever goes wrong in the exchange with the pod — it refused, timed out,
answered an error, cut its stream, or sent something no one could store (a reply nested too
deep; `pods` mends what it can, such as text that is not Unicode) — is a failed attempt with a
clear error, settled like any other: retried with backoff, then `failed` after
DELIVERY_MAX_ATTEMPTS. Never a 500, never a message left delivering.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading

from service.core.config import Settings
from service.core.errors import SessionManagerError, Unavailable
from service.pods import PodClient, PodError, PodReply
from service.sessions.relay import ChunkRelay
from service.store import Store

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 60.0
NOT_SENT_RETRY_SECONDS = 0.5  # a pod refusing connections right after it became Ready


@dataclasses.dataclass(frozen=True)
class Claim:
    """A message under the session's delivery lease, ready for an attempt."""

    session_id: str
    seq: int
    message_id: str
    message: str
    attempt: int
    envelope: str
    lease_token: str
    user_id: str = ""
    history: str = "[]"  # JSON text, as the store read it with the claim

    @classmethod
    def of(cls, session_id: str, claimed: dict) -> Claim:
        """From what the store's claim returned."""
        message = claimed["message"]
        return cls(session_id, int(message["seq"]), message["message_id"], message["message"],
                   int(message.get("attempts") or 1), claimed["envelope"],
                   claimed["lease_token"], claimed.get("user_id") or "",
                   claimed.get("history") or "[]")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """delivered: the pod answered (`reply`). `stored`: the message as settled, empty while
    the settle waits for Redis (the message is then still in flight under its lease)."""

    delivered: bool
    reply: dict | None = None
    stored: dict = dataclasses.field(default_factory=dict)


class Deliveries:
    def __init__(self, settings: Settings, store: Store, pods: PodClient) -> None:
        self.settings = settings
        self.store = store
        self.pods = pods

    def attempt(self, claim: Claim, *, forwarded: bool = False) -> Outcome:
        """Deliver once and settle. forwarded: the API answers a chat with this attempt's
        reply, so a settle that must wait for Redis is done in the background (the worker
        waits up to its lease instead)."""
        relay = ChunkRelay(self.store, claim.session_id, seq=claim.seq,
                           message_id=claim.message_id, attempt=claim.attempt,
                           lease_token=claim.lease_token)
        try:
            answer = self.pods.chat(claim.session_id, claim.message, claim.message_id,
                                    user_id=claim.user_id, history=claim.history,
                                    on_chunk=relay)
        except PodError as err:
            return self._failed(claim, err, forwarded)
        except Exception as err:
            log.exception("delivery failed unexpectedly", extra=self._context(claim))
            return self._failed(claim, PodError(
                f"delivery failed: {type(err).__name__}: {str(err)[:200]}"), forwarded)
        relay.flush()  # the log has the whole text in chunks before the reply
        return self._delivered(claim, answer, forwarded)

    def _failed(self, claim: Claim, err: PodError, forwarded: bool) -> Outcome:
        # Never reached the pod (refused right after a wake, say): again soon, uncounted.
        # Cannot succeed (a reply past MAX_REPLY_BYTES, nested too deep): failed now.
        backoff = min(MAX_BACKOFF_SECONDS,
                      self.settings.delivery_backoff_seconds * 2 ** (claim.attempt - 1))
        try:
            stored = self.store.messages.finish_delivery(
                claim.session_id, envelope=claim.envelope, lease_token=claim.lease_token,
                delivered=False, reply_or_error=str(err),
                max_attempts=0 if err.permanent else self.settings.delivery_max_attempts,
                retry_in_seconds=NOT_SENT_RETRY_SECONDS if err.not_sent else backoff,
                not_sent=err.not_sent,
                retry_for_seconds=0 if forwarded else self.settings.delivery_lease_seconds)
        except Unavailable:
            if not forwarded:
                raise
            # Still in flight under its lease: a worker tries again once it lapses.
            log.warning("a failed attempt could not be recorded (Redis unavailable)",
                        extra=self._context(claim))
            return Outcome(False)
        log.warning("delivery attempt %s failed (%s): %s", claim.attempt, stored.get("state"),
                    err, extra=self._context(claim))
        return Outcome(False, stored=stored)

    def _delivered(self, claim: Claim, answer: PodReply, forwarded: bool) -> Outcome:
        def settle(retry_for_seconds: float) -> dict:
            return self.store.messages.finish_delivery(
                claim.session_id, envelope=claim.envelope, lease_token=claim.lease_token,
                delivered=True, reply_or_error=json.dumps(answer.reply),
                max_attempts=self.settings.delivery_max_attempts, retry_in_seconds=0,
                forwarded=forwarded, budget_bytes=self.settings.max_session_bytes,
                retry_for_seconds=retry_for_seconds, warning="; ".join(answer.warnings),
                first_byte_ms=answer.first_byte_ms)

        if answer.warnings:
            log.warning("the pod's reply was mended: %s", "; ".join(answer.warnings),
                        extra=self._context(claim))
        try:
            stored = settle(0 if forwarded else self.settings.delivery_lease_seconds)
        except Unavailable:
            if not forwarded:
                raise
            # The pod has answered: the caller gets the reply now, and the reply is recorded
            # once Redis is back (until then the message stays in flight under its lease; if
            # that lapses first, a worker redelivers and the pod answers the same message_id
            # with the same reply).
            log.warning("reply not recorded yet (Redis unavailable); retrying in the "
                        "background", extra=self._context(claim))
            threading.Thread(target=self._settle_later, args=(settle, claim),
                             daemon=True).start()
            return Outcome(True, answer.reply)
        log.info("message delivered", extra={**self._context(claim), "forwarded": forwarded})
        return Outcome(True, answer.reply, stored)

    def _settle_later(self, settle, claim: Claim) -> None:
        try:
            settle(self.settings.delivery_lease_seconds)
        except SessionManagerError as err:
            log.warning("reply still not recorded (%s); the worker will redeliver after the "
                        "lease", err.message, extra=self._context(claim))

    @staticmethod
    def _context(claim: Claim) -> dict:
        return {"session_id": claim.session_id, "message_id": claim.message_id}
