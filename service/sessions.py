"""The use cases behind the routes: create, wake, sleep, status, delete, list (chat and
messages are in `chats`, mixed in).

Redis (`store`) is the source of truth for sessions and messages; the cluster (`kube`) is
touched only to change it (apply, sweep, pause). Status comes from the record, which the
worker keeps in step with the cluster, so reads never wait on the Kubernetes API.
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import Any

from . import names
from .chats import Chats
from .config import Settings
from .delivery import Deliveries
from .errors import (
    ClusterNotReady,
    Conflict,
    InvalidField,
    KubeError,
    KubeNotFound,
    SessionNotFound,
    Unavailable,
)
from .kube import Kube
from .notices import Notices
from .pods import PodClient
from .results import Result
from .store import ACTIVE_STATUSES, Store, hash_token, iso, utc_now
from .templates import sweep_kinds
from .tiers import REFRESHED_STATUSES, Tiers
from .transitions import IN_CLUSTER, STATUSES, Actor
from .waiting import ReplyWaiter

__all__ = ["Result", "Sessions", "public_session"]

log = logging.getLogger(__name__)

def public_session(session_id: str, record: dict[str, str]) -> dict[str, Any]:
    return {"uuid": session_id, "user_id": record["user_id"], "status": record["status"],
            "created_at": record["created_at"], "last_activity": record["last_activity"]}


class Sessions(Chats):
    def __init__(self, settings: Settings, store: Store, kube: Kube,
                 pods: PodClient | None = None) -> None:
        self.settings = settings
        self.store = store
        self.kube = kube
        self.pods = pods or PodClient(settings, address_of=store.pod_address)
        self.deliveries = Deliveries(settings, store, self.pods)
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
        self.store.set_status(session_id, "terminating", actor=Actor.DELETE)  # chats: 409
        self.kube.delete(session_id, sweep_kinds(self.settings, self.store))
        self.store.delete_session(session_id)
        log.info("session deleted", extra={"session_id": session_id})
        return Result(200, {"uuid": session_id, "status": "terminated",
                            "message": "Session and all resources deleted"})

    # -- wake / sleep --------------------------------------------------------------------

    def wake(self, session_id: str) -> Result:
        """Resume the session: 200 when its pod is up, else 202 with the status it has (the
        watch moves it on as the pod starts; an archived one is being restored)."""
        record = self.record(session_id)
        if record["status"] == "terminating":
            raise Conflict("The session is being deleted")
        if record["status"] in REFRESHED_STATUSES \
                and record.get("bundle_version") != self.tiers.version():
            self.tiers.refresh(session_id)  # before the pod starts: it starts on the new one
        status, ready = self._resume(session_id, touch=True, status=record["status"])
        if status == "running" and ready > 0:
            return Result(200, {"uuid": session_id, "action": "wake", "status": "running"})
        return Result(202, {"uuid": session_id, "action": "wake", "status": status})

    def _resume(self, session_id: str, *, touch: bool,
                status: str | None = None) -> tuple[str, int]:
        """Lift KEDA's pause (always, whatever the flag says: the unpause is idempotent, and a
        flag that drifted from the annotation must not keep a session asleep), then record
        the wake in one step (`Store.resume`): never over what the watch saw meanwhile, and an
        archived session — archived since it was read, too — gets its restore asked there and
        is restored here. Returns (status, ready replicas) after it."""
        record = self.store.get_session(session_id)
        archived = record is not None and record["status"] == "archived"
        if not archived:
            try:
                if self.kube.set_paused(session_id, False):
                    raise Unavailable("KEDA pause annotation could not be removed; retry")
            except KubeNotFound:
                # Swept meanwhile (the archiver: the step below sees it), or lost: applied
                # again, if it is not archived (a wake brings a session's objects back).
                self.tiers.apply(session_id, statuses=IN_CLUSTER, wait_for_lock_seconds=2)
        outcome, now, ready = self.store.resume(session_id, touch=touch)
        if outcome == "gone":
            raise SessionNotFound()
        if outcome == "terminating":
            raise Conflict("The session is being deleted")
        if outcome == "restore":
            self.tiers.restore(session_id)  # else the restore index keeps it for the worker
            record = self.store.get_session(session_id) or {}
            return record.get("status", "archived"), 0
        return now or "waking", ready

    def sleep(self, session_id: str) -> Result:
        record = self.record(session_id)
        if record["status"] == "terminating":
            raise Conflict("The session is being deleted")
        if record["status"] != "archived":
            try:
                if not self.kube.set_paused(session_id, True):
                    raise Unavailable("KEDA pause annotation did not stick; retry")
            except KubeNotFound:
                pass  # no ScaledObject: archived meanwhile (below), or no objects, no pod
        before = self.store.sleep(session_id)
        if before is None:
            raise SessionNotFound()
        if before == "terminating":
            raise Conflict("The session is being deleted")
        if before == "archived":
            return Result(200, {
                "uuid": session_id, "action": "sleep", "status": "archived",
                "message": "Session is archived: it has no objects in the cluster; a chat or "
                           "a wake brings them back"})
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
