"""The session's event log (a Redis Stream per session) and the /events streams open on it.

The scripts that change a message or a session append to the log in the same step (see
lua/lib/events.lua), so the log cannot disagree with the record; this module reads it, adds
the chunks a streaming pod sends, and counts open streams against the per-session limit.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from service.store.keys import _delivery_lease, _messages_key, _streams_key, events_key, record_key

DEFAULT_EVENTS_KEPT = 1000
# A log id as Redis makes them (`<ms>-<n>`), or `0` for "from the start".
_EVENT_ID = re.compile(r"^(0|\d{1,20}-\d{1,20})$")
# Each part of a stream id is an unsigned 64-bit number; reading "after" the largest id there
# is would be asking Redis for an id past it.
_LARGEST_ID_PART = 2**64 - 1


def is_event_id(value: str) -> bool:
    """An id a client may resume after: as Redis makes them, within Redis' range."""
    if not _EVENT_ID.match(value):
        return False
    ms, n = _id_tuple(value)
    return ms <= _LARGEST_ID_PART and n <= _LARGEST_ID_PART and (ms, n) != (
        _LARGEST_ID_PART, _LARGEST_ID_PART)


def _id_tuple(event_id: str) -> tuple[int, int]:
    ms, _, n = event_id.partition("-")
    return int(ms), int(n or 0)


def _gap_after(after: str, trimmed_before: str | None) -> str | None:
    """None when the log still holds everything after `after`; else the id to read on after
    (the one just before the oldest entry kept: no id lies between the two)."""
    if not trimmed_before:
        return None
    ms, n = _id_tuple(trimmed_before)
    whole_after = (ms, n - 1) if n else (ms - 1, _LARGEST_ID_PART)
    if _id_tuple(after) >= whole_after:
        return None
    return f"{whole_after[0]}-{whole_after[1]}"


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    data: dict[str, Any]


class EventLog:
    def __init__(self, db: Any) -> None:
        self.db = db  # client.Database

    def events_after(self, session_id: str, after: str, *, count: int,
                     max_kept: int) -> tuple[list[Event], bool, str | None]:
        """(up to `count` events after id `after`, whether the session still exists, and —
        when events after `after` were trimmed from the log before they were read — the id
        to go on after, else None). A `reply` event carries the reply as the conversation
        keeps it (None once trimmed)."""
        start = "-" if after in ("0", "0-0") else f"({after}"
        pipe = self.db.redis.pipeline(transaction=False)
        pipe.xrange(events_key(session_id), start, "+", count=count)
        pipe.hmget(record_key(session_id), ("status", "events_trimmed_before"))
        entries, (status, trimmed_before) = self.db.call(pipe.execute)
        exists = status is not None
        missed = _gap_after(after, trimmed_before)
        if missed is not None:
            return [], exists, missed
        events = [Event(entry_id, fields["t"], json.loads(fields["d"]))
                  for entry_id, fields in entries]
        replies = [event for event in events if event.type == "reply"]
        if replies:
            stored = self.db.call(self.db.redis.hmget, _messages_key(session_id),
                                [f"{event.data['seq']}:reply" for event in replies])
            for event, reply in zip(replies, stored, strict=True):
                event.data["reply"] = json.loads(reply) if reply else None
        return events, bool(exists), missed

    def last_event_id(self, session_id: str) -> str:
        """Where the log stands now: resuming from it gives everything that comes after."""
        newest = self.db.call(self.db.redis.xrevrange, events_key(session_id), "+", "-", count=1)
        return newest[0][0] if newest else "0"

    def missed_since(self, session_id: str, after: str) -> str | None:
        """When events after `after` may have been trimmed from the log (it keeps about
        EVENTS_KEPT; the reader must re-read the conversation), the id to read on after;
        else None."""
        return _gap_after(after, self.db.call(self.db.redis.hget, record_key(session_id),
                                            "events_trimmed_before"))

    def append_chunk(self, session_id: str, *, lease_token: str, seq: int, message_id: str,
                     attempt: int, text: str) -> bool:
        """Relay part of a streamed reply; False when this attempt no longer holds the
        session's delivery (its lease lapsed) or the session is gone."""
        return bool(self.db.run(
            "append_chunk",
            [record_key(session_id), _delivery_lease(session_id), events_key(session_id)],
            [session_id, lease_token, seq, message_id, attempt, text]))

    def open_stream(self, session_id: str, token: str, *, limit: int,
                    lapse_seconds: float) -> int:
        """1: counted in; 0: the session has `limit` open streams already; -1: no session."""
        now = int(time.time() * 1000)
        return int(self.db.run(
            "open_stream", [record_key(session_id), _streams_key(session_id)],
            [token, now, now + int(lapse_seconds * 1000), limit]))

    def renew_streams(self, streams: list[tuple[str, str]], *, lapse_seconds: float) -> None:
        """Keep these (session id, token) streams counted for another lapse_seconds: one
        round trip for every stream a process holds."""
        if not streams:
            return
        lapses_at = int((time.time() + lapse_seconds) * 1000)
        pipe = self.db.redis.pipeline(transaction=False)
        for session_id, token in streams:
            pipe.zadd(_streams_key(session_id), {token: lapses_at}, xx=True)
        self.db.call(pipe.execute)

    def open_streams(self, session_id: str) -> int:
        """How many /events streams are open on the session now, on every replica."""
        now = int(time.time() * 1000)
        return int(self.db.call(self.db.redis.zcount, _streams_key(session_id), f"({now}", "+inf"))

    def close_stream(self, session_id: str, token: str) -> None:
        self.db.call(self.db.redis.zrem, _streams_key(session_id), token)
