"""Tiers on a real cluster: an archived session has nothing left in it (no Deployment,
ReplicaSet, pod, Service, ScaledObject, KEDA's HPA or TriggerAuthentication), and a chat brings
it back and is answered by a real pod; the lighter template set (no per-session Service) runs
and answers with no code change."""

from __future__ import annotations

import time

import pytest

from devcluster.processes import wait_until
from service.core.config import REPO_ROOT
from tests.constants import KUBECTL_POLL_SECONDS

pytestmark = pytest.mark.timeout(300)


def test_an_archived_session_leaves_nothing_in_the_cluster_and_a_chat_brings_it_back(
        make_api, make_worker, settings, store, view, record_property, running_worker):
    settings = settings.replace(archive_after_seconds=600)
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        session_id = api.create()
        api.wait_status(session_id, {"running"}, timeout=90)
        code, body = api.chat(session_id, "remember me", message_id="m-1")
        assert code == 200, body
        # KEDA creates its HPA from the ScaledObject on its own schedule, which on a busy
        # machine can come after the first reply: wait for it, so the archive below is
        # shown to remove an HPA that really existed.
        expected = {"deployment.apps", "replicaset.apps", "pod", "service",
                    "scaledobject.keda.sh", "triggerauthentication.keda.sh",
                    "horizontalpodautoscaler.autoscaling"}
        wait_until(lambda: expected <= {name.split("/")[0]
                                        for name in view.session_objects(session_id)},
                   timeout=60, what="the session's objects, KEDA's HPA included",
                   interval=KUBECTL_POLL_SECONDS)

        # Idle past ARCHIVE_AFTER_SECONDS (its idle clock set back): one archive pass.
        store.redis.zadd("sm:bundled", {session_id: time.time() - 3600})
        assert worker.archiver.archive_idle(worker.archive_pool)["archived"] == 1
        wait_until(lambda: view.session_objects(session_id) == [], timeout=90,
                   what="every object and pod of the archived session gone",
                   interval=KUBECTL_POLL_SECONDS)
        assert api.status(session_id)["status"] == "archived"

        started = time.monotonic()
        code, body = api.chat(session_id, "still there?", message_id="m-2")
        assert (code, body["status"]) == (202, "queued"), body
        message = wait_until(lambda: api.delivered(session_id, "m-2"), timeout=120,
                             what="the chat answered after the restore",
                             interval=KUBECTL_POLL_SECONDS)
        took = time.monotonic() - started
        record_property("chat_to_reply_seconds_archived", round(took, 2))
        print(f"chat to reply on an archived session: {took:.1f}s")
    assert message["reply"]["reply"] == "echo: still there?"
    history = [(m["message_id"], m["reply"]["reply"]) for m in api.messages(session_id)]
    assert history == [("m-1", "echo: remember me"), ("m-2", "echo: still there?")]


def test_the_lighter_template_set_runs_a_session_without_a_service(
        make_api, make_worker, settings, view, running_worker):
    settings = settings.replace(templates_dir=REPO_ROOT / "templates-light")
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        session_id = api.create()
        api.wait_status(session_id, {"running"}, timeout=90)
        code, body = api.chat(session_id, "no service needed", message_id="m-1")
        assert code == 200, body
        assert body["pod_response"]["reply"] == "echo: no service needed"
        kinds = {name.split("/")[0] for name in view.session_objects(session_id)}
        assert "service" not in kinds and "deployment.apps" in kinds, kinds
        response = api.client.delete(f"/session/{session_id}", headers=api.headers)
        assert response.status_code == 200
        wait_until(lambda: view.session_objects(session_id) == [], timeout=90,
                   what="the light bundle swept", interval=KUBECTL_POLL_SECONDS)
