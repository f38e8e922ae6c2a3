"""What the product needs in a kind cluster beyond kind itself (which brings CoreDNS and a
default StorageClass): KEDA, the two product images and a Redis image, all loaded into the node
with `kind load`, so the cluster pulls nothing; and cluster DNS that asks no one upstream.

- KEDA: the same objects and images as the local cluster's addons (its module's
  config/default; images made of the binaries built here).
- Product images: on our own engine, built offline exactly as the local cluster builds them
  (devcluster/images.py: a Debian base from debootstrap, the service's wheels on loopback); on
  an engine that can pull (GitHub's runners), `docker build` with the Dockerfiles' defaults.
- Redis: offline, the local cluster's Debian redis-server image; else the chart's own image,
  pulled by the engine.
- DNS: kubeadm's CoreDNS forwards what is not a cluster name to the node's resolver, and a
  pod's search list makes names such as `redis.<ns>.svc.cluster.local.<the host's search
  domain>` of every short lookup; an engine whose DNS forwards off the machine (GitHub's)
  would send them out. Without `forward`, CoreDNS answers the cluster's names only, like the
  local cluster's.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

from .. import addons, images, paths
from .cluster import KindCluster


def log(message: str) -> None:
    print(f"[kind] {message}", file=sys.stderr, flush=True)


def load_images(cluster: KindCluster) -> dict[str, str]:
    """Build or pull every image the release runs and load it into the node; returns the
    chart values (`--set`) that point the release at them."""
    client = cluster.client
    assert client is not None
    specs = images.image_specs()
    if cluster.own_engine:
        images.build_images(client, specs)
        redis = images.rootfs_archive(addons.REDIS_IMAGE, "redis-bookworm", ("redis-server",),
                                      user="999:1000")
        redis_repository, redis_tag = addons.REDIS_IMAGE.rsplit(":", 1)
        cluster.load_archive(redis)
    else:
        for spec in specs:
            log(f"docker build {spec.ref} from {spec.dockerfile.relative_to(paths.REPO_ROOT)}")
            client.docker("build", "--quiet", "-t", spec.ref, "-f", str(spec.dockerfile),
                          str(spec.context))
        chart_values = yaml.safe_load((paths.REPO_ROOT / "charts" / "session-manager" /
                                       "values.yaml").read_text())
        image = chart_values["redis"]["bundled"]["image"]
        redis_repository, redis_tag = image["repository"], image["tag"]
        client.docker("pull", "--quiet", f"{redis_repository}:{redis_tag}")
        cluster.load(f"{redis_repository}:{redis_tag}")
    log(f"kind load {', '.join(spec.ref for spec in specs)}")
    cluster.load(*(spec.ref for spec in specs))
    return {"redis.bundled.image.repository": redis_repository,
            "redis.bundled.image.tag": redis_tag}


def install_keda(cluster: KindCluster) -> None:
    """KEDA in-cluster from its own config, its images made of the binaries built here."""
    for name, binary in addons.KEDA_IMAGES.items():
        built = Path(paths.binary(binary, build_part="keda"))
        cluster.load_archive(images.binary_archive(f"{name}:{addons.KEDA_TAG}", built,
                                                   user="1000:1000"))
    objects = addons.keda_objects()  # the local cluster's KEDA objects, shared
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    cluster.apply(crds)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"crd/{o['metadata']['name']}" for o in crds])
    cluster.apply([o for o in objects if o["kind"] != "CustomResourceDefinition"])
    for deployment in ("keda-operator", "keda-metrics-apiserver", "keda-admission"):
        cluster.kubectl("-n", "keda", "rollout", "status", f"deployment/{deployment}",
                        "--timeout=180s")
    cluster.kubectl("wait", "--for=condition=Available", "--timeout=120s",
                    "apiservice/v1beta1.external.metrics.k8s.io")


def cluster_dns_only(cluster: KindCluster) -> None:
    """CoreDNS without its `forward` block: nothing is asked upstream."""
    configmap = json.loads(cluster.kubectl("-n", "kube-system", "get", "configmap", "coredns",
                                           "-o", "json").stdout)
    corefile = configmap["data"]["Corefile"]
    local_only = re.sub(r"\n[ \t]*forward \.[^\n{]*(\{[^}]*\})?", "", corefile)
    if "forward" in local_only:
        raise AssertionError(f"CoreDNS's Corefile still forwards:\n{local_only}")
    if local_only == corefile:
        return
    cluster.apply([{"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "coredns", "namespace": "kube-system"},
                    "data": {"Corefile": local_only}}])
    cluster.kubectl("-n", "kube-system", "rollout", "restart", "deployment/coredns")
    cluster.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns",
                    "--timeout=120s")
