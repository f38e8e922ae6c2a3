"""`Prefer: wait=N` on chat: held until the reply (200) or N seconds (202), across processes
(the worker that delivers is not the API process that holds), capped, and answered at once
when the API process stops. Real Redis, API server, demo agent, gunicorn and worker."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from devcluster.processes import wait_until
from service.http import create_app

from .constants import API_KEY

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def asleep(mark_ready, status_watch):
    """asleep(client, worker, count=1): sessions KEDA has scaled to 0, as the status watch
    records it."""
    def create(client, worker, count: int = 1) -> list[str]:
        ids = []
        for _ in range(count):
            response = client.post("/session/create", json={"user_id": "u"}, headers=KEY)
            assert response.status_code == 201, response.get_json()
            ids.append(response.get_json()["uuid"])
        with status_watch(worker):
            for session_id in ids:
                mark_ready(session_id, ready=0, replicas=0)
            wait_until(lambda: all(client.get(f"/session/{s}/status", headers=KEY).get_json()[
                "status"] == "sleeping" for s in ids), timeout=10, what="asleep")
        return ids

    return create


def test_a_held_chat_to_a_sleeping_session_returns_the_reply_once_the_pod_answers(
        settings, store, kube, demo_agent, make_worker, asleep, mark_ready, running_worker):
    settings = settings.replace(pod_url_template=demo_agent.url)
    client = create_app(settings, store=store, kube=kube).test_client()
    worker = make_worker(settings)
    [session_id] = asleep(client, worker)
    with ThreadPoolExecutor(1) as pool, running_worker(worker):
        started = time.monotonic()
        held = pool.submit(client.post, f"/session/{session_id}/chat", headers={
            **KEY, "Prefer": "wait=20"}, json={"message": "are you there?", "message_id": "h-1"})
        time.sleep(1.5)
        assert not held.done()  # held, not answered 202
        mark_ready(session_id)  # the pod wakes; the worker delivers
        response = held.result(30)
        elapsed = time.monotonic() - started
    assert response.status_code == 200, response.get_json()
    assert response.headers["Preference-Applied"] == "wait=20"
    body = response.get_json()
    assert (body["status"], body["message_id"]) == ("processed", "h-1")
    assert body["pod_response"]["reply"] == "echo: are you there?"
    assert 1.5 <= elapsed < 20
    assert [d["message_id"] for d in demo_agent.deliveries()] == ["h-1"]  # delivered once


def test_past_n_seconds_the_answer_is_202_and_the_message_stays(settings, store, kube,
                                                                make_worker, asleep):
    client = create_app(settings.replace(max_wait_seconds=2), store=store,
                        kube=kube).test_client()
    [session_id] = asleep(client, make_worker(settings))
    for prefer, applied in (("wait=1", "wait=1"), ("respond-async, wait=100", "wait=2"),
                            ("handling=lenient; x=y, WAIT = 1", "wait=1")):
        started = time.monotonic()
        response = client.post(f"/session/{session_id}/chat", headers={**KEY, "Prefer": prefer},
                               json={"message": prefer})
        elapsed = time.monotonic() - started
        assert (response.status_code, response.get_json()["status"]) == (202, "queued")
        assert response.headers["Preference-Applied"] == applied, prefer
        assert int(applied[5:]) <= elapsed < int(applied[5:]) + 1.5, (prefer, elapsed)
    # Not understood: ignored (RFC 7240), answered at once, no Preference-Applied.
    for prefer in ("wait=soon", "wait=-1", "respond-async"):
        started = time.monotonic()
        response = client.post(f"/session/{session_id}/chat", headers={**KEY, "Prefer": prefer},
                               json={"message": prefer})
        assert response.status_code == 202 and "Preference-Applied" not in response.headers
        assert time.monotonic() - started < 0.5
    assert store.messages.queue_length(session_id) == 6  # every one kept for the pod


def test_held_chats_across_processes_and_a_stopping_api_answers_what_it_holds(
        settings, store, kube, make_agent, make_worker, api_process, worker_process, asleep,
        mark_ready, status_watch):
    """Thirty chats held by one gevent API process for sleeping sessions; a separate worker
    process delivers once the pods wake; /health stays fast. Then a chat held while the API
    process is told to stop is answered 202 at once, before the process exits."""
    agent = make_agent().start()
    settings = settings.replace(pod_url_template=agent.url)
    api = api_process(settings, RATE_LIMITS_ENABLED="false")
    client = create_app(settings, store=store, kube=kube).test_client()
    ids = asleep(client, make_worker(settings), count=30)
    worker = worker_process(settings, "w")

    def held_chat(session_id: str) -> requests.Response:
        return requests.post(f"{api.url}/session/{session_id}/chat",
                             headers={**KEY, "Prefer": "wait=25"},
                             json={"message": "hello", "message_id": f"m-{session_id}"},
                             timeout=40)

    health: list[float] = []
    with ThreadPoolExecutor(len(ids)) as pool:
        futures = [pool.submit(held_chat, session_id) for session_id in ids]
        time.sleep(1)
        for _ in range(20):
            started = time.perf_counter()
            assert requests.get(f"{api.url}/health", timeout=5).status_code == 200
            health.append(time.perf_counter() - started)
            time.sleep(0.05)
        assert not any(f.done() for f in futures)
        with status_watch(make_worker(settings)):
            for session_id in ids:
                mark_ready(session_id)
            answers = [f.result(40) for f in futures]
    worker.check_running()
    assert [(a.status_code, a.json()["status"]) for a in answers] == [(200, "processed")] * 30
    assert max(health) < 0.1, health
    assert sorted(d["message_id"] for d in agent.deliveries()) == sorted(
        f"m-{s}" for s in ids)

    [sleeper] = asleep(client, make_worker(settings))
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(response=requests.post(
        f"{api.url}/session/{sleeper}/chat", headers={**KEY, "Prefer": "wait=25"},
        json={"message": "still there?"}, timeout=40)))
    thread.start()
    time.sleep(1)
    stopped_at = time.monotonic()
    api.process.terminate()
    thread.join(20)
    assert (result["response"].status_code, result["response"].json()["status"]) == (
        202, "queued")
    assert time.monotonic() - stopped_at < 5  # not held to the graceful timeout
    assert api.process.wait(30) == 0
    assert store.messages.queue_length(sleeper) == 1  # kept for the pod
