"""The chat use cases: admitting a message, answering it straight from a running pod (one
delivery attempt, the same as the worker's) or keeping it for the worker, holding a chat for
its reply, a retried message_id, the conversation."""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import threading
from typing import Any

from service.core.clock import iso, utc_now
from service.core.config import Settings
from service.core.errors import (
    BacklogFull,
    Conflict,
    InvalidField,
    PayloadTooLarge,
    SessionNotFound,
    SessionStorageFull,
    Unavailable,
)
from service.sessions.delivery import Claim, Deliveries
from service.sessions.results import Result
from service.sessions.tiers import Tiers
from service.sessions.waiting import ReplyWaiter
from service.sessions.waking import Waker
from service.store import Store

log = logging.getLogger(__name__)

MESSAGE_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
QUEUED_MESSAGE = "Pod is waking up, message queued"


class Chats:
    def __init__(self, settings: Settings, store: Store, *, deliveries: Deliveries,
                 tiers: Tiers, waker: Waker, waiter: ReplyWaiter) -> None:
        self.settings = settings
        self.store = store
        self.deliveries = deliveries
        self.tiers = tiers
        self.waker = waker
        self.waiter = waiter
        # Chats waiting on pods in this process (MAX_FORWARDS); past it, the worker delivers.
        self._forward_slots = threading.BoundedSemaphore(settings.max_forwards) \
            if settings.max_forwards else None

    def chat(self, session_id: str, message: Any, message_id: Any = None, *,
             wait_seconds: int = 0) -> Result:
        """Admit a message; answered by the pod at once when it is running (200), else kept
        for it (202) — or, with wait_seconds, held until its reply for that long."""
        if not isinstance(message, str) or not message.strip():
            raise InvalidField("message must be a non-empty string")
        if len(message) > self.settings.max_message_chars:
            raise PayloadTooLarge(
                f"message is longer than {self.settings.max_message_chars} characters")
        if message_id is None:
            message_id = secrets.token_hex(12)
        elif not isinstance(message_id, str) or not MESSAGE_ID_PATTERN.fullmatch(message_id):
            raise InvalidField("message_id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")
        now = iso(utc_now())
        slot = self._forward_slots is not None and self._forward_slots.acquire(blocking=False)
        try:
            mode, info = self.store.messages.admit_chat(
                session_id, message_id=message_id,
                message={"message_id": message_id, "message": message, "created_at": now},
                max_queued=self.settings.max_queued_messages,
                max_kept=self.settings.max_messages_kept, allow_forward=slot,
                lease_seconds=self.settings.delivery_lease_seconds,
                budget_bytes=self.settings.max_session_bytes,
                bundle_version=self.tiers.version(),
                history_limits=(self.settings.history_max_messages,
                                self.settings.history_max_bytes),
            )
            if mode == "forward":
                return self._forward(session_id, message, message_id, info, wait_seconds)
        finally:
            if slot:
                self._forward_slots.release()  # type: ignore[union-attr]
        if mode == "gone":
            raise SessionNotFound()
        if mode == "terminating":
            raise Conflict("The session is being deleted")
        if mode == "backlog":
            raise BacklogFull(
                f"{info['backlog']} messages are waiting for this session; retry later",
                limit=self.settings.max_queued_messages, retry_after_seconds=5)
        if mode == "budget":
            raise SessionStorageFull(
                "This session's undelivered messages fill its storage budget "
                f"(MAX_SESSION_BYTES={self.settings.max_session_bytes}); retry once they are "
                "delivered", limit=self.settings.max_session_bytes, retry_after_seconds=5)
        if mode == "duplicate":
            return self._replay(session_id, message, message_id, info, wait_seconds)
        if mode == "queued" and info["status"] != "running":
            self._wake_for_chat(session_id, info)
        return self._when_settled(session_id, message_id, info["seq"], wait_seconds)

    def _when_settled(self, session_id: str, message_id: str, seq: int,
                      wait_seconds: int) -> Result:
        """The message's outcome if it comes within wait_seconds (a held chat), else 202."""
        if wait_seconds > 0:
            outcome = self._outcome(session_id, message_id,
                                    self.waiter.wait(session_id, seq, wait_seconds))
            if outcome is not None:
                return outcome
        return self._queued(session_id, message_id)

    @staticmethod
    def _outcome(session_id: str, message_id: str, stored: dict | None) -> Result | None:
        """The answer for a settled message (200 processed with the reply, or 200 failed),
        None while it is not settled."""
        state = (stored or {}).get("state")
        if state == "delivered":
            return Result(200, {"uuid": session_id, "status": "processed",
                                "message_id": message_id, "pod_response": stored.get("reply")})
        if state == "failed":
            return Result(200, {"uuid": session_id, "status": "failed",
                                "message_id": message_id, "error": stored.get("error")})
        return None

    def _queued(self, session_id: str, message_id: str) -> Result:
        return Result(202, {"uuid": session_id, "status": "queued", "message_id": message_id,
                            "message": QUEUED_MESSAGE})

    def _forward(self, session_id: str, message: str, message_id: str, info: dict,
                 wait_seconds: int = 0) -> Result:
        """The pod is ready and nothing is queued ahead: one delivery attempt, answered with
        the pod's reply. A failed attempt is not lost: unless it can never succeed, it stays
        in flight for the worker, which retries with backoff."""
        claim = Claim(session_id, info["seq"], message_id, message, 1, info["envelope"],
                      info["lease_token"], info["user_id"], info["history"] or "[]")
        outcome = self.deliveries.attempt(claim, forwarded=True)
        if outcome.delivered:
            return Result(200, {"uuid": session_id, "status": "processed",
                                "message_id": message_id, "pod_response": outcome.reply})
        failed = (self._outcome(session_id, message_id, outcome.stored)
                  if outcome.stored.get("state") == "failed" else None)
        return failed or self._when_settled(session_id, message_id, info["seq"], wait_seconds)

    def _replay(self, session_id: str, message: str, message_id: str, info: dict,
                wait_seconds: int = 0) -> Result:
        """The same message_id again: report what happened to it, deliver nothing twice.
        With another text it is a different message under a reused id: 409, as a reused
        Idempotency-Key is (the old reply would otherwise pass for this message's)."""
        seq, stored = info["seq"], info["message"]  # read with the dedupe check, by its seq
        if stored.get("message") not in (None, message):
            raise Conflict("This message_id was used for a different message")
        outcome = self._outcome(session_id, message_id, stored)
        if outcome is not None:
            return outcome
        if info.get("status") in ("sleeping", "archived"):
            # Still waiting: the retry also resumes it (and brings an archived one back).
            self.waker.resume_for_chat(session_id)
        return self._when_settled(session_id, message_id, seq, wait_seconds)

    def messages(self, session_id: str, *, after: int, limit: int) -> Result:
        messages, next_cursor = self.store.messages.list_messages(
            session_id, after=after, limit=limit, max_kept=self.settings.max_messages_kept)
        return Result(200, {"uuid": session_id, "messages": messages, "next": next_cursor})

    def _wake_for_chat(self, session_id: str, info: dict) -> None:
        """A chat was queued for a session that is not running. An archived one gets its
        bundle back (the restore index holds the ask, so the worker restores it if this
        cannot); one asleep on an older bundle is brought up to date first (admit_chat holds
        it from the scalers meanwhile), and only then are the scalers told. Slept (flag) or
        asleep as the cluster says, it is resumed: the unpause is sent either way, so a flag
        that drifted from the annotation cannot keep the session from waking."""
        if info["needs"] == "restore":
            self.tiers.restore(session_id)
            return
        try:
            if info["needs"] == "refresh":
                self.tiers.refresh(session_id)
            if info["paused"] or info["status"] == "sleeping":
                self.waker.resume_for_chat(session_id)
        finally:
            if info["needs"] == "refresh":
                # If Redis is away now, the hold lapses and KEDA's next poll sees the work.
                with contextlib.suppress(Unavailable):
                    self.store.records.release_refresh_hold(session_id)
