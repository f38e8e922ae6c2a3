"""Every Redis key and channel name of the service: what `store` reads and writes."""

from __future__ import annotations

import hashlib

_P = "sm:"
ALL_INDEX = _P + "all"  # every session, by creation order
STATUS_INDEX_PREFIX = _P + "st:"  # + status: sessions in that status
EXPIRY_INDEX = _P + "exp"  # score = when the record expires (epoch s); the reaper reads it
PENDING_INDEX = _P + "pending"  # sessions with undelivered messages; score = due (epoch ms)
CREATED_SEQ = _P + "seq"
STATS = _P + "stats"  # message counters for /metrics
# Worker id -> JSON {"at": epoch s, "stalled": [loop, ...]}: what /health reads of the workers.
WORKER_REPORTS = _P + "workers"
# Pub/sub channel: a session id is published when it gets work (a chat, a wake), so the push
# scaler can tell KEDA at once. Best effort by nature; KEDA's polling IsActive backs it up.
WORK_CHANNEL = _P + "work"
# Pub/sub channel: `<session id>:<seq>` when a message is settled, so a chat held with
# `Prefer: wait` returns at once. Best effort too: a waiter also re-reads the message.
SETTLED_CHANNEL = _P + "settled"
# Pub/sub channel: a session id whenever its event log grows (or the session is deleted), so
# every API replica's open /events streams of that session read on at once.
EVENTS_CHANNEL = _P + "events"
# Every kind a session bundle was ever applied with ("<apiVersion> <kind>"): sweeps cover
# these as well as what the templates make now, so a kind removed from the templates is still
# swept from the sessions that have it.
APPLIED_KINDS = _P + "kinds"
# Sessions whose bundle is in the cluster; score = last activity (epoch s). The archiver reads
# the oldest; the scripts that record activity move a member's score (ZADD XX), archiving
# removes it, create and restore add it.
BUNDLED_INDEX = _P + "bundled"
# Archived sessions a chat or a wake asked back; score = when a restore is due (epoch ms).
RESTORE_INDEX = _P + "restore"
# Archived sessions whose objects may still be in the cluster: deleted, but an object with a
# finalizer (KEDA's on the ScaledObject) lingers until its controller lets go, minutes when
# KEDA is busy with thousands. Score = when its sweep began (epoch ms). The archiver does not
# wait for them: its next passes drop those whose objects are gone, and a restore applies only
# once they are (it would apply onto an object about to vanish).
SWEEPING_INDEX = _P + "sweeping"
# Sessions unhealthy since (score: epoch ms): failed, or waking between two crashes of a
# crash-looping pod. Set by the status scripts; their queued messages are failed once a
# session stays in it FAILED_SESSION_GRACE_SECONDS.
FAILING_INDEX = _P + "failing"
# The warm pool: sessions created ahead of their users (score: created, epoch ms), and those
# of them whose pod is up (score: ready since, epoch ms). A create claims the oldest ready one.
POOL_INDEX = _P + "pool"
POOL_READY = _P + "pool:ready"
# Counters of the wake phases every process records (bucket and sum counts per phase, see
# lua/lib/wake.lua): the histogram /metrics serves.
WAKE_HISTOGRAM = _P + "wake"
# The sessions namespace this Redis database serves, set by the first worker: the archiver,
# the reconciler and the watch act on every record here, so two installations sharing one
# database would sweep and mark each other's sessions.
INSTALLATION_KEY = _P + "installation"
ACTIVE_MEMBER = "active"  # the work set's "recently active" member
# What a /sessions page shows of each record (reading only these keeps pages cheap).
LISTED_FIELDS = ("user_id", "status", "created_at", "last_activity")


def record_key(session_id: str) -> str:
    return f"{_P}s:{session_id}"


def queue_key(session_id: str) -> str:
    return f"{_P}q:{session_id}"


def work_key(session_id: str) -> str:
    """The one truth of "this session has work", read by every scaler path: a set holding
    `m:<seq>` for each message queued or in flight (no TTL while there is one) and `active`
    after activity (the set then expires activity_ttl after the last of it). Kept by the
    same scripts that admit, claim, settle and sleep, so it cannot drift from the queues."""
    return f"{_P}w:{session_id}"


def keda_keys(session_id: str) -> dict[str, str]:
    """The Redis keys the session's ScaledObject may read, for bundle rendering."""
    return {"work_key": work_key(session_id)}


def _inflight_key(session_id: str) -> str:
    return f"{_P}f:{session_id}"


def _messages_key(session_id: str) -> str:
    return f"{_P}m:{session_id}"


def _message_ids_key(session_id: str) -> str:
    return f"{_P}mi:{session_id}"


def _lease_key(name: str) -> str:
    return f"{_P}lease:{name}"


def _delivery_lease(session_id: str) -> str:
    return _lease_key(f"deliver:{session_id}")


def _bundle_lock(session_id: str) -> str:
    """Held by whoever changes the session's objects (archive sweep, restore, re-apply), so a
    restore never applies onto objects a sweep is still deleting."""
    return _lease_key(f"bundle:{session_id}")


def refresh_hold_key(session_id: str) -> str:
    """Set (with a short TTL) while a chat's wake re-applies a sleeping session's bundle: the
    push scaler answers "inactive" meanwhile, so KEDA cannot start the old pod template."""
    return f"{_P}hold:{session_id}"


def _reservation_key(session_id: str) -> str:
    return f"{_P}res:{session_id}"


def _idempotency_key(scope: str) -> str:
    return f"{_P}idem:{hashlib.sha256(scope.encode()).hexdigest()}"


def events_key(session_id: str) -> str:
    """The session's event log (a stream): what /events serves and resumes from."""
    return f"{_P}e:{session_id}"


def _streams_key(session_id: str) -> str:
    """The /events streams open on the session, from any replica: token -> expiry (ms)."""
    return f"{_P}es:{session_id}"


def _data_keys(session_id: str) -> list[str]:
    """The keys that live and die with the record (its TTL, its delete)."""
    return [queue_key(session_id), _inflight_key(session_id), _messages_key(session_id),
            _message_ids_key(session_id), events_key(session_id), _streams_key(session_id)]
