"""Dynamic storage for the local cluster: local-path-provisioner, the default StorageClass.

What kind installs as its default storage (the manifest of kind v0.33.0's
pkg/build/nodeimage/const_storage.go), with the images built here: the provisioner from its Go
module (scripts/build-cluster-binaries.sh local-path) and, as the helper that makes and removes
a volume's directory, the Debian rootfs the product images are built on. A claim gets a
hostPath volume under the run dir when its first pod is scheduled; deleting the claim deletes the
volume and its directory (reclaim policy Delete), which is what a session's workspace relies on.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import images, paths

NAMESPACE = "local-path-storage"
STORAGE_CLASS = "standard"
PROVISIONER_IMAGE = "session-manager-local/local-path-provisioner:v0.0.30"
HELPER_IMAGE = "session-manager-local/local-path-helper:bookworm"
_ACCOUNT = "local-path-provisioner-service-account"

_SETUP = '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n'
_TEARDOWN = '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n'
_HELPER_POD = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helper-pod"},
    "spec": {"priorityClassName": "system-node-critical",
             "tolerations": [{"operator": "Exists", "effect": "NoSchedule"},
                             {"operator": "Exists", "effect": "NoExecute"}],
             "containers": [{"name": "helper-pod", "image": HELPER_IMAGE,
                             "imagePullPolicy": "IfNotPresent"}]},
}


def import_images(node) -> None:
    binary = Path(paths.binary("local-path-provisioner", build_part="local-path"))
    archive = images.binary_archive(PROVISIONER_IMAGE, binary, user="65532:65532")
    if not node.image_present(PROVISIONER_IMAGE) or \
            archive.stat().st_mtime > binary.stat().st_mtime + 1:
        node.import_image(archive)
    if not node.image_present(HELPER_IMAGE):
        # The product images' base rootfs (already debootstrapped for them): sh, mkdir, rm.
        base = images.BASE_IMAGE.split("/")[1].split(":")[0]
        node.import_image(images.rootfs_archive(HELPER_IMAGE, base, ("python3",), user="0:0"))


def objects(volume_dir: Path) -> list[dict]:
    """The provisioner, its RBAC and config, and the default StorageClass."""
    config = {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES",
                               "paths": [str(volume_dir)]}]}
    labels = {"app": "local-path-provisioner"}
    namespaced = {"namespace": NAMESPACE}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": _ACCOUNT, **namespaced}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "local-path-provisioner-role", **namespaced},
         "rules": [{"apiGroups": [""], "resources": ["pods"],
                    "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "local-path-provisioner-role"},
         "rules": [
             {"apiGroups": [""], "verbs": ["get", "list", "watch"],
              "resources": ["nodes", "persistentvolumeclaims", "configmaps", "pods",
                            "pods/log"]},
             {"apiGroups": [""], "resources": ["persistentvolumes"],
              "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]},
             {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
             {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"],
              "verbs": ["get", "list", "watch"]}]},
        *(_binding(kind) for kind in ("Role", "ClusterRole")),
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "local-path-config", **namespaced},
         "data": {"config.json": json.dumps(config), "setup": _SETUP, "teardown": _TEARDOWN,
                  "helperPod.yaml": json.dumps(_HELPER_POD)}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "local-path-provisioner", **namespaced},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "serviceAccountName": _ACCOUNT,
                      "containers": [{
                          "name": "local-path-provisioner", "image": PROVISIONER_IMAGE,
                          "imagePullPolicy": "IfNotPresent",
                          "command": ["/local-path-provisioner", "--debug", "start",
                                      "--helper-image", HELPER_IMAGE,
                                      "--config", "/etc/config/config.json"],
                          "env": [{"name": "POD_NAMESPACE", "valueFrom": {
                                      "fieldRef": {"fieldPath": "metadata.namespace"}}},
                                  {"name": "CONFIG_MOUNT_PATH", "value": "/etc/config/"}],
                          "volumeMounts": [{"name": "config-volume",
                                            "mountPath": "/etc/config/"}]}],
                      "volumes": [{"name": "config-volume",
                                   "configMap": {"name": "local-path-config"}}]}}}},
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
         "metadata": {"name": STORAGE_CLASS, "annotations": {
             "storageclass.kubernetes.io/is-default-class": "true"}},
         "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer",
         "reclaimPolicy": "Delete"},
    ]


def _binding(kind: str) -> dict:
    metadata = {"name": "local-path-provisioner-bind"}
    if kind == "Role":
        metadata["namespace"] = NAMESPACE
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": f"{kind}Binding",
            "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind,
                        "name": "local-path-provisioner-role"},
            "subjects": [{"kind": "ServiceAccount", "name": _ACCOUNT,
                          "namespace": NAMESPACE}]}


def install(cluster) -> None:
    """The provisioner on a running LocalCluster; claims bind once it runs (not waited for:
    the first claim's pod waits for its volume, as on any cluster)."""
    import_images(cluster.node)
    volume_dir = cluster.run_dir / "volumes"
    volume_dir.mkdir(parents=True, exist_ok=True)
    cluster.apply(objects(volume_dir))
