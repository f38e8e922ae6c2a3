"""Every error leaves the API in one JSON shape: `{"error": <human readable>, "code": <stable
code>}`, our own errors, Werkzeug's (404, 405, 413...) and anything unexpected (500) alike."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from werkzeug.exceptions import HTTPException

from service.core.errors import HTTP_CODES, KubeError, SessionManagerError
from service.http.context import components

log = logging.getLogger("service.http")
errors = Blueprint("errors", __name__)


@errors.app_errorhandler(SessionManagerError)
def our_error(err: SessionManagerError) -> tuple[Response, int, dict]:
    if err.status >= 500:
        log.warning("%s: %s", type(err).__name__, err.message)
    if isinstance(err, KubeError) and err.status not in (404, 503):
        # A template the API server rejects is our bug, not the caller's.
        return jsonify({"error": "The Kubernetes API refused the session's objects",
                        "code": err.code}), 500, {}
    return jsonify(err.body()), err.status, err.headers()


@errors.app_errorhandler(HTTPException)
def http_error(err: HTTPException) -> tuple[Response, int]:
    status = err.code or 500
    code = HTTP_CODES.get(status, "http_error")
    message = {404: "Not found", 405: "Method not allowed",
               413: f"Request body larger than {components().settings.max_body_bytes} bytes"
               }.get(status, err.description or err.name)
    response = jsonify({"error": message, "code": code})
    if status == 405 and err.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(err.valid_methods)  # type: ignore[attr-defined]
    return response, status


@errors.app_errorhandler(Exception)
def unexpected(err: Exception) -> tuple[Response, int]:
    log.exception("unhandled error")
    return jsonify({"error": "Internal error", "code": "internal_error"}), 500
