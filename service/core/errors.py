"""Every error the service raises, and the one JSON shape they all leave the API in.

The HTTP status and the stable machine code are class attributes, so the handler has no
if-chain: `{"error": <human readable>, "code": <stable code>}` on every path, 404/405/413/415
and 500 included. Messages never carry secrets or stack traces.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class SessionManagerError(Exception):
    status = 500
    code = "internal_error"
    default_message = "Internal error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.details = details

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.code}


class BadRequest(SessionManagerError):
    status = 400
    code = "bad_request"
    default_message = "Invalid request"


class InvalidField(BadRequest):
    code = "invalid_field"


class Unauthorized(SessionManagerError):
    status = 401
    code = "unauthorized"
    default_message = "Missing credentials: send Authorization: Bearer <key> or X-API-Key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="session-manager"'}


class Forbidden(SessionManagerError):
    status = 403
    code = "forbidden"
    default_message = "Invalid credentials"


class NotFound(SessionManagerError):
    status = 404
    code = "not_found"
    default_message = "Not found"


class SessionNotFound(NotFound):
    code = "session_not_found"
    default_message = "Session not found"


class MethodNotAllowed(SessionManagerError):
    status = 405
    code = "method_not_allowed"
    default_message = "Method not allowed"


class Conflict(SessionManagerError):
    status = 409
    code = "conflict"
    default_message = "The session is in a state that does not allow this"


class PayloadTooLarge(SessionManagerError):
    status = 413
    code = "payload_too_large"
    default_message = "Request body too large"


class UnsupportedMediaType(SessionManagerError):
    status = 415
    code = "unsupported_media_type"
    default_message = "Send a JSON body with Content-Type: application/json"


class RateLimited(SessionManagerError):
    status = 429
    code = "rate_limited"
    default_message = "Too many requests"

    def __init__(self, message: str | None = None, *, limit: int = 0, remaining: int = 0,
                 reset_epoch: int = 0, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.limit = limit
        self.remaining = remaining
        self.reset_epoch = reset_epoch
        self.retry_after_seconds = max(1, retry_after_seconds)

    def headers(self) -> dict[str, str]:
        return {
            "Retry-After": str(self.retry_after_seconds),
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_epoch),
        }


class BacklogFull(RateLimited):
    code = "backlog_full"
    default_message = "Too many undelivered messages for this session"


class SessionStorageFull(RateLimited):
    code = "session_storage_full"
    default_message = "This session's conversation is at its storage budget"


class TooManyStreams(RateLimited):
    code = "too_many_streams"
    default_message = "Too many open event streams"


class Unavailable(SessionManagerError):
    status = 503
    code = "unavailable"
    default_message = "A backing service is unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class RedisUnavailable(Unavailable):
    code = "redis_unavailable"
    default_message = "Redis is unavailable"


class RedisOutOfMemory(RedisUnavailable):
    """Redis refuses writes at `maxmemory` (noeviction): nothing was written."""

    code = "redis_out_of_memory"
    default_message = "Redis is out of memory and refuses writes"


class RedisReadOnly(RedisUnavailable):
    """Redis answers as a read-only replica (a failover in progress, a misrouted URL)."""

    code = "redis_read_only"
    default_message = "Redis is read-only"


class ClusterUnavailable(Unavailable):
    code = "kubernetes_unavailable"
    default_message = "The Kubernetes API is unavailable"


# Errors from the cluster, raised by `kube` (the only module that sees the client's own).


class KubeError(SessionManagerError):
    """The Kubernetes API refused or failed a call."""

    status = 502
    code = "kubernetes_error"
    default_message = "The Kubernetes API refused the request"

    def __init__(self, message: str | None = None, *, api_status: int | None = None,
                 kind: str | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.api_status = api_status
        self.kind = kind
        self.name = name


class KubeNotFound(KubeError):
    status = 404
    code = "kubernetes_not_found"


class KubeRejected(KubeError):
    """The API server rejected an object as invalid (400/422): a template bug."""

    code = "kubernetes_rejected"


class KubeUnavailable(KubeError, ClusterUnavailable):
    status = 503
    code = "kubernetes_unavailable"
    default_message = "The Kubernetes API is unavailable"


class KubeForbidden(KubeError, ClusterUnavailable):
    """403: this service's credentials may not do this (RBAC short of what the code needs,
    k8s-manifests/rbac.yaml). Not the caller's doing, and not fixed by the caller."""

    status = 503
    code = "kubernetes_forbidden"
    default_message = "The Kubernetes API refused this service's credentials"


class KubeConflict(KubeError, ClusterUnavailable):
    """409: the cluster's object is in a state that refuses the write (being deleted, say):
    transient, worth a retry."""

    status = 503
    code = "kubernetes_conflict"
    default_message = "The Kubernetes API reported a conflict; retry"


class ClusterNotReady(ClusterUnavailable):
    """Create found no sessions namespace or no KEDA API in the cluster: an install step is
    missing (not a 404: the caller asked for nothing that does not exist)."""

    code = "kubernetes_not_ready"
    default_message = "The cluster is missing the sessions namespace or KEDA"


class BundleError(SessionManagerError):
    """A template or a rendered value is wrong; points at the template when it can."""

    code = "bundle_error"

    def __init__(self, message: str, *, template: Path | None = None) -> None:
        super().__init__(message)
        self.template = template


# Werkzeug's own HTTP errors (routing, size limit) mapped to our codes.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}
