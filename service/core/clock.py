"""Time as the service writes it: UTC, ISO-8601 with a `Z`, and epoch milliseconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def now_ms() -> int:
    return int(time.time() * 1000)
