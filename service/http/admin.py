"""The routes that are not one session's: the session list and the figures (API key only),
the probes, the API's description and the chat page."""

from __future__ import annotations

from pathlib import Path

import yaml
from flask import Blueprint, Response, jsonify, request, send_from_directory
from prometheus_client.exposition import choose_encoder
from werkzeug.exceptions import NotFound

from service import __version__
from service.http.context import components
from service.http.requests import query_int, respond

OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.yaml"
CHAT_PAGE_DIR = Path(__file__).resolve().parent / "static"
CHAT_PAGE_ASSETS = ("index.html", "app.js", "app.css")

admin = Blueprint("admin", __name__)


def openapi_description() -> dict:
    """The OpenAPI 3.1 description of every route (service/http/openapi.yaml)."""
    return yaml.safe_load(OPENAPI_FILE.read_text())


@admin.get("/sessions")
def list_sessions() -> tuple[Response, int]:
    parts = components()
    parts.auth.require_api_key(request)
    status_filter = request.args.get("status") or None
    limit = query_int("limit", 100, 1, 1000)
    cursor = query_int("cursor", None, 0, 2**53)
    return respond(parts.sessions.listing.page(status=status_filter, limit=limit or 100,
                                               cursor=cursor))


@admin.get("/metrics")
def metrics() -> Response | tuple[Response, int]:
    parts = components()
    parts.auth.require_api_key(request)
    wanted = request.accept_mimetypes.best_match(
        ["application/json", "text/plain", "application/openmetrics-text"],
        default="application/json")
    if wanted != "application/json":
        encoder, content_type = choose_encoder(request.headers.get("Accept", "text/plain"))
        return Response(encoder(parts.registry), status=200, content_type=content_type)
    return jsonify(parts.sessions.listing.figures()), 200


@admin.get("/health")
def health() -> tuple[Response, int]:
    body, status = components().readiness.report()
    return jsonify(body), status


@admin.get("/livez")
def livez() -> tuple[Response, int]:
    return jsonify({"status": "alive", "version": __version__}), 200


@admin.get("/openapi.json")
def openapi() -> tuple[Response, int]:
    return jsonify(components().openapi), 200


@admin.get("/ui")
@admin.get("/ui/<asset>")
def chat_page(asset: str = "index.html") -> Response:
    if not components().settings.chat_page_enabled or asset not in CHAT_PAGE_ASSETS:
        raise NotFound()
    response = send_from_directory(CHAT_PAGE_DIR, asset, max_age=0)
    # The page runs its own script only and talks to this origin only.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
