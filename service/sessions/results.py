"""A use case's answer, which the thin API views turn into a response."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Result:
    """A use case's answer: the HTTP status and the JSON body."""

    status: int
    body: dict[str, Any]
