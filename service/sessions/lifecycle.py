"""A session's life: create, wake, sleep, status, delete — and the composition of the
sessions layer (`Sessions` holds the chats, the deliveries, the tiers and what they share).

Redis (`store`) is the source of truth for sessions and messages; the cluster (`kube`) is
touched only to change it (apply, sweep, pause). Status comes from the record, which the
worker keeps in step with the cluster, so reads never wait on the Kubernetes API.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from service.core import names
from service.core.clock import iso, utc_now
from service.core.config import Settings
from service.core.errors import (
    Conflict,
    InvalidField,
    KubeNotFound,
    SessionNotFound,
    Unavailable,
)
from service.core.tokens import hash_token
from service.core.transitions import Actor
from service.kube import Kube
from service.pods import PodClient
from service.sessions.chats import Chats
from service.sessions.delivery import Deliveries
from service.sessions.listing import Listing
from service.sessions.notices import Notices
from service.sessions.pool import WarmPool
from service.sessions.results import Result
from service.sessions.tiers import REFRESHED_STATUSES, Tiers, kinds_of_pairs, sweep_kinds
from service.sessions.waiting import ReplyWaiter
from service.sessions.waking import Waker
from service.store import Store

log = logging.getLogger(__name__)


class Sessions:
    def __init__(self, settings: Settings, store: Store, kube: Kube,
                 pods: PodClient | None = None) -> None:
        self.settings = settings
        self.store = store
        self.kube = kube
        self.pods = pods or PodClient(settings, address_of=store.records.pod_address)
        self.deliveries = Deliveries(settings, store, self.pods)
        self.tiers = Tiers(settings, store, kube)
        self.waker = Waker(settings, store, kube, self.tiers)
        self.notices = Notices(store)  # held chats and event streams wake on its notices
        self.waiter = ReplyWaiter(store, self.notices, max_kept=settings.max_messages_kept)
        self.chats = Chats(settings, store, deliveries=self.deliveries, tiers=self.tiers,
                           waker=self.waker, waiter=self.waiter)
        self.listing = Listing(store, warm_pool_target=settings.warm_pool_size)
        self.pool = WarmPool(settings, store, self.tiers)

    def record(self, session_id: str) -> dict[str, str]:
        """The session's record; a pooled one belongs to no user yet: not found either."""
        if not names.is_session_id(session_id):
            raise SessionNotFound()
        record = self.store.records.get_session(session_id)
        if record is None or record.get("pooled") == "1":
            raise SessionNotFound()
        return record

    def create(self, user_id: Any, *, idempotency_scope: str | None = None) -> Result:
        if not isinstance(user_id, str) or not 1 <= len(user_id) <= 256 \
                or not user_id.isprintable():
            raise InvalidField("user_id must be a string of 1 to 256 printable characters")
        ttl = self.settings.idempotency_ttl_seconds
        if idempotency_scope is not None:
            previous = self.store.coordination.begin_idempotent(idempotency_scope, ttl_seconds=ttl)
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
                self.store.coordination.finish_idempotent(idempotency_scope, None, ttl_seconds=ttl)
            raise
        if idempotency_scope is not None:
            self.store.coordination.finish_idempotent(idempotency_scope, body, ttl_seconds=ttl)
        return Result(201, body)

    def _create(self, user_id: str) -> dict[str, Any]:
        token = secrets.token_urlsafe(32)
        warm = self.pool.claim(user_id, token)  # a pod already up, when the pool has one
        if warm is not None:
            log.info("session created from the warm pool", extra={"session_id": warm["uuid"]})
            return {"uuid": warm["uuid"], "user_id": user_id, "status": "running",
                    "created_at": warm["created_at"], "session_token": token}
        session_id = self.store.records.reserve_id()
        version, kinds = self.tiers.apply_new(session_id)
        try:
            record = self.store.records.create_session(
                session_id, user_id=user_id, token_hash=hash_token(token), now=utc_now(),
                bundle_version=version, bundle_kinds=kinds)
        except BaseException:
            # No record means no bundle: take the objects back before reporting the failure.
            self.tiers.discard(session_id, kinds_of_pairs(kinds))
            raise
        log.info("session created", extra={"session_id": session_id})
        return {"uuid": session_id, "user_id": user_id, "status": record["status"],
                "created_at": record["created_at"], "session_token": token}

    def delete(self, session_id: str) -> Result:
        self.record(session_id)
        self.store.records.set_status(session_id, "terminating", actor=Actor.DELETE)  # chat: 409
        self.kube.delete(session_id, sweep_kinds(self.settings, self.store))
        self.store.records.delete_session(session_id)
        log.info("session deleted", extra={"session_id": session_id})
        return Result(200, {"uuid": session_id, "status": "terminated",
                            "message": "Session and all resources deleted"})

    def wake(self, session_id: str) -> Result:
        """Resume the session: 200 when its pod is up, else 202 with the status it has (the
        watch moves it on as the pod starts; an archived one is being restored)."""
        record = self.record(session_id)
        if record["status"] == "terminating":
            raise Conflict("The session is being deleted")
        if record["status"] in REFRESHED_STATUSES \
                and record.get("bundle_version") != self.tiers.version():
            self.tiers.refresh(session_id)  # before the pod starts: it starts on the new one
        status, ready = self.waker.resume(session_id, touch=True, status=record["status"])
        if status == "running" and ready > 0:
            return Result(200, {"uuid": session_id, "action": "wake", "status": "running"})
        return Result(202, {"uuid": session_id, "action": "wake", "status": status})

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
        before = self.store.records.sleep(session_id)
        if before is None:
            raise SessionNotFound()
        if before == "terminating":
            raise Conflict("The session is being deleted")
        if before == "archived":
            return Result(200, {
                "uuid": session_id, "action": "sleep", "status": "archived",
                "message": "Session is archived: it has no objects in the cluster; a chat or "
                           "a wake brings them back"})
        pending = self.store.messages.queue_length(session_id)
        return Result(200, {
            "uuid": session_id, "action": "sleep", "status": "sleeping",
            "message": f"Session paused at 0 replicas; {pending} pending message(s) kept",
        })

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
            "queue_length": self.store.messages.queue_length(session_id),
            "timestamp": iso(utc_now()),
        }
        if record.get("reason"):
            body["reason"] = record["reason"]
        if record.get("wake_phases"):
            # The last wake: when it was asked (epoch ms), what asked it, and the seconds to
            # each phase reached so far (lua/lib/wake.lua).
            body["wake"] = json.loads(record["wake_phases"])
        return Result(200, body)
