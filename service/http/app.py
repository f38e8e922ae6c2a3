"""The API's app factory: it checks the settings, builds the components and wires them, the
blueprints and the request bookkeeping — every view lives in `views` and `admin`, every error
handler in `errors`. Each request gets one JSON log line with its id, route, status and
duration."""

from __future__ import annotations

import logging
import re
import secrets
import time

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry
from werkzeug.middleware.proxy_fix import ProxyFix

from service.bundle import check_templates
from service.core import logs
from service.core.config import Settings
from service.http.admin import admin, openapi_description
from service.http.auth import Authenticator
from service.http.context import Components
from service.http.errors import errors
from service.http.event_stream import EventStreams
from service.http.metrics import StoreCollector
from service.http.ratelimit import RateLimiter
from service.http.readiness import Readiness
from service.http.views import sessions as session_views
from service.kube import Kube
from service.pods import PodClient
from service.sessions import Sessions
from service.store import Store, keda_keys

log = logging.getLogger("service.http")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def create_app(settings: Settings, *, store: Store | None = None, kube: Kube | None = None,
               pods: PodClient | None = None) -> Flask:
    settings.check_serving()
    check_templates(settings, keda_keys)
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
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, warm_pool_target=settings.warm_pool_size))

    app = Flask(__name__, static_folder=None)  # /ui serves the chat page, when enabled
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # No redirects to a "canonical" path (// merged, a trailing / added): their bodies are
    # HTML, and an API client wants the 404 of a path that is not a route.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    app.extensions["session_manager"] = Components(
        settings=settings, sessions=sessions, store=store, kube=kube,
        streams=EventStreams(settings, store, sessions.notices),
        auth=Authenticator(settings.api_keys, disabled=settings.auth_disabled),
        limiter=RateLimiter(settings.redis_url, dict(settings.rate_limits),
                            enabled=settings.rate_limits_enabled,
                            socket_timeout_seconds=settings.redis_socket_timeout_seconds),
        readiness=Readiness(store, kube.ping), registry=registry,
        openapi=openapi_description())
    app.register_blueprint(errors)
    app.register_blueprint(session_views)
    app.register_blueprint(admin)
    app.before_request(_start_request)
    app.after_request(_finish_request)
    return app


def _start_request() -> None:
    g.started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else secrets.token_hex(8)
    g.session_id = None
    logs.request_context.set({"request_id": g.request_id})


def _finish_request(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    duration_ms = round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2)
    rule = request.url_rule.rule if request.url_rule else request.path[:100]
    extra = {"request_id": g.get("request_id"), "method": request.method, "route": rule,
             "status": response.status_code, "duration_ms": duration_ms,
             "remote_addr": request.remote_addr}
    if g.get("session_id"):
        extra["session_id"] = g.session_id
    log.info("request", extra=extra)
    return response
