"""The session's invariants under any interleaving (hypothesis stateful testing): API calls
(create, chat, wake, sleep, delete), status-watch events (whatever the cluster says, stale
ones included), archive and restore, reconciler passes and deliveries, against real Redis, the
real API server and the demo agent as a real process. After every step:

- what the watch said last holds: a session the cluster shows running (or failed) and that
  nobody put to sleep is not shown anything else (a wake writing `waking` over the watch's
  `running` stranded sessions for good: the watch does not repeat itself);
- no session with queued work is stuck: it is running and due, or waking/asleep with its work
  told to the scaler, or slept on purpose, or archived with a restore asked, or failed (the
  reconciler fails its messages after FAILED_SESSION_GRACE_SECONDS);
- no message is lost, none is settled twice;
- `paused` agrees with the status, and the per-status indexes with the record.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from service import bundle
from service.bundle import template_kinds
from service.core import names
from service.core.errors import SessionManagerError
from service.core.transitions import STATUSES
from service.kube import state_of_deployment
from service.sessions import Sessions
from service.store import keda_keys
from service.worker import Worker
from service.worker.reconciler import Reconciler
from service.worker.status_watch import StatusTracker, derive_status

MACHINE = hypothesis_settings(max_examples=40, stateful_step_count=40, deadline=None,
                              derandomize=True,
                              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                     HealthCheck.too_slow])
SETTLED = ("delivered", "failed")


def labels(session_id: str) -> dict:
    return {names.MANAGED_BY_LABEL: names.MANAGED_BY_VALUE, names.SESSION_LABEL: session_id}


def deployment(session_id: str, replicas: int, ready: int) -> dict:
    """A Deployment as the watch sees it."""
    return {"metadata": {"name": names.object_name(session_id), "labels": labels(session_id),
                         "generation": 1, "resourceVersion": "1"},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": 1, "replicas": replicas, "readyReplicas": ready}}


def pod(session_id: str, ready: bool, waiting: str | None) -> dict:
    status: dict = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ready:
        status["podIP"] = "127.0.0.1"
    if waiting:
        status["containerStatuses"] = [{"state": {"waiting": {"reason": waiting}}}]
    return {"metadata": {"name": f"{names.object_name(session_id)}-pod",
                         "labels": labels(session_id)}, "status": status}


@pytest.mark.timeout(600)
def test_no_interleaving_breaks_the_invariants(settings, store, kube, demo_agent):
    settings = settings.replace(pod_url_template=demo_agent.url, archive_after_seconds=3600,
                                failed_session_grace_seconds=0, reconcile_grace_seconds=0,
                                delivery_backoff_seconds=0)
    kinds = template_kinds(settings, keda_keys)

    class Interleavings(RuleBasedStateMachine):
        sessions = Bundle("sessions")

        def __init__(self) -> None:
            super().__init__()
            store.redis.flushall()
            kube.sweep(bundle.label_selector(), kinds)
            self.api = Sessions(settings, store, kube)
            self.watch = StatusTracker(store)
            self.worker = Worker(settings, store, kube, delivery_threads=1)
            self.reconciler = Reconciler(settings, store, kube)
            self.admitted: dict[str, set[str]] = {}
            self.views: dict[str, tuple[dict, str | None, bool]] = {}  # the watch's last word
            self.counter = 0

        def teardown(self) -> None:
            self.worker.delivery_pool.shutdown(wait=True)
            self.api.notices.release()

        # -- the API ---------------------------------------------------------------------

        @rule(target=sessions)
        def create(self) -> str:
            session_id = self.api.create("user").body["uuid"]
            self.admitted[session_id] = set()
            return session_id

        @rule(session_id=sessions)
        def chat(self, session_id: str) -> None:
            self.counter += 1
            message_id = f"m-{self.counter}"
            try:
                result = self.api.chats.chat(session_id, f"message {self.counter}", message_id)
            except SessionManagerError:
                return  # refused (gone, terminating): nothing admitted
            assert result.status in (200, 202), result.body
            self.admitted[session_id].add(message_id)

        @rule(session_id=sessions)
        def wake(self, session_id: str) -> None:
            with contextlib.suppress(SessionManagerError):
                assert self.api.wake(session_id).status in (200, 202)

        @rule(session_id=sessions)
        def sleep(self, session_id: str) -> None:
            with contextlib.suppress(SessionManagerError):
                assert self.api.sleep(session_id).status == 200

        @rule(session_id=consumes(sessions))
        def delete(self, session_id: str) -> None:
            with contextlib.suppress(SessionManagerError):
                self.api.delete(session_id)
            self.admitted.pop(session_id, None)

        # -- the cluster, the worker's leaders -------------------------------------------

        @rule(session_id=sessions, replicas=st.integers(0, 1), ready=st.booleans(),
              waiting=st.sampled_from([None, None, "CrashLoopBackOff"]))
        def watch_event(self, session_id: str, replicas: int, ready: bool,
                        waiting: str | None) -> None:
            """Whatever the cluster says now, stale or not."""
            ready = ready and replicas == 1 and waiting is None
            seen = deployment(session_id, replicas, int(ready))
            self.watch.on_deployment("MODIFIED", seen)
            self.watch.on_pod("MODIFIED", pod(session_id, ready, waiting))
            record = store.records.get_session(session_id) or {}
            if record.get("status") not in (None, "archived"):
                self.views[session_id] = (seen, waiting, ready)

        @rule(session_id=sessions)
        def archive(self, session_id: str) -> None:
            store.redis.zadd("sm:bundled", {session_id: time.time() - 7200}, xx=True)
            if self.worker.archiver.archive(session_id, time.time() - 3600) == "archived":
                self.views.pop(session_id, None)  # its objects are gone, and what was seen

        @rule(part=st.sampled_from(["deliver", "reconcile", "restore"]))
        def worker_turn(self, part: str) -> None:
            """One turn of one of the worker's loops."""
            if part == "deliver":
                for session_id in store.messages.due_sessions(limit=100):
                    self.worker.drain(session_id)
            elif part == "reconcile":
                self.reconciler.run_once()
            else:
                for session_id in store.bundles.restores_due():
                    self.worker.tiers.restore(session_id)

        # -- what must hold after every step ---------------------------------------------

        @invariant()
        def statuses_agree(self) -> None:
            for session_id in self.admitted:
                record = store.records.get_session(session_id)
                assert record is not None, session_id
                status = record["status"]
                indexed = [s for s in STATUSES
                           if store.redis.zscore(f"sm:st:{s}", session_id) is not None]
                assert indexed == [status], (session_id, status, indexed)
                if record.get("paused") == "1":
                    assert status == "sleeping", (session_id, record)

        @invariant()
        def the_watchs_last_word_holds(self) -> None:
            for session_id, (seen, waiting, ready) in self.views.items():
                record = store.records.get_session(session_id)
                if record is None or record["status"] in ("archived", "terminating") \
                        or record.get("paused") == "1":
                    continue
                derived, _ = derive_status(state_of_deployment(seen), waiting, ready)
                if derived in ("running", "failed"):
                    assert record["status"] == derived, (session_id, derived, record)

        @invariant()
        def nothing_lost_nothing_settled_twice(self) -> None:
            for session_id, admitted in self.admitted.items():
                messages, _ = store.messages.list_messages(session_id, after=0, limit=500,
                                                  max_kept=settings.max_messages_kept)
                assert {m["message_id"] for m in messages} == admitted
                settled = Counter()
                for _, fields in store.redis.xrange(f"sm:e:{session_id}"):
                    data = json.loads(fields["d"])
                    if fields["t"] == "reply" or (fields["t"] == "message"
                                                  and data.get("state") == "failed"):
                        settled[(fields["t"], data["seq"])] += 1
                assert all(n == 1 for n in settled.values()), settled

        @invariant()
        def no_queued_work_is_stuck(self) -> None:
            for session_id in self.admitted:
                if store.messages.queue_length(session_id) == 0:
                    continue
                record = store.records.get_session(session_id)
                status, paused = record["status"], record.get("paused") == "1"
                work = store.records.work([session_id])[session_id]
                if status == "running":
                    assert store.redis.zscore("sm:pending", session_id) is not None \
                        or store.redis.exists(f"sm:lease:deliver:{session_id}"), record
                elif status in ("created", "waking"):
                    assert work > 0, (record, work)  # the scaler keeps it up / wakes it
                elif status == "sleeping":
                    assert paused or work > 0, (record, work)
                elif status == "archived":
                    assert store.redis.zscore("sm:restore", session_id) is not None, record
                else:
                    assert status == "failed", record

    run_state_machine_as_test(Interleavings, settings=MACHINE)
