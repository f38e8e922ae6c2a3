"""Session tokens are kept only as a hash: what create stores and auth compares."""

from __future__ import annotations

import hashlib


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
