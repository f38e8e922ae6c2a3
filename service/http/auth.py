"""Who is calling: an API key (every route) or a session token (its own session's routes).

Keys are compared in constant time against every configured key (several, for rotation);
session tokens are stored only as SHA-256 hashes in the session record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Callable

from flask import Request

from service.core.errors import Forbidden, SessionNotFound, Unauthorized
from service.core.tokens import hash_token


@dataclasses.dataclass(frozen=True)
class Principal:
    kind: str  # "api_key" | "session" | "local" (auth disabled)
    subject: str  # a fingerprint, never the credential itself


def presented_credential(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.headers.get("X-API-Key", "").strip() or None


def _fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


class Authenticator:
    def __init__(self, api_keys: tuple[str, ...], *, disabled: bool) -> None:
        self._keys = [key.encode() for key in api_keys]
        self.disabled = disabled

    def _is_api_key(self, credential: str) -> bool:
        presented = credential.encode()
        matched = False
        for key in self._keys:  # no early exit: timing says nothing about which key
            matched |= hmac.compare_digest(presented, key)
        return matched

    def require_api_key(self, request: Request) -> Principal:
        """/sessions, /metrics and create: API keys only."""
        if self.disabled:
            return Principal("local", "local")
        credential = presented_credential(request)
        if credential is None:
            raise Unauthorized()
        if not self._is_api_key(credential):
            raise Forbidden()
        return Principal("api_key", _fingerprint(credential))

    def for_session(self, request: Request,
                    lookup_token_hash: Callable[[], str | None]) -> Principal:
        """/session/{id}/...: an API key, or this session's token. Anything else is answered
        like an unknown session, so a token cannot probe which other sessions exist."""
        if self.disabled:
            return Principal("local", "local")
        credential = presented_credential(request)
        if credential is None:
            raise Unauthorized()
        if self._is_api_key(credential):
            return Principal("api_key", _fingerprint(credential))
        token_hash = lookup_token_hash()  # read only when the credential is not a key
        if token_hash and hmac.compare_digest(hash_token(credential), token_hash):
            return Principal("session", _fingerprint(credential))
        raise SessionNotFound()
