"""Session status from the cluster's truth: Deployment replicas and pod start-up failures.

The worker's leader feeds this with watch events; it writes the derived status into the
session record, where /status, /sessions and /metrics read it without asking the cluster.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from service.bundle import label_selector
from service.core import names
from service.core.errors import SessionManagerError
from service.core.transitions import Actor
from service.kube import (
    DEPLOYMENT_KIND,
    WATCHED_KINDS,
    DeploymentState,
    Kube,
    Watcher,
    state_of_deployment,
)
from service.store import Store
from service.worker.health import Heartbeats

log = logging.getLogger(__name__)

# Waiting reasons that mean the pod will not start without someone changing something.
FAILURE_REASONS = frozenset({
    "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull",
    "CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError",
    "RunContainerError",
})


def pod_failure_reason(pod: dict[str, Any]) -> str | None:
    status = pod.get("status") or {}
    for container in (status.get("containerStatuses") or []) + (
            status.get("initContainerStatuses") or []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in FAILURE_REASONS:
            return str(waiting["reason"])
    for condition in status.get("conditions") or []:
        if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"):
            return "Unschedulable"
    return None


def ready_pod_ip(pod: dict[str, Any]) -> str | None:
    """The pod's IP while it is Ready and not being deleted: where chats may go."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [])
    return (status.get("podIP") or None) if ready else None


def pod_progress(pod: dict[str, Any]) -> frozenset[str]:
    """The wake phases (lua/lib/wake.lua) this pod shows reached: scheduled, image (a
    container has its image: the kubelet reports an imageID once it is pulled), started (a
    container runs), ready. None for a pod that is going away."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return frozenset()
    status = pod.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    containers = status.get("containerStatuses") or []
    reached = set()
    if conditions.get("PodScheduled") == "True":
        reached.add("scheduled")
    if any(c.get("imageID") for c in containers):
        reached.add("image")
    if any((c.get("state") or {}).get("running") for c in containers):
        reached.update(("image", "started"))
    if conditions.get("Ready") == "True":
        reached.update(("image", "started", "ready"))
    return frozenset(reached)


def derive_status(deployment: DeploymentState, failure: str | None,
                  pod_ready: bool | None = None) -> tuple[str, str]:
    """`pod_ready`: whether a Ready pod that is not being deleted is known (None: no pod of the
    session has been seen, e.g. a cluster without kubelets, where the Deployment alone speaks)."""
    # Desired 0 first: a pod still ready while it is being scaled down is going away, and
    # chats sent to it now should wait for the next wake, not be forwarded to it.
    if deployment.replicas == 0:
        return "sleeping", ""
    # Running needs the controller's view of the current spec and, where pods are seen, a pod
    # that stays: after a quick sleep -> wake the Deployment can still count the old pod,
    # which is terminating, as ready.
    if deployment.ready_replicas > 0 and deployment.current and pod_ready is not False:
        return "running", ""
    if failure:
        return "failed", failure
    return "waking", ""


class StatusTracker:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        # Deployment and Pod events arrive on two threads: deriving and writing under one lock
        # keeps an older view from overwriting a newer one in Redis.
        self._publish_lock = threading.Lock()
        self._deployments: dict[str, DeploymentState] = {}
        self._failures: dict[str, dict[str, str]] = {}  # session -> pod name -> reason
        # session -> pod name -> IP while Ready and not being deleted, else "": every pod seen
        self._addresses: dict[str, dict[str, str]] = {}
        # session -> pod name -> the wake phases it shows reached (pod_progress)
        self._progress: dict[str, dict[str, frozenset[str]]] = {}

    def on_deployment(self, event_type: str, obj: dict[str, Any]) -> None:
        if event_type == "RELIST":
            fresh = {sid: state_of_deployment(item) for item in obj["items"]
                     if (sid := names.session_of_object(item)) is not None}
            with self._lock:
                self._deployments = fresh
            for session_id in fresh:
                self._publish(session_id)
            return
        session_id = names.session_of_object(obj)
        if session_id is None:
            return
        with self._lock:
            if event_type == "DELETED":
                self._deployments.pop(session_id, None)
                return
            self._deployments[session_id] = state_of_deployment(obj)
        self._publish(session_id)

    def on_pod(self, event_type: str, obj: dict[str, Any]) -> None:
        if event_type == "RELIST":
            fresh: dict[str, dict[str, str]] = {}
            addresses: dict[str, dict[str, str]] = {}
            progress: dict[str, dict[str, frozenset[str]]] = {}
            for item in obj["items"]:
                session_id, reason = names.session_of_object(item), pod_failure_reason(item)
                if session_id is not None and reason:
                    fresh.setdefault(session_id, {})[item["metadata"]["name"]] = reason
                if session_id is not None:
                    addresses.setdefault(session_id, {})[item["metadata"]["name"]] = (
                        ready_pod_ip(item) or "")
                    progress.setdefault(session_id, {})[item["metadata"]["name"]] = (
                        pod_progress(item))
            with self._lock:
                # Failures and addresses that cleared, too.
                touched = set(self._failures) | set(fresh) | set(self._addresses) | set(addresses)
                self._failures = fresh
                self._addresses = addresses
                self._progress = progress
            for session_id in touched:
                self._publish(session_id)
            return
        session_id = names.session_of_object(obj)
        if session_id is None:
            return
        pod_name = (obj.get("metadata") or {}).get("name", "")
        reason = None if event_type == "DELETED" else pod_failure_reason(obj)
        with self._lock:
            if event_type == "DELETED":
                _set_per_pod(self._addresses, session_id, pod_name, None)
                _set_per_pod(self._progress, session_id, pod_name, None)
            else:
                self._addresses.setdefault(session_id, {})[pod_name] = ready_pod_ip(obj) or ""
                self._progress.setdefault(session_id, {})[pod_name] = pod_progress(obj)
            _set_per_pod(self._failures, session_id, pod_name, reason)
        self._publish(session_id)

    def _publish(self, session_id: str) -> None:
        with self._publish_lock:
            with self._lock:
                deployment = self._deployments.get(session_id)
                failures = self._failures.get(session_id) or {}
                failure = next(iter(sorted(failures.values())), None)
                pods = self._addresses.get(session_id) or {}
                ready = sorted(ip for ip in pods.values() if ip)
                pod_ip = ready[0] if ready else ""
                reached = {phase for phases in (self._progress.get(session_id) or {}).values()
                           for phase in phases}
            if deployment is None:
                return  # a pod seen before its Deployment; the Deployment's event will publish
            status, reason = derive_status(deployment, failure, bool(ready) if pods else None)
            if deployment.replicas > 0:
                reached.add("scaled")
            previous, written = self.store.records.set_status(
                session_id, status, actor=Actor.WATCH, reason=reason,
                reached=tuple(sorted(reached)),
                replicas=deployment.replicas, ready_replicas=deployment.ready_replicas,
                pod_ip=pod_ip)
        if written and previous != status:
            log.info("status %s -> %s", previous, status,
                     extra={"session_id": session_id, "reason": reason or None})


def _set_per_pod(by_session: dict[str, dict[str, Any]], session_id: str, pod_name: str,
                 value: Any) -> None:
    """Record (or, with None, forget) one pod's value; a session with no pod left drops out."""
    pods = by_session.setdefault(session_id, {})
    if value:
        pods[pod_name] = value
    else:
        pods.pop(pod_name, None)
    if not pods:
        by_session.pop(session_id, None)


class StatusWatch:
    """The status watch leader's body: a list-then-watch of the session Deployments and Pods
    (one thread each), every event handed to the tracker; each watch request ends after
    `timeout_seconds`, so a term that is over is noticed that soon."""

    def __init__(self, kube: Kube, tracker: StatusTracker, heartbeats: Heartbeats, *,
                 timeout_seconds: int) -> None:
        self.watcher = Watcher(kube)
        self.tracker = tracker
        self.heartbeats = heartbeats
        self.watch_timeout_seconds = timeout_seconds

    def run(self, term_over: threading.Event) -> None:
        """Watch until the leader's term is over."""
        selector = label_selector()
        threads = [
            threading.Thread(target=self._follow, args=(kind, selector, term_over),
                             daemon=True, name=f"watch-{kind.kind}")
            for kind in WATCHED_KINDS
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _follow(self, kind, selector: str, term_over: threading.Event) -> None:
        handle = (self.tracker.on_deployment if kind == DEPLOYMENT_KIND
                  else self.tracker.on_pod)
        beat = f"watch:{kind.kind}"
        while not term_over.is_set():
            self.heartbeats.beat(beat)
            try:
                for event_type, obj in self.watcher.list_and_watch(
                        kind, selector=selector, timeout_seconds=self.watch_timeout_seconds,
                        stop=term_over, on_restart=lambda: self.heartbeats.beat(beat)):
                    self.heartbeats.beat(beat)
                    handle(event_type, obj)
            except SessionManagerError as err:
                log.warning("watching %s: %s", kind.kind, err.message)
                term_over.wait(1)
            except Exception:
                # A surprise must not end this kind's watch for the rest of the term.
                log.exception("watching %s failed unexpectedly", kind.kind)
                term_over.wait(1)
        self.heartbeats.forget(beat)  # the term is over: another replica watches now
