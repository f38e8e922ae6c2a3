"""Which kind node image a cluster runs: kind's own where the engine has it or can pull it,
else the one scripts/build-kind.sh builds here (no registry answers on this machine).

kind's own is the image kind v0.33.0's release notes list for Kubernetes 1.35, pinned by digest
as they ask ("You must use the @sha256 digest to guarantee an image built for this release").
It carries Kubernetes 1.35.8; ours carries the repo's 1.35.4 (scripts/build-cluster-binaries.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths
from ..images import DockerClient
from ..paths import LocalServiceError

UPSTREAM_IMAGE = ("kindest/node:v1.35.8@sha256:"
                  "07b2536e30b803ed61d1677a79df6115f798ce64c80f9e22f6ed45afd09323c0")
BUILD_SCRIPT = paths.REPO_ROOT / "scripts" / "build-kind.sh"
LABEL_PREFIX = "session-manager.kind/"


@dataclass
class NodeImage:
    ref: str
    built_here: bool
    # kubeadm ClusterConfiguration patch naming the etcd and CoreDNS images the node carries
    # (ours: the repo's builds under their true versions, not the tags kubeadm defaults to).
    cluster_patch: dict = field(default_factory=dict)


def build(part: str) -> Path:
    """scripts/build-kind.sh PART (cached parts are skipped); the path it prints last."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT), part], stdout=subprocess.PIPE,
                            text=True, check=False, env={**os.environ, "PYTHON": sys.executable})
    if result.returncode != 0:
        raise LocalServiceError(f"{BUILD_SCRIPT.name} {part} failed (exit {result.returncode})")
    return Path(result.stdout.strip().splitlines()[-1])


def choose(client: DockerClient, *, may_pull: bool) -> NodeImage:
    """kind's own image if the engine has it (or, `may_pull`, pulls it), else ours, built
    when its inputs changed and loaded when the engine's copy differs."""
    if client.has(UPSTREAM_IMAGE) or (
            may_pull and client.docker("pull", "--quiet", UPSTREAM_IMAGE,
                                       check=False).returncode == 0):
        return NodeImage(UPSTREAM_IMAGE, built_here=False)
    print(f"[kind] {UPSTREAM_IMAGE.split('@')[0]} is not available here: building a node "
          "image (scripts/build-kind.sh node)", file=sys.stderr, flush=True)
    archive = build("node")
    manifest = json.loads(subprocess.run(["tar", "-xOf", str(archive), "manifest.json"],
                                         capture_output=True, check=True).stdout)[0]
    ref = manifest["RepoTags"][0]
    wanted_id = "sha256:" + manifest["Config"].removesuffix(".json")
    have = client.docker("image", "inspect", "-f", "{{.Id}}", ref, check=False).stdout.strip()
    if have != wanted_id:
        client.docker("load", "--quiet", "-i", str(archive))
        client.docker("image", "prune", "--force")  # the node image's earlier builds
    labels = json.loads(client.docker("image", "inspect", "-f", "{{json .Config.Labels}}",
                                      ref).stdout) or {}
    etcd_tag = labels[LABEL_PREFIX + "etcd-image-tag"]
    coredns_tag = labels[LABEL_PREFIX + "coredns-image-tag"]
    return NodeImage(ref, built_here=True, cluster_patch={
        "kind": "ClusterConfiguration",
        "dns": {"imageTag": coredns_tag},
        "etcd": {"local": {"imageTag": etcd_tag}},
    })
