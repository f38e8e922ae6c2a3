"""Fuzzing the inputs (hypothesis): whatever a client sends, the answer is JSON, never a 5xx
other than a 503, and a refused request changes nothing. Real Redis and API server."""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from service.core.errors import InvalidField
from service.http import create_app, parse_json_object

from .constants import API_KEY

KEY = {"X-API-Key": API_KEY}
FUZZ = hypothesis_settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30)
# What an HTTP header value can carry at all (latin-1, no line breaks or NUL).
header_chars = st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f")


@FUZZ
@given(st.binary(max_size=2000))
def test_the_body_parser_returns_an_object_or_refuses_with_400(raw):
    try:
        parsed = parse_json_object(raw)
    except InvalidField:
        return
    assert isinstance(parsed, dict)
    json.dumps(parsed, ensure_ascii=False).encode("utf-8")  # storable as it is


def assert_clean(response) -> None:
    assert response.is_json, response.get_data(as_text=True)[:200]
    assert response.status_code < 500 or response.status_code == 503, response.get_json()


@FUZZ
@given(body=json_values, message_id=st.one_of(st.none(), st.text(max_size=140)),
       message=st.one_of(st.text(max_size=300), json_values))
def test_chat_never_answers_500_whatever_the_body(settings, store, kube, body, message_id,
                                                  message):
    client, session_id = _app(settings, store, kube)
    for payload in (body, {"message": message, "message_id": message_id}):
        response = client.post(f"/session/{session_id}/chat", json=payload, headers=KEY)
        assert_clean(response)
        if response.status_code >= 400:
            assert set(response.get_json()) == {"error", "code"}


@FUZZ
@given(path=st.text(max_size=60), query=st.dictionaries(
    st.sampled_from(["after", "limit", "cursor", "status"]), st.text(max_size=30), max_size=4))
def test_reads_never_answer_500_whatever_the_path_or_query(settings, store, kube, path, query):
    client, session_id = _app(settings, store, kube)
    path = quote(path, safe="/")  # as a client library sends it
    for url in (f"/session/{session_id}/messages", "/sessions", f"/session/{path}/status",
                f"/session/{session_id}/{path}"):
        assert_clean(client.get(url, query_string=query, headers=KEY))


@hypothesis_settings(FUZZ, max_examples=60)
@given(body=json_values, key=st.one_of(st.none(), st.text(header_chars, max_size=220)),
       auth=st.one_of(st.none(), st.text(header_chars, max_size=80)))
def test_create_never_answers_500_and_a_refusal_creates_nothing(settings, store, kube, body,
                                                                key, auth):
    client, _ = _app(settings, store, kube)
    headers = dict(KEY)
    if key is not None:
        headers["Idempotency-Key"] = key
    if auth is not None:
        headers["Authorization"] = auth
    before = store.index.counts()["total"]
    response = client.post("/session/create", json=body, headers=headers)
    assert_clean(response)
    if response.status_code != 201:
        assert store.index.counts()["total"] == before


_apps: dict = {}


def _app(settings, store, kube):
    """One app and one session per test: hypothesis runs every example on one set of
    fixtures."""
    key = (id(store), id(kube))
    if key not in _apps:
        _apps.clear()
        client = create_app(settings.replace(rate_limits_enabled=False), store=store,
                            kube=kube).test_client()
        response = client.post("/session/create", json={"user_id": "fuzz"}, headers=KEY)
        assert response.status_code == 201, response.get_json()
        _apps[key] = (client, response.get_json()["uuid"])
    return _apps[key]
