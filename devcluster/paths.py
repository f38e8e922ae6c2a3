"""Where the local stack's binaries, images and state live, and how a missing one is built.

Everything built lives in one cache directory outside the repo (SESSION_MANAGER_CACHE, default
~/.cache/session-manager): Kubernetes, KEDA and helm binaries and the KEDA and cert-manager CRDs
from scripts/build-cluster-binaries.sh, the base image rootfs, containerd's image store. Nothing
here is machine-specific.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(
    os.environ.get("SESSION_MANAGER_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "session-manager"
)
BIN_DIR = CACHE_DIR / "bin"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-cluster-binaries.sh"
KEDA_CRDS = CACHE_DIR / "keda-crds.yaml"
CERT_MANAGER_CRDS = CACHE_DIR / "cert-manager-crds.yaml"
# Image stores, kept between runs so a warm start imports nothing.
CONTAINERD_ROOT = CACHE_DIR / "containerd"
DOCKER_ROOT = CACHE_DIR / "docker"
IMAGES_DIR = CACHE_DIR / "images"
# The running stack's state (removed at stop) and the file that outlives a crash.
RUN_DIR = CACHE_DIR / "stack"
STATE_FILE = CACHE_DIR / "stack-state.json"

KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
                 "kube-proxy", "kubectl")
KEDA_BINARIES = ("keda", "keda-adapter")


class LocalServiceError(RuntimeError):
    """A part of the local stack could not be built or started."""


def build(part: str) -> None:
    """Run the build script for `part` (kube, etcd, keda-crds, keda, helm, all); it skips what is
    cached and prints its progress on stderr, which the caller's terminal shows."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT), part], stdout=subprocess.DEVNULL,
                            check=False)
    if result.returncode != 0:
        raise LocalServiceError(f"{BUILD_SCRIPT.name} {part} failed (exit {result.returncode})")


def binary(name: str, *, build_part: str | None = None) -> str:
    """A built binary's path; builds its part first when `build_part` is given."""
    path = BIN_DIR / name
    if not path.is_file() and build_part:
        build(build_part)
    if not path.is_file():
        raise LocalServiceError(
            f"{name} not found at {path}: run scripts/build-cluster-binaries.sh "
            f"{build_part or 'all'} first")
    return str(path)


def kube_apiserver(*, build_missing: bool = True) -> str:
    explicit = os.environ.get("KUBE_APISERVER")
    if explicit:
        return explicit
    return binary("kube-apiserver", build_part="kube" if build_missing else None)


def etcd(*, build_missing: bool = True) -> str:
    """etcd built from its Go module (3.6, what Kubernetes 1.35 runs on): Debian's 3.4 cannot
    answer the API server's watch-progress requests, which makes it read every list, label
    sweeps included, from etcd instead of its cache."""
    return binary("etcd", build_part="etcd" if build_missing else None)


def system_binary(name: str, package: str) -> str:
    path = shutil.which(name) or next(
        (str(p / name) for p in (Path("/usr/sbin"), Path("/sbin")) if (p / name).is_file()), None)
    if not path:
        raise LocalServiceError(f"{name} not found: apt-get install {package}")
    return path


def helm(*, build_missing: bool = True) -> str:
    """helm built from its Go module (helm.sh/helm/v4): lints and renders charts/."""
    return binary("helm", build_part="helm" if build_missing else None)


def _crds(path: Path, part: str, build_missing: bool) -> list[dict]:
    if not path.is_file() and build_missing:
        build(part)
    if not path.is_file():
        raise LocalServiceError(f"{path} missing: run {BUILD_SCRIPT} {part}")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def keda_crds(*, build_missing: bool = True) -> list[dict]:
    """KEDA's own CustomResourceDefinitions, from its module's config/crd."""
    return _crds(KEDA_CRDS, "keda-crds", build_missing)


def cert_manager_crds(*, build_missing: bool = True) -> list[dict]:
    """cert-manager's CustomResourceDefinitions, from its module's deploy/crds."""
    return _crds(CERT_MANAGER_CRDS, "cert-manager-crds", build_missing)
