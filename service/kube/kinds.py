"""What the service does to which kinds of the sessions namespace: the kinds it watches and
pauses, the verbs it uses (the Role in k8s-manifests must grant exactly these), and a session
Deployment's state as the watch reads it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from service.bundle import KindRef

PAUSED_REPLICAS_ANNOTATION = "autoscaling.keda.sh/paused-replicas"
DELETE_PROPAGATION = "Background"  # never Orphan: ReplicaSets and Pods go with the Deployment

# Every verb this module uses, per operation; k8s-manifests' Role is checked against it.
VERBS = {
    "apply": ("create", "patch"),  # server-side apply is a PATCH that may create
    "sweep": ("deletecollection", "list", "delete"),  # list + delete is the 405 fallback
    "status": ("get",),
    "watch": ("list", "watch"),
    "pause": ("get", "patch"),
}
DEPLOYMENT_KIND = KindRef("apps/v1", "Deployment")
WATCHED_KINDS = (DEPLOYMENT_KIND, KindRef("v1", "Pod"))
PAUSE_KIND = KindRef("keda.sh/v1alpha1", "ScaledObject")


def required_permissions(bundle_kinds: Iterable[KindRef]) -> dict[KindRef, set[str]]:
    """Every (kind, verb) the service and worker use in the sessions namespace: the Role in
    k8s-manifests must grant exactly these."""
    permissions: dict[KindRef, set[str]] = {}
    for kind in bundle_kinds:
        permissions.setdefault(kind, set()).update(VERBS["apply"], VERBS["sweep"])
    for kind in WATCHED_KINDS:
        permissions.setdefault(kind, set()).update(VERBS["watch"])
    permissions.setdefault(DEPLOYMENT_KIND, set()).update(VERBS["status"])
    permissions.setdefault(PAUSE_KIND, set()).update(VERBS["pause"])
    return permissions


@dataclasses.dataclass(frozen=True)
class DeploymentState:
    """What the cluster says about a session's Deployment."""

    exists: bool
    replicas: int = 0  # desired, as KEDA (or the default) set it
    ready_replicas: int = 0
    resource_version: str | None = None
    # False while the controller has not caught up with the latest spec (a scale 1 -> 0 -> 1 in
    # quick succession): ready_replicas may still count a pod that is being deleted.
    current: bool = True


def state_of_deployment(deployment: dict[str, Any]) -> DeploymentState:
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    metadata = deployment.get("metadata") or {}
    observed = status.get("observedGeneration", status.get("observed_generation"))
    generation = metadata.get("generation")
    return DeploymentState(
        exists=True,
        replicas=int(spec.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or status.get("ready_replicas") or 0),
        resource_version=metadata.get("resourceVersion") or metadata.get("resource_version"),
        current=observed is None or generation is None or int(observed) >= int(generation),
    )
