"""The worker's liveness matches its work: a quiet installation stays healthy indefinitely, a
long pass is progress rather than a stall, and a loop that really stalls is still caught.
A real `python -m service worker` process (push scaler, /healthz) against real Redis and the
real API server."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from devcluster.processes import wait_until


def healthz_port(worker) -> int:
    """The port the worker process serves /healthz on, from its log."""
    def port() -> int | None:
        for line in worker.output().splitlines():
            if line.startswith("{") and json.loads(line).get("message") == "health serving":
                return json.loads(line)["port"]
        return None

    return wait_until(port, timeout=30, what="/healthz serving", daemon=worker)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_worker_with_no_traffic_stays_healthy_for_three_minutes(settings, worker_process):
    """Before: the push scaler's notification loop beat only when a notification came, so
    30 s without a chat or a wake anywhere made /healthz answer 503 (`scaler-notify`): the
    kubelet restarted every worker of a quiet installation."""
    worker = worker_process(settings, "quiet")
    url = f"http://127.0.0.1:{healthz_port(worker)}/healthz"
    answers: list[int] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        response = requests.get(url, timeout=5)
        answers.append(response.status_code)
        assert response.status_code == 200, response.json()
        time.sleep(5)
    worker.check_running()
    assert len(answers) >= 30


def test_a_long_archive_pass_is_progress_not_a_stall(settings, store, kube, make_api,
                                                     make_worker, monkeypatch):
    """A pass longer than the archiver's allowance (thousands of idle sessions at ~15 a
    second) beats per session: /healthz stays 200 through it."""
    settings = settings.replace(archive_after_seconds=3600, bundle_concurrency=1)
    api = make_api(settings)
    sessions = [api.create(f"user-{n}") for n in range(12)]
    store.redis.zadd("sm:bundled", {sid: time.time() - 7200 for sid in sessions})
    worker = make_worker(settings)
    worker.heartbeats.allowances["archiver"] = 2.0
    real_delete = kube.delete

    def slow_delete(session_id, kinds):  # a busy API server: 0.5 s a session
        time.sleep(0.5)
        return real_delete(session_id, kinds)

    monkeypatch.setattr(worker.kube, "delete", slow_delete)
    stop = threading.Event()
    thread = threading.Thread(target=worker.archive_periodically, args=(stop,), daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        stalls = []
        while store.redis.zcard("sm:st:archived") < len(sessions):
            stalls.append(worker.heartbeats.stalled())
            time.sleep(0.2)
            assert time.monotonic() - started < 30, "the pass did not finish"
        assert time.monotonic() - started > 2 * worker.heartbeats.allowances["archiver"]
        assert not any(stalls), [s for s in stalls if s]
    finally:
        stop.set()
        thread.join(10)


def test_an_archiver_that_really_hangs_is_still_caught(settings, store, kube, make_api,
                                                       make_worker, monkeypatch):
    settings = settings.replace(archive_after_seconds=3600, bundle_concurrency=1)
    api = make_api(settings)
    session_id = api.create()
    store.redis.zadd("sm:bundled", {session_id: time.time() - 7200})
    worker = make_worker(settings)
    worker.heartbeats.allowances["archiver"] = 1.0
    hung = threading.Event()

    def hanging_delete(session_id, kinds):  # a request that never returns
        hung.wait(20)

    monkeypatch.setattr(worker.kube, "delete", hanging_delete)
    stop = threading.Event()
    thread = threading.Thread(target=worker.archive_periodically, args=(stop,), daemon=True)
    thread.start()
    try:
        assert "archiver" in wait_until(worker.heartbeats.stalled, timeout=10,
                                        what="the hung archiver to be reported")
    finally:
        hung.set()
        stop.set()
        thread.join(10)
