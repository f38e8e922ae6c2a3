"""Server-Sent Events (the WHATWG `text/event-stream` format): writing frames for /events,
and reading the frames a streaming session pod sends."""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

CONTENT_TYPE = "text/event-stream"


def frame(event: str, data: Any, *, event_id: str | None = None) -> bytes:
    """One event; `data` as one line of JSON (JSON escapes newlines, so it stays one line)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def retry(milliseconds: int) -> bytes:
    return f"retry: {milliseconds}\n\n".encode()


@dataclass
class Frame:
    event: str
    data: str
    id: str | None


def parse(lines: Iterable[str]) -> Iterator[Frame]:
    """Frames from decoded lines (without their line ends), as a browser's EventSource reads
    them: `data` lines joined by newlines, comments skipped, the type `message` by default."""
    event, data, event_id = "", [], None
    for line in lines:
        if line == "":
            if data:
                yield Frame(event or "message", "\n".join(data), event_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\0" not in value:
            event_id = value
    # A frame without its closing blank line was cut: dropped, as EventSource drops it.


def lines(body: Iterable[bytes], on_invalid: Callable[[], None] | None = None) -> Iterator[str]:
    """Decoded lines (CRLF, LF or CR ends, which the format allows) as the bytes arrive. Bytes
    that are not UTF-8 become U+FFFD (`on_invalid` is told, once)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    pending = ""
    for chunk in body:
        try:
            pending += decoder.decode(chunk)
        except UnicodeDecodeError:
            if on_invalid is not None:
                on_invalid()
            on_invalid = None
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            pending += decoder.decode(chunk)
        *complete, pending = pending.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        yield from complete
    try:
        pending += decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        if on_invalid is not None:
            on_invalid()
        pending += "\ufffd"
    if pending:
        yield pending
