"""What an archived session costs the cluster with the workspace template set, on the local
cluster (real kubelet, real KEDA, local-path-provisioner).

SESSIONS sessions of each set (the default one, templates-workspace/) created through the API,
each answered by its real pod (the workspace set's also writes a file), then archived by the
real archiver; once their objects are swept, what is left in the cluster is counted: the
namespace's objects of the bundle kinds plus PersistentVolumeClaims, and the PersistentVolumes
bound to them. The default set leaves nothing; the workspace set keeps a claim and a volume per
session (ARCHIVE_KEEP_KINDS), and a chat after the restore reads the file back.
"""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

from devcluster.processes import WaitTimedOut, wait_until
from service.core.config import REPO_ROOT
from service.sessions import Archiver, Tiers
from service.store.keys import BUNDLED_INDEX

from .harness import Context
from .report import Figure, Row, Target
from .tiers import KINDS
from .wake import API_KEY, Session, Stack

SESSIONS = 5
HEADERS = {"X-API-Key": API_KEY}


def _left(stack: Stack, session_ids: list[str]) -> tuple[int, int]:
    """Objects of the bundle kinds and claims the sessions still have; volumes bound to them."""
    namespace = stack.settings.namespace
    selector = "session-manager/session in (" + ",".join(session_ids) + ")"
    objects = stack.cluster.kubectl("-n", namespace, "get", f"{KINDS},pvc", "-l", selector,
                                    "-o", "name").stdout.split()
    claims = {name.split("/", 1)[1] for name in objects
              if name.startswith("persistentvolumeclaim/")}
    volumes = json.loads(stack.cluster.kubectl("get", "pv", "-o", "json").stdout)["items"]
    bound = [v for v in volumes if (v["spec"].get("claimRef") or {}).get("name") in claims]
    return len(objects), len(bound)


def _archived(stack: Stack, templates: str) -> tuple[int, int, str]:
    """SESSIONS sessions of a template set, run, written to, archived: what is left, and the
    reply to a read after a restore."""
    settings = stack.settings.replace(archive_after_seconds=600,
                                      templates_dir=REPO_ROOT / templates)
    sessions = [Session(stack, settings) for _ in range(SESSIONS)]
    for session in sessions:
        response = session.client.post(
            f"/session/{session.id}/chat", json={"message": "write:notes.txt kept"},
            headers={**HEADERS, "Prefer": "wait=120"})
        assert response.status_code == 200, response.json
    archiver = Archiver(settings, stack.store, stack.kube,
                        Tiers(settings, stack.store, stack.kube))
    stack.store.redis.zadd(BUNDLED_INDEX, {s.id: time.time() - 3600 for s in sessions})
    with ThreadPoolExecutor(settings.bundle_concurrency) as pool:
        assert archiver.archive_idle(pool)["archived"] == SESSIONS
        wait_until(lambda: not archiver.archive_idle(pool)["sweeping"], timeout=300,
                   interval=2, what="the archives swept")
    wait_until(lambda: not any(s.pods() for s in sessions), timeout=120, interval=1,
               what="the archived sessions' pods gone")
    # The garbage collector takes the swept Deployments' ReplicaSets and the Services'
    # EndpointSlices a moment later: counted once only what the archive keeps is left.
    ids = [s.id for s in sessions]
    kept = SESSIONS if templates == "templates-workspace" else 0
    with contextlib.suppress(WaitTimedOut):
        wait_until(lambda: _left(stack, ids)[0] <= kept, timeout=120, interval=2,
                   what="the archived sessions' dependents collected")
    objects, volumes = _left(stack, ids)
    reply = sessions[0].client.post(
        f"/session/{sessions[0].id}/chat", json={"message": "read:notes.txt"},
        headers={**HEADERS, "Prefer": "wait=120"})
    answered = (reply.json.get("pod_response") or {}).get("reply", str(reply.json))
    for session in sessions:
        session.client.delete(f"/session/{session.id}", headers=HEADERS)
    return objects, volumes, answered


def workspace(ctx: Context) -> Figure:
    figure = Figure("workspace", "Objects left per archived session: default set vs the "
                    "workspace set (local cluster, real provisioner)")
    stack = Stack(ctx)
    try:
        default = _archived(stack, "templates")
        kept = _archived(stack, "templates-workspace")
    finally:
        stack.close()
    figure.rows = [
        Row("objects per archived session, default set", "", [default[0] / SESSIONS],
            target=Target("<=", 0)),
        Row("objects per archived session, workspace set (claims)", "", [kept[0] / SESSIONS],
            target=Target("<=", 1)),
        Row("volumes per archived session, workspace set", "", [kept[1] / SESSIONS],
            target=Target("<=", 1)),
    ]
    figure.notes = [
        f"{SESSIONS} sessions per set, each answered by its pod and archived by the archiver; "
        f"counted once the archives were swept: the sessions' objects of kinds {KINDS},pvc "
        "(by their session label), and the PersistentVolumes bound to their claims.",
        f"After a restore, the workspace set's first session answered {kept[2]!r}; the "
        f"default set's, {default[2]!r} (its pod has no volume).",
    ]
    figure.data = {"default": default, "workspace": kept}
    return figure
