"""The use cases behind the routes: create, wake, sleep, status, chat, messages, delete, list.

Redis (`store`) is the source of truth for sessions and messages; the cluster (`kube`) is
touched only to change it (apply, sweep, pause). Status comes from the record, which the
worker keeps in step with the cluster, so reads never wait on the Kubernetes API.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from . import names
from .config import Settings
from .errors import (
    BacklogFull,
    ClusterNotReady,
    Conflict,
    InvalidField,
    KubeError,
    KubeNotFound,
    PayloadTooLarge,
    SessionNotFound,
    SessionStorageFull,
    Unavailable,
)
from .kube import Kube
from .notices import Notices
from .pods import PodClient, PodError
from .relay import ChunkRelay
from .store import ACTIVE_STATUSES, STATUSES, Store, hash_token, iso, utc_now
from .templates import sweep_kinds
from .tiers import REFRESHED_STATUSES, Tiers
from .waiting import ReplyWaiter

log = logging.getLogger(__name__)

MESSAGE_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
QUEUED_MESSAGE = "Pod is waking up, message queued"


@dataclass(frozen=True)
class Result:
    """A use case's answer: the HTTP status and the JSON body."""

    status: int
    body: dict[str, Any]


def public_session(session_id: str, record: dict[str, str]) -> dict[str, Any]:
    return {"uuid": session_id, "user_id": record["user_id"], "status": record["status"],
            "created_at": record["created_at"], "last_activity": record["last_activity"]}


class Sessions:
    def __init__(self, settings: Settings, store: Store, kube: Kube,
                 pods: PodClient | None = None) -> None:
        self.settings = settings
        self.store = store
        self.kube = kube
        self.pods = pods or PodClient(settings, address_of=store.pod_address)
        self.tiers = Tiers(settings, store, kube)
        self.notices = Notices(store)  # held chats and event streams wake on its notices
        self.waiter = ReplyWaiter(store, self.notices, max_kept=settings.max_messages_kept)
        # Chats waiting on pods in this process (MAX_FORWARDS); past it, the worker delivers.
        self._forward_slots = threading.BoundedSemaphore(settings.max_forwards) \
            if settings.max_forwards else None

    # -- lookup --------------------------------------------------------------------------

    def record(self, session_id: str) -> dict[str, str]:
        if not names.is_session_id(session_id):
            raise SessionNotFound()
        record = self.store.get_session(session_id)
        if record is None:
            raise SessionNotFound()
        return record

    # -- create / delete -----------------------------------------------------------------

    def create(self, user_id: Any, *, idempotency_scope: str | None = None) -> Result:
        if not isinstance(user_id, str) or not 1 <= len(user_id) <= 256 \
                or not user_id.isprintable():
            raise InvalidField("user_id must be a string of 1 to 256 printable characters")
        ttl = self.settings.idempotency_ttl_seconds
        if idempotency_scope is not None:
            previous = self.store.begin_idempotent(idempotency_scope, ttl_seconds=ttl)
            if previous is False:
                raise Conflict("A create with this Idempotency-Key is still in progress")
            if previous is not None:
                if previous.get("user_id") != user_id:
                    raise Conflict("This Idempotency-Key was used for a different request")
                return Result(201, previous)
        try:
            body = self._create(user_id)
        except BaseException:
            if idempotency_scope is not None:
                self.store.finish_idempotent(idempotency_scope, None, ttl_seconds=ttl)
            raise
        if idempotency_scope is not None:
            self.store.finish_idempotent(idempotency_scope, body, ttl_seconds=ttl)
        return Result(201, body)

    def _create(self, user_id: str) -> dict[str, Any]:
        session_id = self.store.reserve_id()
        version = self.tiers.version()
        rendered = self.tiers.render(session_id)
        kinds = [(k.api_version, k.kind) for k in rendered.kinds()]
        # Before the apply: a crash after it must not leave a kind no sweep knows of.
        self.store.note_applied_kinds(kinds)
        try:
            self.kube.apply(rendered)  # sweeps what it applied if it fails part-way
        except KubeNotFound as err:
            self.store.release_id(session_id)
            raise ClusterNotReady(
                f"Cannot create the session's objects ({err.message}): is the namespace "
                f"{self.settings.namespace!r} there and KEDA installed?") from err
        except BaseException:
            self.store.release_id(session_id)
            raise
        token = secrets.token_urlsafe(32)
        now = utc_now()
        try:
            record = self.store.create_session(session_id, user_id=user_id,
                                               token_hash=hash_token(token), now=now,
                                               bundle_version=version, bundle_kinds=kinds)
        except BaseException:
            # No record means no bundle: take the objects back before reporting the failure.
            try:
                self.kube.delete(session_id, rendered.kinds())
            except KubeError:
                log.exception("could not sweep after a failed create; the reconciler will",
                              extra={"session_id": session_id})
            raise
        log.info("session created", extra={"session_id": session_id})
        return {"uuid": session_id, "user_id": user_id, "status": record["status"],
                "created_at": record["created_at"], "session_token": token}

    def delete(self, session_id: str) -> Result:
        self.record(session_id)
        self.store.set_status(session_id, "terminating")  # chats now get 409
        self.kube.delete(session_id, sweep_kinds(self.settings, self.store))
        self.store.delete_session(session_id)
        log.info("session deleted", extra={"session_id": session_id})
        return Result(200, {"uuid": session_id, "status": "terminated",
                            "message": "Session and all resources deleted"})

    # -- wake / sleep --------------------------------------------------------------------

    def wake(self, session_id: str) -> Result:
        record = self.record(session_id)
        if record["status"] == "terminating":
            raise Conflict("The session is being deleted")
        if record["status"] == "archived":
            # Asked first, durably: if this restore cannot run now, the worker's does.
            self.store.ask_restore(session_id)
            self.tiers.restore(session_id)
            self.store.touch(session_id)
            return Result(202, {"uuid": session_id, "action": "wake", "status": "waking"})
        if record["status"] in REFRESHED_STATUSES \
                and record.get("bundle_version") != self.tiers.version():
            self.tiers.refresh(session_id)  # before the pod starts: it starts on the new one
        # Always, whatever the flag says: the unpause is idempotent, and a flag that drifted
        # from the annotation (a crash between the two writes) must not keep a session asleep.
        self._resume(session_id)
        self.store.touch(session_id)  # `active` in the work set: the scalers wake the pod
        if record["status"] == "running" and int(record.get("ready_replicas") or 0) > 0:
            return Result(200, {"uuid": session_id, "action": "wake", "status": "running"})
        self.store.set_status(session_id, "waking")
        return Result(202, {"uuid": session_id, "action": "wake", "status": "waking"})

    def _resume(self, session_id: str) -> None:
        if self.kube.set_paused(session_id, False):
            raise Unavailable("KEDA pause annotation could not be removed; retry")
        self.store.set_paused(session_id, False)

    def _wake_for_chat(self, session_id: str, info: dict) -> None:
        """A chat was queued for a session that is not running. An archived one gets its
        bundle back (the restore index holds the ask, so the worker restores it if this
        cannot); one asleep on an older bundle is brought up to date first, and only then are
        the scalers told (admit_chat left that to us). Slept (flag) or asleep as the cluster
        says, it is resumed: the unpause is sent either way, so a flag that drifted from the
        annotation cannot keep the session from waking."""
        if info["needs"] == "restore":
            self.tiers.restore(session_id)
            return
        if info["needs"] == "refresh":
            self.tiers.refresh(session_id)
        if info["paused"] or info["status"] == "sleeping":
            self._resume_for_chat(session_id)
        if info["needs"] == "refresh":
            # If Redis is away now, KEDA's next IsActive poll sees the work all the same.
            with contextlib.suppress(Unavailable):
                self.store.notify_work(session_id)

    def _resume_for_chat(self, session_id: str) -> None:
        """A chat was admitted for a session that is not running: make sure it is not held
        asleep. The message is already kept, so a failure here is logged, never answered as
        an error (a retry of the same message_id, a wake or the reconciler resumes it)."""
        try:
            self._resume(session_id)
        except (Unavailable, KubeError) as err:
            log.warning("could not resume the session for a queued chat: %s", err.message,
                        extra={"session_id": session_id})
            return
        self.store.set_status(session_id, "waking")

    def sleep(self, session_id: str) -> Result:
        record = self.record(session_id)
        if record["status"] == "terminating":
            raise Conflict("The session is being deleted")
        if record["status"] == "archived":
            return Result(200, {
                "uuid": session_id, "action": "sleep", "status": "archived",
                "message": "Session is archived: it has no objects in the cluster; a chat or "
                           "a wake brings them back"})
        if not self.kube.set_paused(session_id, True):
            raise Unavailable("KEDA pause annotation did not stick; retry")
        self.store.set_paused(session_id, True)
        self.store.clear_activity(session_id)
        self.store.set_status(session_id, "sleeping")
        pending = self.store.queue_length(session_id)
        return Result(200, {
            "uuid": session_id, "action": "sleep", "status": "sleeping",
            "message": f"Session paused at 0 replicas; {pending} pending message(s) kept",
        })

    # -- status --------------------------------------------------------------------------

    def status(self, session_id: str, record: dict[str, str] | None = None) -> Result:
        record = record or self.record(session_id)
        body = {
            "uuid": session_id,
            "session": {k: record[k] for k in ("user_id", "status", "created_at",
                                               "last_activity")},
            "status": record["status"],
            "replicas": int(record.get("replicas") or 0),
            "ready_replicas": int(record.get("ready_replicas") or 0),
            "paused": record.get("paused") == "1",
            "queue_length": self.store.queue_length(session_id),
            "timestamp": iso(utc_now()),
        }
        if record.get("reason"):
            body["reason"] = record["reason"]
        return Result(200, body)

    # -- chat ----------------------------------------------------------------------------

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
            mode, info = self.store.admit_chat(
                session_id, message_id=message_id,
                message={"message_id": message_id, "message": message, "created_at": now},
                max_queued=self.settings.max_queued_messages,
                max_kept=self.settings.max_messages_kept, allow_forward=slot,
                lease_seconds=self.settings.delivery_lease_seconds,
                budget_bytes=self.settings.max_session_bytes,
                bundle_version=self.tiers.version(),
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
        relay = ChunkRelay(self.store, session_id, seq=info["seq"], message_id=message_id,
                           attempt=1, lease_token=info["lease_token"])
        try:
            reply = self.pods.chat(session_id, message, message_id, on_chunk=relay)
        except PodError as err:
            # Not lost: unless it can never succeed, it stays in flight for the worker, which
            # retries with backoff (at once, without counting, if it never reached the pod).
            log.warning("direct delivery failed: %s", err, extra={"session_id": session_id})
            stored = self.store.finish_delivery(
                session_id, envelope=info["envelope"], lease_token=info["lease_token"],
                delivered=False, reply_or_error=str(err),
                max_attempts=0 if err.permanent else self.settings.delivery_max_attempts,
                retry_in_seconds=0 if err.not_sent else self.settings.delivery_backoff_seconds,
                not_sent=err.not_sent)
            failed = (self._outcome(session_id, message_id, stored)
                      if stored.get("state") == "failed" else None)
            return failed or self._when_settled(session_id, message_id, info["seq"], wait_seconds)
        relay.flush()  # the chunks a client saw add up to the reply that follows
        settle = functools.partial(
            self.store.finish_delivery, session_id, envelope=info["envelope"],
            lease_token=info["lease_token"], delivered=True, reply_or_error=json.dumps(reply),
            max_attempts=self.settings.delivery_max_attempts, retry_in_seconds=0,
            forwarded=True, budget_bytes=self.settings.max_session_bytes)
        try:
            settle()
        except Unavailable:
            # The pod has answered: the caller gets the reply now, and the reply is recorded
            # once Redis is back (until then the message stays in flight under its lease; if
            # that lapses first, a worker redelivers and the pod answers the same message_id
            # with the same reply).
            log.warning("reply not recorded yet (Redis unavailable); retrying in the "
                        "background", extra={"session_id": session_id})
            threading.Thread(target=self._settle_later, args=(settle, session_id),
                             daemon=True).start()
        return Result(200, {"uuid": session_id, "status": "processed", "message_id": message_id,
                            "pod_response": reply})

    def _settle_later(self, settle: Any, session_id: str) -> None:
        try:
            settle(retry_for_seconds=self.settings.delivery_lease_seconds)
        except Unavailable:
            log.warning("reply still not recorded; the worker will redeliver after the lease",
                        extra={"session_id": session_id})

    def _replay(self, session_id: str, message: str, message_id: str, info: dict,
                wait_seconds: int = 0) -> Result:
        """The same message_id again: report what happened to it, deliver nothing twice.
        With another text it is a different message under a reused id: 409, as a reused
        Idempotency-Key is (the old reply would otherwise pass for this message's)."""
        seq = info["seq"]
        messages, _ = self.store.list_messages(session_id, after=seq - 1, limit=1,
                                               max_kept=self.settings.max_messages_kept)
        stored = messages[0] if messages else info.get("message", {})
        if stored.get("message") not in (None, message):
            raise Conflict("This message_id was used for a different message")
        outcome = self._outcome(session_id, message_id, stored)
        if outcome is not None:
            return outcome
        if info.get("status") == "sleeping":  # still waiting: the retry also resumes
            self._resume_for_chat(session_id)
        elif info.get("status") == "archived":  # and brings an archived session back
            self.store.ask_restore(session_id)
            self.tiers.restore(session_id)
        return self._when_settled(session_id, message_id, seq, wait_seconds)

    def messages(self, session_id: str, *, after: int, limit: int) -> Result:
        messages, next_cursor = self.store.list_messages(
            session_id, after=after, limit=limit, max_kept=self.settings.max_messages_kept)
        return Result(200, {"uuid": session_id, "messages": messages, "next": next_cursor})

    # -- listing and figures -------------------------------------------------------------

    def list(self, *, status: str | None, limit: int, cursor: int | None) -> Result:
        if status is not None and status not in STATUSES:
            raise InvalidField(f"status must be one of {', '.join(STATUSES)}")
        page, next_cursor = self.store.list_sessions(status=status, limit=limit, cursor=cursor)
        counts = self.store.counts()
        total = counts["total"] if status is None else counts[status]
        return Result(200, {"total": total,
                            "sessions": [public_session(sid, rec) for sid, rec in page],
                            "next_cursor": next_cursor})

    def figures(self) -> dict[str, Any]:
        counts = self.store.counts()
        return {
            "total_sessions": counts["total"],
            "active_sessions": sum(counts[s] for s in ACTIVE_STATUSES),
            "sleeping_sessions": counts["sleeping"],
            "archived_sessions": counts["archived"],
            "failed_sessions": counts["failed"],
            "sessions_by_status": {s: counts[s] for s in STATUSES},
            "sessions_with_pending_messages": counts["sessions_with_pending_messages"],
            "messages": {k[len("messages_"):]: v for k, v in counts.items()
                         if k.startswith("messages_")},
            "timestamp": iso(utc_now()),
        }
