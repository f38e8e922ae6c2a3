"""Cluster services the product's manifests assume, installed the way a cluster has them:
cluster DNS (CoreDNS as a Deployment behind the kube-dns Service) and KEDA in-cluster from its
own config. Used by the e2e stack (LocalCluster(addons=True)); storage (the Redis PVC's) is
there in every mode (storage.py).

- CoreDNS is built from its Go module and serves only the cluster zone: no `forward`, so a name
  off this machine gets an error from it and nothing is ever asked upstream. It listens on 1053
  as a non-root user; the kube-dns Service maps 53 to it.
- KEDA: `kubectl kustomize` of the module's config/default (operator, metrics API server,
  admission webhooks, RBAC, cert rotation), with the images built here from the binaries and
  pull policy IfNotPresent (there is no registry).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from . import images, paths

DNS_SERVICE_IP = "10.215.0.10"
COREDNS_IMAGE = "session-manager-local/coredns:1.14.7"
KEDA_IMAGES = {  # KEDA's image names in its config -> the binary built here
    "ghcr.io/kedacore/keda": "keda",
    "ghcr.io/kedacore/keda-metrics-apiserver": "keda-adapter",
    "ghcr.io/kedacore/keda-admission-webhooks": "keda-admission-webhooks",
}
KEDA_TAG = "2.20.2-local"
# The manifests' Redis image has no registry here: Debian's redis-server (7.0) in its own
# rootfs stands in, named for what it is; make e2e's overlay points the manifests at it.
REDIS_IMAGE = "session-manager-local/redis:7.0-bookworm"

COREFILE = """.:1053 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
    loop
    reload
}
"""


def _dns_objects() -> list[dict]:
    ns = "kube-system"
    labels = {"k8s-app": "kube-dns"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "coredns", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods",
                                                       "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                    "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": ns}]},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "coredns", "namespace": ns}, "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "coredns", "namespace": ns, "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "serviceAccountName": "coredns", "dnsPolicy": "Default",
                      "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                          "seccompProfile": {"type": "RuntimeDefault"}},
                      "containers": [{
                          "name": "coredns", "image": COREDNS_IMAGE,
                          "imagePullPolicy": "IfNotPresent",
                          "args": ["-conf", "/etc/coredns/Corefile"],
                          "ports": [{"containerPort": 1053, "protocol": "UDP", "name": "dns"},
                                    {"containerPort": 1053, "protocol": "TCP",
                                     "name": "dns-tcp"}],
                          "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181},
                                             "periodSeconds": 2},
                          "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                          "resources": {"requests": {"cpu": "20m", "memory": "32Mi"},
                                        "limits": {"memory": "128Mi"}},
                          "securityContext": {"allowPrivilegeEscalation": False,
                                              "readOnlyRootFilesystem": True,
                                              "capabilities": {"drop": ["ALL"]}},
                          "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                      }],
                      "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                  }}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": ns, "labels": labels},
         "spec": {"clusterIP": DNS_SERVICE_IP, "selector": labels,
                  "ports": [{"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "targetPort": 1053,
                             "protocol": "TCP"}]}},
    ]


def keda_objects() -> list[dict]:
    """KEDA's config/default as kustomize renders it, pointed at the images built here."""
    config = _keda_module_dir() / "config" / "default"
    rendered = subprocess.run([paths.binary("kubectl"), "kustomize", str(config)],
                              capture_output=True, text=True, check=True).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    for obj in objects:
        if obj.get("kind") != "Deployment":
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            name = container["image"].rsplit(":", 1)[0]
            if name in KEDA_IMAGES:
                container["image"] = f"{name}:{KEDA_TAG}"
                container["imagePullPolicy"] = "IfNotPresent"
    return objects


def _keda_module_dir() -> Path:
    version = (paths.BIN_DIR / "keda.version").read_text().strip()
    env = {**os.environ, "GOMODCACHE": str(paths.CACHE_DIR / "gomod"), "GOFLAGS": "-modcacherw"}
    out = subprocess.run(["go", "mod", "download", "-json",
                          f"github.com/kedacore/keda/v2@{version}"],
                         capture_output=True, text=True, check=True, env=env, cwd="/").stdout
    return Path(json.loads(out)["Dir"])


def import_images(node) -> None:
    coredns = Path(paths.binary("coredns", build_part="coredns"))
    wanted = [(COREDNS_IMAGE, coredns, "65532:65532")]
    for name, binary in KEDA_IMAGES.items():
        wanted.append((f"{name}:{KEDA_TAG}", Path(paths.binary(binary, build_part="keda")),
                       "1000:1000"))
    for ref, binary, user in wanted:
        archive = images.binary_archive(ref, binary, user=user)
        if not node.image_present(ref) or archive.stat().st_mtime > binary.stat().st_mtime + 1:
            node.import_image(archive)
    if not node.image_present(REDIS_IMAGE):
        node.import_image(images.rootfs_archive(REDIS_IMAGE, "redis-bookworm",
                                                ("redis-server",), user="999:1000"))


def install(cluster) -> None:
    """DNS and KEDA on a running LocalCluster (kubelet started with clusterDNS)."""
    import_images(cluster.node)
    cluster.apply(_dns_objects())
    objects = keda_objects()
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    cluster.apply(crds)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"crd/{o['metadata']['name']}" for o in crds])
    cluster.apply([o for o in objects if o["kind"] != "CustomResourceDefinition"])
    cluster.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns",
                    "--timeout=120s")
    for deployment in ("keda-operator", "keda-metrics-apiserver", "keda-admission"):
        cluster.kubectl("-n", "keda", "rollout", "status", f"deployment/{deployment}",
                        "--timeout=180s")
    cluster.kubectl("wait", "--for=condition=Available", "--timeout=120s",
                    "apiservice/v1beta1.external.metrics.k8s.io")
