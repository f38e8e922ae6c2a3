"""Pod images with no registry: built here from the repo's own Dockerfiles, imported into
containerd.

- The base: a Debian rootfs from debootstrap (`minbase` + python3, + pip for the service image)
  from the machine's own apt sources, `docker import`ed. The Dockerfiles take it as the
  BASE_IMAGE build arg; their default stays the public Python image.
- Debian's docker.io builds (legacy builder, `--network=none`), with dockerd pointed at the
  stack's containerd and every networking feature off; it runs only while images are built.
- The service image's pip install reads wheels downloaded on the host (wheels.py) and served
  to the build on loopback, with no index.
- The sandbox image is the `pause` binary built from the Kubernetes module.
Each image is rebuilt only when the files it is built from change (a content hash per image).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from . import node as node_module
from . import paths
from .archive import layer_archive
from .paths import IMAGES_DIR, LocalServiceError
from .processes import Daemon, Spawner, run, wait_until
from .wheels import serve_directory, wheelhouse

DEMO_AGENT_IMAGE = "session-manager-demo-agent:0.1.0"
SERVICE_IMAGE = "session-manager:0.1.0"
BASE_IMAGE = "session-manager-base/python3:bookworm"
BASE_PIP_IMAGE = "session-manager-base/python3-pip:bookworm"
SUITE = "bookworm"


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ImageSpec:
    ref: str
    context: Path
    dockerfile: Path
    base: str
    files: tuple[Path, ...]

    def digest(self) -> str:
        sha = hashlib.sha256(self.base.encode())
        for path in sorted(self.files):
            sha.update(str(path.relative_to(paths.REPO_ROOT)).encode())
            sha.update(path.read_bytes())
        return sha.hexdigest()[:16]


def image_specs() -> list[ImageSpec]:
    root = paths.REPO_ROOT
    # Everything the image's COPY lines take (Python, Lua, the OpenAPI document, the page).
    service_files = (root / "Dockerfile", root / "requirements.txt",
                     *(path for folder in ("service", "templates", "templates-redis",
                                           "templates-light")
                       for path in sorted((root / folder).rglob("*"))
                       if "__pycache__" not in path.parts))
    return [
        ImageSpec(DEMO_AGENT_IMAGE, root / "demo_agent", root / "demo_agent" / "Dockerfile",
                  BASE_IMAGE, (root / "demo_agent" / "Dockerfile",
                               root / "demo_agent" / "agent.py")),
        ImageSpec(SERVICE_IMAGE, root, root / "Dockerfile", BASE_PIP_IMAGE,
                  tuple(p for p in service_files if p.is_file())),
    ]


def apt_mirror() -> str:
    """The machine's own Debian mirror (never a hard-coded host)."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources")]
    for source in candidates:
        if source.is_file():
            match = re.search(r"^URIs:\s*(\S+)", source.read_text(), re.MULTILINE)
            if match:
                return match.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        match = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\b",
                          legacy.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    raise LocalServiceError("no Debian mirror found in this machine's apt sources")


def base_rootfs_tar(name: str, packages: tuple[str, ...]) -> Path:
    """A debootstrapped rootfs as a tar, cached."""
    tar = IMAGES_DIR / f"{name}.tar"
    if tar.is_file():
        return tar
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    target = IMAGES_DIR / f"{name}.rootfs"
    shutil.rmtree(target, ignore_errors=True)
    log(f"debootstrap {SUITE} minbase + {', '.join(packages)} (about 2 minutes)")
    result = subprocess.run(
        [paths.system_binary("debootstrap", "debootstrap"), "--variant=minbase",
         f"--include={','.join(packages)}", SUITE, str(target), apt_mirror()],
        capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LocalServiceError(f"debootstrap failed: {result.stdout[-1500:]}{result.stderr}")
    # Apt caches and lists are not part of an image.
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (target / junk).glob("*"):
            if entry.is_file():
                entry.unlink()
    run(["tar", "-C", str(target), "-cf", str(tar) + ".tmp", "."])
    Path(str(tar) + ".tmp").rename(tar)
    shutil.rmtree(target, ignore_errors=True)
    return tar


def pause_archive() -> Path:
    """The sandbox image: the static pause binary as /pause."""
    pause = Path(paths.binary("pause", build_part="pause"))
    return binary_archive(node_module.SANDBOX_IMAGE, pause, user="65535:65535")


def binary_archive(ref: str, binary: Path, *, user: str, args: tuple[str, ...] = ()) -> Path:
    """A docker-archive with one layer holding a static binary at /<its name>, its entrypoint;
    rebuilt when the binary is newer. For images of what we build from Go modules."""
    archive = IMAGES_DIR / f"{binary.name}.docker.tar"
    if archive.is_file() and archive.stat().st_mtime >= binary.stat().st_mtime:
        return archive
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    layer = IMAGES_DIR / f"{binary.name}.layer.tar"
    with tarfile.open(layer, "w") as out:
        out.add(binary, arcname=binary.name)
        tmp = tarfile.TarInfo("tmp")  # for programs that write a scratch file
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
        out.addfile(tmp)
    layer_archive(archive, ref, layer, {"Entrypoint": [f"/{binary.name}", *args],
                                        "User": user})
    layer.unlink()
    return archive


def rootfs_archive(ref: str, name: str, packages: tuple[str, ...], *, user: str) -> Path:
    """A Debian rootfs (debootstrap, cached) with `packages`, as a one-layer image: for
    off-the-shelf servers the manifests run (Redis) where no registry has their image."""
    archive = IMAGES_DIR / f"{name}.docker.tar"
    if archive.is_file():
        return archive
    layer_archive(archive, ref, base_rootfs_tar(name, packages), {"User": user})
    return archive


class DockerClient:
    """The docker CLI against one engine: `host` (unix:///...) or, with None, the one the
    environment names (DOCKER_HOST, else the default socket)."""

    def __init__(self, host: str | None, home: Path) -> None:
        self.host = host
        self.home = home
        # Debian's client matches Debian's daemon; a newer client on PATH negotiates down.
        self.binary = "/usr/bin/docker" if Path("/usr/bin/docker").is_file() else \
            paths.system_binary("docker", "docker.io")

    def docker(self, *args: str, check: bool = True, env: dict[str, str] | None = None):
        host = ["-H", self.host] if self.host else []
        return run([self.binary, *host, *args], check=check, env=env)

    def build(self, *args: str) -> None:
        """The legacy builder (no BuildKit in Debian's docker.io), failing with its output."""
        env = {"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin", "HOME": str(self.home)}
        if not self.host and os.environ.get("DOCKER_HOST"):
            env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
        result = self.docker("build", *args, check=False, env=env)
        if result.returncode != 0:
            raise LocalServiceError(f"docker build {' '.join(args[:5])}… failed:\n"
                                    f"{result.stdout[-2000:]}{result.stderr[-2000:]}")

    def has(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False).returncode == 0


class Docker:
    """dockerd on the stack's containerd, for builds only: no bridge, no iptables, no NAT."""

    def __init__(self, run_dir: Path, spawner: Spawner, containerd_socket: Path) -> None:
        self.socket = run_dir / "docker.sock"
        self.run_dir = run_dir
        self.spawner = spawner
        self.containerd_socket = containerd_socket
        self.daemon: Daemon | None = None
        self.client = DockerClient(f"unix://{self.socket}", run_dir)

    def start(self) -> None:
        exec_root = self.run_dir / "docker-exec"
        self.daemon = self.spawner.spawn("dockerd", [
            paths.system_binary("dockerd", "docker.io"),
            f"--host=unix://{self.socket}", f"--data-root={paths.DOCKER_ROOT}",
            f"--exec-root={exec_root}", f"--pidfile={self.run_dir / 'dockerd.pid'}",
            f"--containerd={self.containerd_socket}", "--storage-driver=overlay2",
            "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--ip-forward=false",
            "--bridge=none", "--userland-proxy=false", "--experimental=false",
            "--log-level=warn",
        ], stop_timeout_seconds=20)
        wait_until(lambda: self.client.docker("info", check=False).returncode == 0,
                   timeout=60, interval=0.1, what="dockerd", daemon=self.daemon)

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None


def stale_images(node: node_module.Node) -> list[ImageSpec]:
    missing = []
    for spec in image_specs():
        marker = IMAGES_DIR / f"{spec.ref.replace('/', '_').replace(':', '_')}.digest"
        current = marker.read_text().strip() if marker.is_file() else ""
        if current != spec.digest() or not node.image_present(spec.ref):
            missing.append(spec)
    return missing


def ensure_images(node: node_module.Node, run_dir: Path, spawner: Spawner) -> None:
    """Every pod image in containerd: the sandbox image, the demo agent, the service."""
    if not node.image_present(node_module.SANDBOX_IMAGE):
        log(f"importing {node_module.SANDBOX_IMAGE} (static pause binary)")
        node.import_image(pause_archive())
    stale = stale_images(node)
    if not stale:
        return
    docker = Docker(run_dir, spawner, node.containerd_socket)
    docker.start()
    try:
        build_images(docker.client, stale)
        for spec in stale:
            archive = IMAGES_DIR / "export.tar"
            docker.client.docker("save", "-o", str(archive), spec.ref)
            log(f"importing {spec.ref} into containerd")
            node.import_image(archive)
            archive.unlink()
            marker = IMAGES_DIR / f"{spec.ref.replace('/', '_').replace(':', '_')}.digest"
            marker.write_text(spec.digest())
    finally:
        docker.stop()


def build_images(client: DockerClient, specs: list[ImageSpec]) -> None:
    """Build `specs` on the engine `client` talks to, offline: the bases from debootstrap
    (imported once), the service's wheels served on loopback."""
    for base, packages in ((BASE_IMAGE, ("python3",)),
                           (BASE_PIP_IMAGE, ("python3", "python3-pip"))):
        if any(spec.base == base for spec in specs) and not client.has(base):
            tar = base_rootfs_tar(base.split("/")[1].split(":")[0], packages)
            log(f"docker import {base}")
            client.docker("import", str(tar), base)
    for spec in specs:
        _build(client, spec)


def _build(docker: DockerClient, spec: ImageSpec) -> None:
    args = ["--quiet", "-f", str(spec.dockerfile), "-t", spec.ref,
            "--build-arg", f"BASE_IMAGE={spec.base}"]
    log(f"docker build {spec.ref} from {spec.dockerfile.relative_to(paths.REPO_ROOT)}")
    if spec.ref != SERVICE_IMAGE:
        docker.build(*args, "--network=none", str(spec.context))
        return
    with serve_directory(wheelhouse()) as url:
        # Host network only to reach the wheel listing on loopback; no index is consulted.
        docker.build(*args, "--network=host", "--build-arg", "PIP_NO_INDEX=1",
                     "--build-arg", f"PIP_FIND_LINKS={url}",
                     "--build-arg", "PIP_BREAK_SYSTEM_PACKAGES=1", str(spec.context))

