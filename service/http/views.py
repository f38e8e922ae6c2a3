"""The session routes (/session/...): each view parses, authenticates, limits, and calls the
sessions layer; nothing else."""

from __future__ import annotations

from flask import Blueprint, Response, g, request

from service.core import sse
from service.core.errors import InvalidField
from service.http.context import components
from service.http.event_stream import resume_point
from service.http.requests import json_body, query_int, respond, session_route
from service.sessions import requested_wait

sessions = Blueprint("sessions", __name__)


@sessions.post("/session/create")
def create() -> tuple[Response, int]:
    parts = components()
    parts.limiter.hit("create", request.remote_addr or "unknown")
    principal = parts.auth.require_api_key(request)
    body = json_body()
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 200:
        raise InvalidField("Idempotency-Key must be 1 to 200 characters")
    scope = f"{principal.subject}:{key}" if key else None
    result = parts.sessions.create(body.get("user_id"), idempotency_scope=scope)
    g.session_id = result.body.get("uuid")
    return respond(result)


@sessions.post("/session/<session_id>/wake")
def wake(session_id: str) -> tuple[Response, int]:
    session_route("wake", session_id)
    return respond(components().sessions.wake(session_id))


@sessions.post("/session/<session_id>/sleep")
def sleep(session_id: str) -> tuple[Response, int]:
    session_route("sleep", session_id)
    return respond(components().sessions.sleep(session_id))


@sessions.get("/session/<session_id>/status")
def status(session_id: str) -> tuple[Response, int]:
    record = session_route("status", session_id)
    return respond(components().sessions.status(session_id, record))


@sessions.post("/session/<session_id>/chat")
def chat(session_id: str) -> tuple[Response, int]:
    session_route("chat", session_id)
    body = json_body()
    wait = requested_wait(request.headers.getlist("Prefer"))
    if wait is not None:
        wait = min(wait, components().settings.max_wait_seconds)
    result = components().sessions.chats.chat(session_id, body.get("message"),
                                               body.get("message_id"), wait_seconds=wait or 0)
    response, code = respond(result)
    if wait is not None:
        response.headers["Preference-Applied"] = f"wait={wait}"
    return response, code


@sessions.get("/session/<session_id>/messages")
def messages(session_id: str) -> tuple[Response, int]:
    record = session_route("messages", session_id)
    if record is None:
        components().sessions.record(session_id)
    after = query_int("after", 0, 0, 2**53)
    limit = query_int("limit", 50, 1, 500)
    return respond(components().sessions.chats.messages(session_id, after=after or 0,
                                                         limit=limit or 50))


@sessions.get("/session/<session_id>/events")
def events(session_id: str) -> Response:
    session_route("events", session_id)
    after = resume_point(request.headers.get("Last-Event-ID"), request.args.get("after"))
    stream = components().streams.open(session_id, after)
    # No buffering anywhere on the way: a proxy that buffers holds every chunk back.
    return Response(stream, status=200, content_type=sse.CONTENT_TYPE,
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@sessions.delete("/session/<session_id>")
def delete(session_id: str) -> tuple[Response, int]:
    session_route("delete", session_id)
    return respond(components().sessions.delete(session_id))
