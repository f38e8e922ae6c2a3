"""The REST API: an app factory and thin views (parse, authenticate, limit, call `sessions`).

Every response is JSON, errors included (`errors` holds the one shape); every request gets
one JSON log line with its id, route, status and duration.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from pathlib import Path
from typing import Any

import yaml
from flask import Flask, Response, g, jsonify, request, send_from_directory
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.middleware.proxy_fix import ProxyFix

from . import __version__, logs, names, sse
from .auth import Authenticator
from .config import Settings
from .errors import (
    HTTP_CODES,
    InvalidField,
    KubeError,
    SessionManagerError,
    SessionNotFound,
    UnsupportedMediaType,
)
from .events import EventStreams, resume_point
from .kube import Kube
from .metrics import StoreCollector
from .pods import PodClient
from .ratelimit import RateLimiter
from .readiness import Readiness
from .sessions import Result, Sessions
from .store import Store
from .templates import check_templates
from .waiting import requested_wait

log = logging.getLogger("service.api")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def create_app(settings: Settings, *, store: Store | None = None, kube: Kube | None = None,
               pods: PodClient | None = None) -> Flask:
    settings.check_serving()
    check_templates(settings)
    logs.configure(settings.log_level)
    if settings.auth_disabled:
        log.warning("authentication is DISABLED (AUTH_DISABLED=true): local development only")
    store = store or Store.from_url(
        settings.redis_url, socket_timeout_seconds=settings.redis_socket_timeout_seconds,
        session_ttl_seconds=settings.session_ttl_seconds,
        activity_ttl_seconds=settings.activity_ttl_seconds,
        events_kept=settings.max_events_kept, max_connections=settings.redis_max_connections)
    kube = kube or Kube.from_environment(settings.namespace)
    sessions = Sessions(settings, store, kube, pods)
    streams = EventStreams(settings, store, sessions.notices)
    auth = Authenticator(settings.api_keys, disabled=settings.auth_disabled)
    limiter = RateLimiter(settings.redis_url, dict(settings.rate_limits),
                          enabled=settings.rate_limits_enabled,
                          socket_timeout_seconds=settings.redis_socket_timeout_seconds)
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))

    app = Flask(__name__, static_folder=None)  # /ui serves the chat page, when enabled
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # No redirects to a "canonical" path (// merged, a trailing / added): their bodies are
    # HTML, and an API client wants the 404 of a path that is not a route.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    app.extensions["session_manager"] = {"sessions": sessions, "store": store, "kube": kube,
                                         "streams": streams}

    # -- request bookkeeping -------------------------------------------------------------

    @app.before_request
    def start_request() -> None:
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else secrets.token_hex(8)
        g.session_id = None
        logs.request_context.set({"request_id": g.request_id})

    @app.after_request
    def finish_request(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        duration_ms = round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000,
                            2)
        rule = request.url_rule.rule if request.url_rule else request.path[:100]
        extra = {"request_id": g.get("request_id"), "method": request.method, "route": rule,
                 "status": response.status_code, "duration_ms": duration_ms,
                 "remote_addr": request.remote_addr}
        if g.get("session_id"):
            extra["session_id"] = g.session_id
        log.info("request", extra=extra)
        return response

    # -- errors --------------------------------------------------------------------------

    @app.errorhandler(SessionManagerError)
    def our_error(err: SessionManagerError) -> tuple[Response, int, dict]:
        if err.status >= 500:
            log.warning("%s: %s", type(err).__name__, err.message)
        if isinstance(err, KubeError) and err.status not in (404, 503):
            # A template the API server rejects is our bug, not the caller's.
            return jsonify({"error": "The Kubernetes API refused the session's objects",
                            "code": err.code}), 500, {}
        return jsonify(err.body()), err.status, err.headers()

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> tuple[Response, int]:
        status = err.code or 500
        code = HTTP_CODES.get(status, "http_error")
        message = {404: "Not found", 405: "Method not allowed",
                   413: f"Request body larger than {settings.max_body_bytes} bytes"}.get(
            status, err.description or err.name)
        response = jsonify({"error": message, "code": code})
        if status == 405 and err.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(err.valid_methods)  # type: ignore[attr-defined]
        return response, status

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return jsonify({"error": "Internal error", "code": "internal_error"}), 500

    # -- helpers -------------------------------------------------------------------------

    def respond(result: Result) -> tuple[Response, int]:
        return jsonify(result.body), result.status

    def json_body() -> dict[str, Any]:
        if not request.is_json:
            raise UnsupportedMediaType()
        raw = request.get_data(cache=False)  # 413 up front past MAX_BODY_BYTES by length
        if request.content_length is None and len(raw) >= settings.max_body_bytes:
            # A chunked body is cut at the limit, silently: reading on raises the 413.
            request.stream.read(1)
        return parse_json_object(raw)

    def session_route(route: str, session_id: str) -> dict[str, str] | None:
        """Check the id (404 before any I/O), the rate limit and the caller; returns the
        record when it had to be read to check a session token."""
        if not names.is_session_id(session_id):
            raise SessionNotFound()
        g.session_id = session_id
        limiter.hit(route, request.remote_addr or "unknown")
        if auth.disabled:
            return None
        record: dict[str, str] | None = None

        def token_hash() -> str | None:
            nonlocal record
            record = store.get_session(session_id)
            return record.get("token") if record else None

        g.principal = auth.for_session(request, token_hash)
        return record

    def query_int(name: str, default: int | None, low: int, high: int) -> int | None:
        raw = request.args.get(name)
        if raw is None or raw == "":
            return default
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise InvalidField(f"{name} must be an integer from {low} to {high}")
        return int(raw)

    # -- routes --------------------------------------------------------------------------

    @app.post("/session/create")
    def create() -> tuple[Response, int]:
        limiter.hit("create", request.remote_addr or "unknown")
        principal = auth.require_api_key(request)
        body = json_body()
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 200:
            raise InvalidField("Idempotency-Key must be 1 to 200 characters")
        scope = f"{principal.subject}:{key}" if key else None
        result = sessions.create(body.get("user_id"), idempotency_scope=scope)
        g.session_id = result.body.get("uuid")
        return respond(result)

    @app.post("/session/<session_id>/wake")
    def wake(session_id: str) -> tuple[Response, int]:
        session_route("wake", session_id)
        return respond(sessions.wake(session_id))

    @app.post("/session/<session_id>/sleep")
    def sleep(session_id: str) -> tuple[Response, int]:
        session_route("sleep", session_id)
        return respond(sessions.sleep(session_id))

    @app.get("/session/<session_id>/status")
    def status(session_id: str) -> tuple[Response, int]:
        record = session_route("status", session_id)
        return respond(sessions.status(session_id, record))

    @app.post("/session/<session_id>/chat")
    def chat(session_id: str) -> tuple[Response, int]:
        session_route("chat", session_id)
        body = json_body()
        wait = requested_wait(request.headers.getlist("Prefer"))
        if wait is not None:
            wait = min(wait, settings.max_wait_seconds)
        result = sessions.chat(session_id, body.get("message"), body.get("message_id"),
                               wait_seconds=wait or 0)
        response, status = respond(result)
        if wait is not None:
            response.headers["Preference-Applied"] = f"wait={wait}"
        return response, status

    @app.get("/session/<session_id>/messages")
    def messages(session_id: str) -> tuple[Response, int]:
        record = session_route("messages", session_id)
        if record is None:
            sessions.record(session_id)
        after = query_int("after", 0, 0, 2**53)
        limit = query_int("limit", 50, 1, 500)
        return respond(sessions.messages(session_id, after=after or 0, limit=limit or 50))

    @app.get("/session/<session_id>/events")
    def events(session_id: str) -> Response:
        session_route("events", session_id)
        after = resume_point(request.headers.get("Last-Event-ID"), request.args.get("after"))
        stream = streams.open(session_id, after)
        # No buffering anywhere on the way: a proxy that buffers holds every chunk back.
        return Response(stream, status=200, content_type=sse.CONTENT_TYPE,
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.delete("/session/<session_id>")
    def delete(session_id: str) -> tuple[Response, int]:
        session_route("delete", session_id)
        return respond(sessions.delete(session_id))

    @app.get("/sessions")
    def list_sessions() -> tuple[Response, int]:
        auth.require_api_key(request)
        status_filter = request.args.get("status") or None
        limit = query_int("limit", 100, 1, 1000)
        cursor = query_int("cursor", None, 0, 2**53)
        return respond(sessions.list(status=status_filter, limit=limit or 100, cursor=cursor))

    @app.get("/metrics")
    def metrics() -> Response | tuple[Response, int]:
        auth.require_api_key(request)
        wanted = request.accept_mimetypes.best_match(
            ["application/json", "text/plain", "application/openmetrics-text"],
            default="application/json")
        if wanted != "application/json":
            encoder, content_type = choose_encoder(request.headers.get("Accept", "text/plain"))
            return Response(encoder(registry), status=200, content_type=content_type)
        return jsonify(sessions.figures()), 200

    readiness = Readiness(store, kube.ping)

    @app.get("/health")
    def health() -> tuple[Response, int]:
        body, status = readiness.report()
        return jsonify(body), status

    description = openapi_description()

    @app.get("/openapi.json")
    def openapi() -> tuple[Response, int]:
        return jsonify(description), 200

    @app.get("/ui")
    @app.get("/ui/<asset>")
    def chat_page(asset: str = "index.html") -> Response:
        if not settings.chat_page_enabled or asset not in CHAT_PAGE_ASSETS:
            raise NotFound()
        response = send_from_directory(CHAT_PAGE_DIR, asset, max_age=0)
        # The page runs its own script only and talks to this origin only.
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/livez")
    def livez() -> tuple[Response, int]:
        return jsonify({"status": "alive", "version": __version__}), 200

    return app


OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.yaml"
CHAT_PAGE_DIR = Path(__file__).resolve().parent / "static"
CHAT_PAGE_ASSETS = ("index.html", "app.js", "app.css")


def openapi_description() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route (service/openapi.yaml)."""
    return yaml.safe_load(OPENAPI_FILE.read_text())


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
