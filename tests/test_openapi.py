"""The OpenAPI description against the code: the same routes and methods, and schemathesis
calling every operation with generated input on the real stack (Redis, API server), each
answer checked against the description (status code documented, body matching its schema,
content type) and never a 5xx other than 503."""

from __future__ import annotations

import re

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.http import create_app
from service.http.admin import openapi_description

from .constants import API_KEY

KEY = {"X-API-Key": API_KEY}
EXAMPLES = 40  # per operation


def flask_routes(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        routes |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def test_every_route_is_described_and_every_description_is_a_route(settings, store, kube):
    app = create_app(settings, store=store, kube=kube)
    described = {(path, method) for path, operations in openapi_description()["paths"].items()
                 for method in operations}
    assert described == flask_routes(app)
    served = app.test_client().get("/openapi.json")
    assert served.status_code == 200 and served.get_json()["openapi"].startswith("3.1")


def not_a_server_error_but_503(ctx, response, case) -> None:
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(f"{response.status_code} for {case.method} {case.path}")


CHECKS = [not_a_server_error_but_503, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def test_every_operation_answers_as_described(settings, store, kube):
    """schemathesis' strategies driven by hypothesis directly (its pytest plugin predates
    pytest 9): every operation, generated input, each answer validated."""
    app = create_app(settings.replace(rate_limits_enabled=False, max_wait_seconds=1,
                                      event_stream_max_seconds=1),
                     store=store, kube=kube)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                             suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case) -> None:
            case.call_and_validate(headers=KEY, checks=CHECKS)

        check()
        tried.append(f"{operation.method.upper()} {operation.path}")
    # schemathesis leaves out the operation serving the description itself.
    assert set(tried) == {f"{method.upper()} {path}" for path, method in flask_routes(app)} - {
        "GET /openapi.json"}
