"""The API as production serves it (gunicorn + gevent, a real process): slow agents do not
starve the probes, and the HTTP server's own refusals are JSON like every other answer."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from devcluster.processes import wait_until

from .constants import API_KEY

HEADERS = {"X-API-Key": API_KEY}
SLOW_AGENT_SECONDS = 20
CONCURRENT_CHATS = 50


def raw_exchange(port: int, request: bytes, *, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send bytes as they are (no client library fixing them up); parse what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        length = int(headers.get("Content-Length", 0))
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def test_the_http_servers_own_refusals_are_json_errors(settings, api_process):
    api = api_process(settings)
    cases = {
        "request line too long": (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                                  414, "request_line_too_long"),
        "too many headers": (b"GET /health HTTP/1.1\r\nHost: x\r\n"
                             + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
                             431, "headers_too_large"),
        "one huge header": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000
                            + b"\r\n\r\n", 431, "headers_too_large"),
        "malformed request line": (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        "unknown transfer coding": (b"POST /session/create HTTP/1.1\r\nHost: x\r\n"
                                    b"Transfer-Encoding: gzip\r\n\r\n", 400,
                                    {"bad_request", "unsupported_transfer_coding"}),
    }
    for name, (request, status, code) in cases.items():
        got, headers, body = raw_exchange(api.port, request)
        assert (got, headers.get("Content-Type")) == (status, "application/json"), name
        assert json.loads(body)["code"] in ({code} if isinstance(code, str) else code), name
        assert b"aaaa" not in body and b"bbbb" not in body, f"{name}: the request is echoed"
    assert requests.get(f"{api.url}/livez", timeout=5).ok  # none of it hurt the process


def test_an_oversized_body_is_read_and_answered_413_with_nothing_stored(settings, api_process,
                                                                         store):
    api = api_process(settings)
    body = json.dumps({"user_id": "u" * (settings.max_body_bytes * 4)}).encode()
    # The whole body is sent before the answer is read: a server that answered and closed
    # while the client was still sending would reset the connection (no answer at all).
    request = (b"POST /session/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               + f"X-API-Key: {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    status, _, answer = raw_exchange(api.port, request)
    assert (status, json.loads(answer)["code"]) == (413, "payload_too_large")
    assert store.index.counts()["total"] == 0
    # Through a client library too, chunked (no Content-Length to refuse on up front).
    response = requests.post(f"{api.url}/session/create", headers={
        **HEADERS, "Content-Type": "application/json"}, data=iter([body[:1000], body[1000:]]),
        timeout=10)
    assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")


def test_health_stays_fast_while_fifty_chats_wait_on_a_slow_agent(
        settings, make_agent, running_sessions, api_process):
    """One API process (one gevent worker), 50 running sessions, a chat to each held 20 s by
    its agent: /health and /status answer throughout in well under 100 ms, and every chat
    gets its reply. (One session takes one message at a time, in order: the fifty are
    sessions.)"""
    agent = make_agent(delay_seconds=SLOW_AGENT_SECONDS).start()
    settings = settings.replace(pod_url_template=agent.url, pod_timeout_seconds=40,
                                delivery_lease_seconds=60)
    api = api_process(settings, POD_TIMEOUT_SECONDS="40", DELIVERY_LEASE_SECONDS="60",
                      RATE_LIMITS_ENABLED="false")  # the probes poll faster than 200/min
    session_ids = running_sessions(api, settings, CONCURRENT_CHATS)

    def chat(session_id: str) -> tuple[int, str]:
        response = requests.post(f"{api.url}/session/{session_id}/chat", headers=HEADERS,
                                 json={"message": "think hard"},
                                 timeout=SLOW_AGENT_SECONDS + 30)
        return response.status_code, response.json().get("status", "")

    latencies: dict[str, list[float]] = {"/health": [], "/status": []}
    bad_probes: list[str] = []
    done = threading.Event()

    def probe() -> None:
        with requests.Session() as client:
            while not done.is_set():
                for route, url in (("/health", f"{api.url}/health"),
                                   ("/status", f"{api.url}/session/{session_ids[0]}/status")):
                    started = time.perf_counter()
                    response = client.get(url, headers=HEADERS, timeout=5)
                    latencies[route].append(time.perf_counter() - started)
                    if response.status_code != 200:
                        bad_probes.append(f"{route}: {response.status_code}")
                time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    with ThreadPoolExecutor(CONCURRENT_CHATS) as pool:
        started = time.monotonic()
        answers = list(pool.map(chat, session_ids))
        elapsed = time.monotonic() - started
    done.set()
    prober.join(10)
    assert bad_probes == []
    assert answers == [(200, "processed")] * CONCURRENT_CHATS
    # Concurrent, not one after another: 50 x 20 s would be 1,000 s.
    assert elapsed < SLOW_AGENT_SECONDS * 2, elapsed
    for route, values in latencies.items():
        values.sort()
        p99 = values[max(0, int(len(values) * 0.99) - 1)]
        print(f"{route}: {len(values)} probes, p50 {statistics.median(values) * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms, max {values[-1] * 1000:.1f} ms")
        assert len(values) > 50, route
        assert p99 < 0.1, f"{route} p99 {p99 * 1000:.0f} ms"


@pytest.fixture
def running_sessions(make_worker, mark_ready, status_watch):
    """running_sessions(api, settings, count): sessions created through the API process,
    running as the real status watch records them."""
    def start(api, settings, count: int) -> list[str]:
        session_ids = []
        for index in range(count):
            created = requests.post(f"{api.url}/session/create", json={"user_id": f"u-{index}"},
                                    headers=HEADERS, timeout=30)
            assert created.status_code == 201, created.text
            session_ids.append(created.json()["uuid"])

        def status_of(session_id: str) -> str:
            return requests.get(f"{api.url}/session/{session_id}/status", headers=HEADERS,
                                timeout=5).json()["status"]

        with status_watch(make_worker(settings)):
            for session_id in session_ids:
                mark_ready(session_id)
            wait_until(lambda: all(status_of(s) == "running" for s in session_ids),
                       timeout=30, interval=0.2, what="the sessions to run")
        return session_ids

    return start


def test_past_max_forwards_a_chat_is_queued_for_the_worker_not_held(
        settings, make_agent, running_sessions, api_process):
    agent = make_agent(delay_seconds=3).start()
    settings = settings.replace(pod_url_template=agent.url)
    api = api_process(settings, MAX_FORWARDS="2")
    session_ids = running_sessions(api, settings, 5)

    def chat(session_id: str) -> tuple[int, str, float]:
        started = time.monotonic()
        response = requests.post(f"{api.url}/session/{session_id}/chat", headers=HEADERS,
                                 json={"message": "hi"}, timeout=30)
        return response.status_code, response.json()["status"], time.monotonic() - started

    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(chat, session_ids))
    assert sorted(status for _, status, _ in answers) == ["processed"] * 2 + ["queued"] * 3
    # The queued three were answered at once, not after a forward slot freed up.
    assert all(seconds < 2 for _, status, seconds in answers if status == "queued"), answers


def test_sigterm_lets_a_forwarded_chat_finish_before_the_process_exits(
        settings, make_agent, running_sessions, api_process):
    """What a rolling restart does to a replica: in-flight chats are answered, then it exits."""
    agent = make_agent(delay_seconds=3).start()
    settings = settings.replace(pod_url_template=agent.url)
    api = api_process(settings)
    [session_id] = running_sessions(api, settings, 1)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, f"{api.url}/session/{session_id}/chat",
                              headers=HEADERS, json={"message": "finish me"}, timeout=30)
        time.sleep(1)
        api.process.terminate()
        response = pending.result()
    assert (response.status_code, response.json()["status"]) == (200, "processed")
    assert api.process.wait(30) == 0
