"""GET /session/{uuid}/events: the session's event log as Server-Sent Events.

Every event has the id of its log entry, so a client that lost its connection resumes with
`Last-Event-ID` (or `?after=`) and misses nothing the log still keeps; resuming from further
back than that gets a `gap` event (re-read /messages). The log is in Redis, written by whichever
process changed the session, so a stream served by any API replica sees every change; the
process's `Notices` wakes the streams of a session whose log grew.

Limits: MAX_EVENT_STREAMS per process, MAX_EVENT_STREAMS_PER_SESSION across replicas (429
beyond). A stream ends after EVENT_STREAM_MAX_SECONDS, when its session is deleted, when Redis
is unreachable, and when the process stops; the client resumes where it was.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator

from service.core import sse
from service.core.config import Settings
from service.core.errors import InvalidField, SessionManagerError, SessionNotFound, TooManyStreams
from service.sessions.notices import Notices
from service.store import EVENTS_CHANNEL, Store
from service.store.event_log import is_event_id

log = logging.getLogger(__name__)

BATCH = 200  # log entries read per round trip
RETRY_MILLISECONDS = 2000  # what a client waits before resuming a stream that ended


def resume_point(last_event_id: str | None, after: str | None) -> str | None:
    """The id to resume after (`?after=` wins over `Last-Event-ID`), None to start now."""
    value = after if after not in (None, "") else last_event_id
    if value in (None, ""):
        return None
    value = value.strip()
    if not is_event_id(value):
        raise InvalidField("Last-Event-ID / after must be an event id (as sent in `id:`) "
                           "or 0 for the whole kept log")
    return value


class EventStreams:
    def __init__(self, settings: Settings, store: Store, notices: Notices) -> None:
        self.settings = settings
        self.store = store
        self.notices = notices
        self._open = 0
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}  # token -> session id, for the renewals
        self._renewer: threading.Thread | None = None

    @property
    def open_count(self) -> int:
        return self._open

    def open(self, session_id: str, after: str | None) -> EventStream:
        """Count the stream in (429 past a limit, 404 for a session that is gone)."""
        with self._lock:
            if self._open >= self.settings.max_event_streams:
                raise TooManyStreams(
                    f"This API process holds {self._open} event streams "
                    f"(MAX_EVENT_STREAMS); retry, or on another replica",
                    limit=self.settings.max_event_streams, retry_after_seconds=2)
            self._open += 1
        token = secrets.token_hex(8)
        try:
            opened = self.store.events.open_stream(
                session_id, token, limit=self.settings.max_event_streams_per_session,
                lapse_seconds=self._lapse_seconds)
        except BaseException:
            self._release_slot()
            raise
        if opened != 1:
            self._release_slot()
            if opened == -1:
                raise SessionNotFound()
            raise TooManyStreams(
                f"This session has {self.settings.max_event_streams_per_session} open event "
                "streams (MAX_EVENT_STREAMS_PER_SESSION); close one first",
                limit=self.settings.max_event_streams_per_session,
                retry_after_seconds=int(self._lapse_seconds) + 1)
        with self._lock:
            self._held[token] = session_id
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew, name="event-streams",
                                                 daemon=True)
                self._renewer.start()
        return EventStream(self, session_id, token, after)

    def _renew(self) -> None:
        """Every heartbeat, all of this process's places in the per-session counts in one
        round trip (not one per stream)."""
        while not self.notices.released:
            time.sleep(self.settings.events_heartbeat_seconds)
            with self._lock:
                held = [(sid, token) for token, sid in self._held.items()]
            try:
                self.store.events.renew_streams(held, lapse_seconds=self._lapse_seconds)
            except SessionManagerError as err:
                log.warning("open event streams not renewed: %s", err.message)

    @property
    def _lapse_seconds(self) -> float:
        # Renewed every heartbeat; a replica that died frees its places after three missed.
        return 3 * self.settings.events_heartbeat_seconds + 1

    def _release_slot(self, token: str | None = None) -> None:
        with self._lock:
            self._open -= 1
            self._held.pop(token, None)


class EventStream:
    """The response body of one stream: iterated by the server; close() (always called by
    the WSGI server, also for a stream never started) gives its places back."""

    def __init__(self, streams: EventStreams, session_id: str, token: str,
                 after: str | None) -> None:
        self.streams = streams
        self.session_id = session_id
        self.token = token
        self.after = after
        self._closed = False
        self._frames = self._run()

    def __iter__(self) -> Iterator[bytes]:
        return self._frames

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._frames.close()
        self.streams._release_slot(self.token)
        with contextlib.suppress(SessionManagerError):  # else its place lapses by itself
            self.streams.store.events.close_stream(self.session_id, self.token)

    def _run(self) -> Iterator[bytes]:
        store, settings, notices = self.streams.store, self.streams.settings, self.streams.notices
        sid = self.session_id
        wake = notices.register(EVENTS_CHANNEL, sid)
        deadline = time.monotonic() + settings.event_stream_max_seconds
        heartbeat = settings.events_heartbeat_seconds
        try:
            yield sse.retry(RETRY_MILLISECONDS)
            if self.after is None:
                last = store.events.last_event_id(sid)
                yield sse.frame("status", self._status_snapshot(), event_id=last)
            else:
                last = self.after
                resume = store.events.missed_since(sid, last)
                if resume is not None:
                    yield self._gap(last)
                    last = resume
            beat_at = time.monotonic() + heartbeat
            read = True
            while True:
                if not read:
                    # Only a notice makes an idle stream read: a subscription that broke wakes
                    # every stream once it is back, and a stream lives at most
                    # EVENT_STREAM_MAX_SECONDS (its client then resumes, reading). Reading at
                    # every heartbeat as well would be most of an idle process's work.
                    wake.wait(max(0.0, min(beat_at, deadline) - time.monotonic()))
                    read = wake.is_set()
                now = time.monotonic()
                if now >= deadline or notices.released:
                    return
                if now >= beat_at:
                    yield sse.comment("heartbeat")
                    beat_at = now + heartbeat
                if not read:
                    continue
                wake.clear()  # before reading: a notice during the read is not lost
                events, exists, missed = store.events.events_after(
                    sid, last, count=BATCH, max_kept=settings.max_messages_kept)
                if missed is not None:
                    # The log was trimmed past where this stream stood (it fell behind):
                    # say so, then go on from what the log still has.
                    yield self._gap(last)
                    last, read = missed, True
                    continue
                for event in events:
                    yield sse.frame(event.type, event.data, event_id=event.id)
                    last = event.id
                if not exists:
                    yield sse.frame("status", {"status": "terminated"}, event_id=last)
                    return
                read = len(events) == BATCH  # more to read at once
        except SessionManagerError as err:
            # Redis away: end the stream; the client resumes from its last id once it is back.
            log.warning("event stream ended: %s", err.message, extra={"session_id": sid})
        finally:
            notices.unregister(EVENTS_CHANNEL, sid, wake)

    @staticmethod
    def _gap(after: str) -> bytes:
        return sse.frame("gap", {"after": after,
                                 "message": "events after this id were trimmed from the log: "
                                            "re-read /messages"}, event_id=after)

    def _status_snapshot(self) -> dict:
        record = self.streams.store.records.get_session(self.session_id) or {}
        return {"status": record.get("status", "terminated"), "reason": record.get("reason", ""),
                "replicas": int(record.get("replicas") or 0),
                "ready_replicas": int(record.get("ready_replicas") or 0),
                "paused": record.get("paused") == "1"}
