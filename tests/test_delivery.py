"""Queued chats reach the session pod exactly once per message_id, in order, with the reply kept:
against real Redis, the real API server, the demo agent as a real process, and the worker both
in-process and as real `python -m service worker` processes (where one must be killed)."""

from __future__ import annotations

import json
from collections import Counter

from devcluster.processes import wait_until
from service.core.transitions import Actor

from .constants import WORKER_LEASE_SECONDS


def delivered_ids(agent) -> list[str]:
    return [d["message_id"] for d in agent.deliveries()]


def states(api, session_id: str) -> list[str]:
    return [m["state"] for m in api.messages(session_id)]


def test_chat_to_a_sleeping_session_is_delivered_once_and_in_order(
        settings, store, demo_agent, make_api, make_worker, mark_ready, status_watch):
    settings = settings.replace(pod_url_template=demo_agent.url)
    api = make_api(settings)
    session_id = api.create()
    worker = make_worker(settings)
    with status_watch(worker):
        # KEDA scaled the new session to 0; the real watch tells the record.
        mark_ready(session_id, ready=0, replicas=0)
        wait_until(lambda: api.status(session_id)["status"] == "sleeping", timeout=10,
                   what="sleeping")
        assert api.chat(session_id, "first", "m-1") == (202, {
            "uuid": session_id, "status": "queued", "message_id": "m-1",
            "message": "Pod is waking up, message queued"})
        mark_ready(session_id)
        wait_until(lambda: api.status(session_id)["status"] == "running", timeout=10,
                   what="running")
        # The pod is ready but m-1 has not been delivered yet: later chats must queue behind
        # it, not overtake it by being forwarded straight to the pod.
        for n in (2, 3):
            code, body = api.chat(session_id, f"message {n}", f"m-{n}")
            assert (code, body["status"]) == (202, "queued")
        assert api.status(session_id)["queue_length"] == 3

    assert worker.deliver_due() == 1  # the pod became ready: the session is due at once
    wait_until(lambda: states(api, session_id) == ["delivered"] * 3, timeout=10,
               what="three deliveries")
    wait_until(lambda: not worker._draining, timeout=10, what="the drain to end")
    assert worker.deliver_due() == 0  # nothing left pending for this session

    messages = api.messages(session_id)
    assert [m["message_id"] for m in messages] == ["m-1", "m-2", "m-3"]
    for message in messages:
        assert message["attempts"] == 1
        assert message["reply"]["reply"] == f"echo: {message['message']}"
        assert message["reply"]["message_id"] == message["message_id"]
    assert delivered_ids(demo_agent) == ["m-1", "m-2", "m-3"]
    assert api.status(session_id)["queue_length"] == 0
    # A client retrying m-1 gets the stored reply; the pod is not asked again.
    code, body = api.chat(session_id, "first", "m-1")
    assert (code, body["status"], body["pod_response"]["reply"]) == (200, "processed",
                                                                      "echo: first")
    assert delivered_ids(demo_agent) == ["m-1", "m-2", "m-3"]


def test_a_pod_killed_mid_delivery_gets_the_message_after_it_restarts(
        settings, make_agent, make_api, make_worker, mark_ready, running_worker):
    agent = make_agent(delay_seconds=2).start()
    settings = settings.replace(pod_url_template=agent.url, delivery_backoff_seconds=0.2,
                                delivery_max_attempts=10, pod_timeout_seconds=10)
    api = make_api(settings)
    session_id = api.create()
    assert api.chat(session_id, "survive this", "m-1")[0] == 202
    with running_worker(make_worker(settings)):
        mark_ready(session_id)
        wait_until(lambda: delivered_ids(agent) == ["m-1"], timeout=10,
                   what="the delivery to start")
        agent.kill()  # while the worker waits for the reply
        wait_until(lambda: api.messages(session_id)[0].get("error"), timeout=10,
                   what="a failed attempt")
        assert api.messages(session_id)[0]["state"] in ("queued", "delivering")
        agent.start()  # same port, same state file: the pod came back
        wait_until(lambda: states(api, session_id) == ["delivered"], timeout=15, what="delivery")

    [message] = api.messages(session_id)
    assert message["attempts"] >= 2
    assert message["reply"]["reply"] == "echo: survive this"
    assert message["reply"]["pid"] == agent.daemon.pid  # answered by the restarted agent
    assert "error" not in message
    # The killed attempt reached the agent; the retries while it was down did not.
    assert delivered_ids(agent).count("m-1") <= 2


def test_a_worker_killed_mid_delivery_is_relieved_after_its_lease(
        settings, make_agent, make_api, worker_process, mark_ready):
    agent = make_agent(delay_seconds=2).start()
    settings = settings.replace(pod_url_template=agent.url)
    api = make_api(settings)
    session_id = api.create()
    assert api.chat(session_id, "keep going", "m-1")[0] == 202
    first = worker_process(settings, "first")
    mark_ready(session_id)  # the process's status watch makes it running
    wait_until(lambda: delivered_ids(agent) == ["m-1"], timeout=20, what="the first attempt",
               daemon=first)
    first.kill()  # SIGKILL mid-delivery: its lease and the in-flight message stay behind
    assert states(api, session_id) == ["delivering"]
    second = worker_process(settings, "second")
    wait_until(lambda: states(api, session_id) == ["delivered"], timeout=20, what="delivery",
               daemon=second)
    assert second.stop() == 0

    [message] = api.messages(session_id)
    assert message["attempts"] == 2
    assert message["reply"]["reply"] == "echo: keep going"
    deliveries = [d for d in agent.deliveries() if d["message_id"] == "m-1"]
    assert len(deliveries) == 2  # the killed attempt and the one redelivery, no more
    # The second worker waited for the first one's lease to lapse.
    assert deliveries[1]["at"] - deliveries[0]["at"] >= WORKER_LEASE_SECONDS - 0.5


def test_two_worker_processes_never_deliver_a_message_twice(
        settings, store, make_agent, make_api, worker_process, mark_ready,
        logged_deliveries):
    # More sessions than one worker has delivery threads (8 here), and a pod that takes a while:
    # the worker that polls first cannot start every drain at once, so the other one claims
    # sessions that the first one's queued drains then also try to claim.
    sessions, per_session = 12, 3
    agent = make_agent(delay_seconds=0.2).start()
    settings = settings.replace(pod_url_template=agent.url)
    api = make_api(settings)
    sent: dict[str, list[str]] = {}
    for s in range(sessions):
        session_id = api.create(f"user-{s}")
        sent[session_id] = [f"s{s}-m{n}" for n in range(per_session)]
        for message_id in sent[session_id]:
            assert api.chat(session_id, f"hello {message_id}", message_id)[0] == 202
    workers = [worker_process(settings, name, DELIVERY_CONCURRENCY="8") for name in ("a", "b")]
    for session_id in sent:
        mark_ready(session_id)
    wait_until(lambda: all(states(api, sid) == ["delivered"] * per_session for sid in sent),
               timeout=40, what="every delivery", daemon=workers)
    assert [worker.stop() for worker in workers] == [0, 0]  # SIGTERM: a clean stop

    deliveries = agent.deliveries()
    assert Counter(d["message_id"] for d in deliveries) == Counter(
        message_id for ids in sent.values() for message_id in ids)  # each exactly once
    for session_id, ids in sent.items():
        assert [d["message_id"] for d in deliveries if d["session_id"] == session_id] == ids
        assert all(m["attempts"] == 1 for m in api.messages(session_id))
    shares = [logged_deliveries(worker) for worker in workers]
    assert sum(shares) == sessions * per_session
    assert min(shares) > 0, shares  # both really delivered
    assert store.messages.due_sessions() == []


def test_a_message_that_keeps_failing_ends_failed_and_does_not_block_the_next(
        settings, demo_agent, make_api, make_worker, mark_ready, running_worker):
    settings = settings.replace(pod_url_template=demo_agent.url, delivery_max_attempts=3,
                                delivery_backoff_seconds=0.05)
    api = make_api(settings)
    session_id = api.create()
    assert api.chat(session_id, "fail: on purpose", "bad")[0] == 202  # the agent answers 500
    assert api.chat(session_id, "all good", "good")[0] == 202
    with running_worker(make_worker(settings)):
        mark_ready(session_id)
        wait_until(lambda: states(api, session_id) == ["failed", "delivered"], timeout=15,
                   what="bad failed, good delivered")

    bad, good = api.messages(session_id)
    assert bad["attempts"] == 3
    assert bad["error"] == "pod answered HTTP 500"
    assert bad["reply"] is None
    assert good["reply"]["reply"] == "echo: all good"
    assert delivered_ids(demo_agent) == ["bad"] * 3 + ["good"]
    code, body = api.chat(session_id, "fail: on purpose", "bad")  # a client retry
    assert (code, body["status"], body["error"]) == (200, "failed", "pod answered HTTP 500")
    # Nothing pending any more: a new chat goes straight to the ready pod.
    code, body = api.chat(session_id, "and another", "later")
    assert (code, body["status"], body["pod_response"]["reply"]) == (200, "processed",
                                                                      "echo: and another")
    assert states(api, session_id) == ["failed", "delivered", "delivered"]


def test_a_late_attempt_cannot_undo_a_newer_outcome(settings, store, make_api):
    # Two attempts at one message, through the store's claim/finish scripts: the first one's
    # lease lapses while its pod is slow, and another worker claims the message again.
    api = make_api(settings)
    session_id = api.create()
    assert api.chat(session_id, "slow one", "m-1")[0] == 202
    store.records.set_status(session_id, "running", actor=Actor.WATCH)  # what the watch writes
    late = store.messages.claim_delivery(session_id, lease_seconds=1, max_attempts=5)
    current = wait_until(
        lambda: store.messages.claim_delivery(session_id, lease_seconds=30, max_attempts=5),
        timeout=3, what="the lease to lapse")
    assert current["message"]["attempts"] == 2

    def finish(claim: dict, delivered: bool, outcome: str) -> dict:
        return store.messages.finish_delivery(
            session_id, envelope=claim["envelope"], lease_token=claim["lease_token"],
            delivered=delivered, reply_or_error=outcome, max_attempts=2, retry_in_seconds=0)

    # The late attempt fails while the current one is still out: the current one decides.
    assert finish(late, False, "pod unreachable")["state"] == "delivering"
    # Still held:
    assert store.messages.claim_delivery(session_id, lease_seconds=30, max_attempts=5) is None
    assert finish(current, True, json.dumps({"reply": "done"}))["state"] == "delivered"
    # ...and a failure of it arriving after the delivery changes nothing either.
    assert finish(late, False, "pod unreachable")["state"] == "delivered"

    [message] = api.messages(session_id)
    assert (message["state"], message["reply"], message.get("error")) == (
        "delivered", {"reply": "done"}, None)
    assert store.messages.queue_length(session_id) == 0
    assert store.messages.due_sessions() == []
    assert store.messages.claim_delivery(session_id, lease_seconds=30, max_attempts=5) is None
