"""The pod contract written down (service/pods/openapi.yaml) against both of its sides: the
demo agent, the reference implementation, answers every generated delivery as described
(schemathesis), and what the control plane sends a pod is a delivery as described."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import schemathesis
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.core.config import REPO_ROOT
from service.pods.client import request_body

POD_CONTRACT = REPO_ROOT / "service" / "pods" / "openapi.yaml"


def not_a_server_error(ctx, response, case) -> None:
    if response.status_code >= 500:
        raise AssertionError(f"{response.status_code} for {case.method} {case.path}")


def test_the_demo_agent_answers_every_delivery_as_described(demo_agent):
    schema = schemathesis.openapi.from_path(str(POD_CONTRACT))
    schema.config.update(base_url=demo_agent.url)
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis_settings(max_examples=40, deadline=None, derandomize=True,
                             suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case) -> None:
            case.call_and_validate(checks=[not_a_server_error, status_code_conformance,
                                           content_type_conformance,
                                           response_schema_conformance])

        check()
        tried.append(f"{operation.method.upper()} {operation.path}")
    assert sorted(tried) == ["GET /healthz", "POST /chat"]


def test_what_the_control_plane_sends_is_a_delivery_as_described():
    contract = yaml.safe_load(Path(POD_CONTRACT).read_text())
    delivery = {**contract["components"]["schemas"]["Delivery"],
                "components": contract["components"]}
    history = ('[{"message_id":"m-1","message":"hi","reply":{"reply":"hello"},'
               '"state":"delivered"},{"message_id":"m-2","message":"x","reply":null,'
               '"state":"failed"}]')
    body = json.loads(request_body("what now?", "m-3", "s" + "a" * 16, "ada", history))
    jsonschema.validate(body, delivery)
    jsonschema.validate(json.loads(request_body("x", "m-1", "s" + "a" * 16, "", "[]")),
                        delivery)
