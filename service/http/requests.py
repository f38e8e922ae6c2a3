"""What every view does with a request: read a JSON body, a query integer, check a session
route's id, rate limit and caller, and turn a use case's Result into a response."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, g, jsonify, request

from service.core import names
from service.core.errors import InvalidField, SessionNotFound, UnsupportedMediaType
from service.http.context import components
from service.sessions import Result


def respond(result: Result) -> tuple[Response, int]:
    return jsonify(result.body), result.status


def json_body() -> dict[str, Any]:
    if not request.is_json:
        raise UnsupportedMediaType()
    raw = request.get_data(cache=False)  # 413 up front past MAX_BODY_BYTES by length
    if request.content_length is None \
            and len(raw) >= components().settings.max_body_bytes:
        # A chunked body is cut at the limit, silently: reading on raises the 413.
        request.stream.read(1)
    return parse_json_object(raw)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or InvalidField: malformed, nested too deep for the
    parser, not an object, or holding text that is not Unicode (an unpaired surrogate escape
    such as "\\ud800" parses, but could never be stored or sent on)."""
    try:
        data = json.loads(raw)
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise InvalidField("The body is nested too deeply") from None
    except UnicodeError:
        raise InvalidField("The body holds text that is not valid UTF-8 "
                           "(or an unpaired surrogate escape)") from None
    except ValueError:
        raise InvalidField("The body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidField("The body must be a JSON object")
    return data


def query_int(name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidField(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def session_route(route: str, session_id: str) -> dict[str, str] | None:
    """Check the id (404 before any I/O), the rate limit and the caller; returns the record
    when it had to be read to check a session token."""
    if not names.is_session_id(session_id):
        raise SessionNotFound()
    g.session_id = session_id
    parts = components()
    parts.limiter.hit(route, request.remote_addr or "unknown")
    if parts.auth.disabled:
        return None
    record: dict[str, str] | None = None

    def token_hash() -> str | None:
        nonlocal record
        record = parts.store.records.get_session(session_id)
        return record.get("token") if record else None

    g.principal = parts.auth.for_session(request, token_hash)
    return record
