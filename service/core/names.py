"""Session ids and the Kubernetes naming rules that values rendered into templates must pass.

Each rule is a small named check raising ValueError, so config (at start) and bundle (before
rendering) refuse the same things. Rules: https://kubernetes.io/docs/concepts/overview/working-with-objects/names/
"""

from __future__ import annotations

import base64
import re
import secrets

# 80 random bits in lowercase base32 behind a letter: DNS-1035 label safe (a Service name must
# start with a letter), 17 characters, so "keda-hpa-session-<id>" stays far below 63.
SESSION_ID_RANDOM_BYTES = 10
SESSION_ID_PATTERN = re.compile(r"^s[a-z2-7]{16}$")

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "session-manager"
SESSION_LABEL = "session-manager/session"

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
# An OCI image reference: [registry[:port]/]path[:tag][@digest]; no spaces, quotes or newlines.
_IMAGE = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]{1,2}[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)


def new_session_id() -> str:
    raw = secrets.token_bytes(SESSION_ID_RANDOM_BYTES)
    return "s" + base64.b32encode(raw).decode("ascii").lower()


def is_session_id(value: str) -> bool:
    return bool(SESSION_ID_PATTERN.fullmatch(value))


def check_session_id(value: str) -> None:
    if not is_session_id(value):
        raise ValueError(f"{value!r} is not a session id (s + 16 characters of a-z, 2-7)")


def object_name(session_id: str) -> str:
    """Base name of a session's objects; templates may add short suffixes."""
    return f"session-{session_id}"


def check_dns_label(value: str) -> None:
    if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise ValueError("must be a DNS-1035 label: a-z, 0-9 and '-', start with a letter, <= 63")


def check_dns_subdomain(value: str) -> None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError("must be a DNS-1123 subdomain: a-z, 0-9, '-' and '.', <= 253")


def check_hostname(value: str) -> None:
    check_dns_subdomain(value)


def check_secret_key(value: str) -> None:
    if len(value) > 253 or not _SECRET_KEY.fullmatch(value):
        raise ValueError("must be a Secret key: letters, digits, '-', '_' and '.'")


def check_quantity(value: str) -> None:
    if not _QUANTITY.fullmatch(value):
        raise ValueError("must be a Kubernetes quantity such as 250m or 256Mi")


def check_image(value: str) -> None:
    if len(value) > 512 or not _IMAGE.fullmatch(value):
        raise ValueError("must be an image reference such as registry.example/agent:1.2.3")


def session_of_object(obj: dict) -> str | None:
    """The session a cluster object belongs to, by its session label (None: not a session's)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    session_id = labels.get(SESSION_LABEL)
    return session_id if session_id and is_session_id(session_id) else None
