"""The Kubernetes client's exceptions as our own (errors.Kube*; callers chain them), and the
field manager every apply uses."""

from __future__ import annotations

import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import exceptions as dynamic_errors

from service.core.errors import (
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeNotFound,
    KubeRejected,
    KubeUnavailable,
)

FIELD_MANAGER = "session-manager"


def translate(err: Exception, *, kind: str | None = None, name: str | None = None) -> KubeError:
    if isinstance(err, (dynamic_errors.DynamicApiError, ApiException)):
        status = getattr(err, "status", None)
        reason = _reason(err)
        message = f"{kind or 'object'} {name or ''}: {status} {reason}".strip()
        if status == 404:
            return KubeNotFound(message, api_status=status, kind=kind, name=name)
        # 1.20 answers 500 "failed to create typed patch object" to a server-side apply whose
        # body does not match the schema; later versions say 422. Either way: a bad object.
        if status in (400, 422) or (status == 500 and "typed patch object" in reason):
            return KubeRejected(message, api_status=status, kind=kind, name=name)
        if status == 403:
            return KubeForbidden(message, api_status=status, kind=kind, name=name)
        if status == 409:
            return KubeConflict(message, api_status=status, kind=kind, name=name)
        if status in (429, 500, 502, 503, 504):
            return KubeUnavailable(message, api_status=status, kind=kind, name=name)
        return KubeError(message, api_status=status, kind=kind, name=name)
    if isinstance(err, dynamic_errors.ResourceNotFoundError):
        return KubeNotFound(f"the API server does not serve {kind}: {err}", kind=kind)
    return KubeUnavailable(f"cannot reach the Kubernetes API: {type(err).__name__}", kind=kind)


def _reason(err: Exception) -> str:
    summary = getattr(err, "summary", None)
    if callable(summary):
        try:
            return str(summary())
        except Exception:  # noqa: BLE001, S110 - a best-effort message must not hide the error
            pass
    return str(getattr(err, "reason", "") or err)[:500]




# What a client call may raise that translate understands.
CLIENT_ERRORS = (
    dynamic_errors.DynamicApiError,
    dynamic_errors.ResourceNotFoundError,
    ApiException,
    urllib3.exceptions.HTTPError,
    OSError,
)
