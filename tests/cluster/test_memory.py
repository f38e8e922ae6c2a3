"""An agent that remembers, on a real cluster: the conversation reaches a pod woken from zero
and one restored from `archived` (the delivery's `history`), and the workspace template set's
volume keeps a file across sleep and archive and is gone after a delete."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from devcluster.processes import wait_until
from service.core.config import REPO_ROOT
from tests.constants import KUBECTL_POLL_SECONDS

pytestmark = pytest.mark.timeout(300)


def pod_uid(view, session_id: str) -> str:
    [pod] = view.ready_pods(session_id)
    return pod["metadata"]["uid"]


def reply_to(api, session_id: str, message: str, message_id: str) -> str:
    """The pod's reply to a chat: at once when a pod is up, else once the wake delivers it."""
    code, body = api.chat(session_id, message, message_id=message_id)
    if code == 200:
        return body["pod_response"]["reply"]
    assert (code, body["status"]) == (202, "queued"), body
    delivered = wait_until(lambda: api.delivered(session_id, message_id), timeout=120,
                           what=f"{message_id} delivered", interval=KUBECTL_POLL_SECONDS)
    return delivered["reply"]["reply"]


def sleep(api, view, session_id: str) -> None:
    response = api.client.post(f"/session/{session_id}/sleep", headers=api.headers)
    assert response.status_code == 200, response.get_json()
    wait_until(lambda: view.replicas(session_id) == 0 and not view.pods(session_id),
               timeout=90, what="the session's pod gone after sleep",
               interval=KUBECTL_POLL_SECONDS)


def archive(api, worker, store, view, session_id: str) -> None:
    # Idle past ARCHIVE_AFTER_SECONDS (its idle clock set back): one archive pass.
    store.redis.zadd("sm:bundled", {session_id: time.time() - 3600})
    assert worker.archiver.archive_idle(worker.archive_pool)["archived"] == 1
    wait_until(lambda: view.session_objects(session_id) == [], timeout=90,
               what="the archived session's objects and pods gone",
               interval=KUBECTL_POLL_SECONDS)
    assert api.status(session_id)["status"] == "archived"


def claims(view, session_id: str) -> list[dict]:
    return view.get("pvc", "-l", f"session-manager/session={session_id}")["items"]


def test_a_pod_woken_from_zero_and_one_restored_from_archive_know_the_conversation(
        make_api, make_worker, settings, store, view, running_worker):
    settings = settings.replace(archive_after_seconds=600)
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        session_id = api.create()
        api.wait_status(session_id, {"running"}, timeout=90)
        assert reply_to(api, session_id, "my name is Ada", "m-1") == "echo: my name is Ada"
        first_pod = pod_uid(view, session_id)

        sleep(api, view, session_id)
        assert reply_to(api, session_id, "recall", "m-2") == "recall: my name is Ada"
        assert pod_uid(view, session_id) != first_pod  # a new pod, told by the delivery

        archive(api, worker, store, view, session_id)
        assert reply_to(api, session_id, "recall", "m-3") == \
            "recall: my name is Ada | recall"


def test_a_workspace_file_survives_sleep_and_archive_and_is_gone_after_delete(
        make_api, make_worker, settings, store, view, local_cluster, running_worker):
    settings = settings.replace(templates_dir=REPO_ROOT / "templates-workspace",
                                archive_after_seconds=600)
    api, worker = make_api(settings), make_worker(settings)
    with running_worker(worker):
        session_id = api.create()
        api.wait_status(session_id, {"running"}, timeout=120)
        assert reply_to(api, session_id, "write:notes.txt kept across sleep", "w-1") == \
            "wrote notes.txt (17 bytes)"
        [claim] = claims(view, session_id)
        volume = claim["spec"]["volumeName"]
        pv = json.loads(local_cluster.kubectl("get", "pv", volume, "-o", "json").stdout)
        host_dir = Path(pv["spec"]["hostPath"]["path"])
        assert (host_dir / "notes.txt").read_text() == "kept across sleep"

        sleep(api, view, session_id)
        assert reply_to(api, session_id, "read:notes.txt", "r-1") == \
            "read notes.txt: kept across sleep"

        archive(api, worker, store, view, session_id)
        # Archive keeps the claim (ARCHIVE_KEEP_KINDS) and so the volume: its cost, counted.
        assert [c["metadata"]["uid"] for c in claims(view, session_id)] == \
            [claim["metadata"]["uid"]]
        assert reply_to(api, session_id, "read:notes.txt", "r-2") == \
            "read notes.txt: kept across sleep"

        response = api.client.delete(f"/session/{session_id}", headers=api.headers)
        assert response.status_code == 200, response.get_json()
        wait_until(lambda: not claims(view, session_id) and local_cluster.kubectl(
                       "get", "pv", volume, check=False).returncode != 0,
                   timeout=90, what="the claim and its volume deleted",
                   interval=KUBECTL_POLL_SECONDS)
        wait_until(lambda: not host_dir.exists(), timeout=60,
                   what="the volume's directory removed by the provisioner",
                   interval=KUBECTL_POLL_SECONDS)
