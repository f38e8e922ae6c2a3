"""The Docker engine kind runs on: the machine's own when one answers, else one of our own.

Ours (root, Debian's docker.io and containerd): containerd and dockerd with state under
RUN_DIR and data in the cache, started inside the egress guard's cgroup, with every networking
feature of dockerd off — no docker0, no iptables rules, no NAT, no forwarding. kind's API port
is published on 127.0.0.1 by docker-proxy. The embedded DNS of a container forwards what it
cannot answer to the kind network's gateway, where nothing listens: a name off this machine
fails here instead of being asked elsewhere.

Debian's dockerd 20.10 grants a --privileged container every capability it knows; this
machine's bounding set lacks CAP_SYS_RESOURCE, so runc would fail to start kind's node
("unable to apply caps"). `runc-bounded` (next to this file) is dockerd's default runtime: it
drops what our bounding set lacks, then runs the real runc.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import paths
from ..images import DockerClient
from ..network import EgressGuard
from ..paths import LocalServiceError
from ..processes import Daemon, Spawner, wait_until

KIND_CACHE = paths.CACHE_DIR / "kind"
DATA_ROOT = KIND_CACHE / "docker"          # image layers and containerd content, kept
RUN_DIR = Path("/run/session-manager-kind")  # sockets and runtime state, removed at stop
RUNC_BOUNDED = Path(__file__).with_name("runc-bounded")


def machine_engine() -> DockerClient | None:
    """The engine DOCKER_HOST (or the default socket) names, if one answers."""
    try:
        client = DockerClient(None, KIND_CACHE)
    except LocalServiceError:
        return None  # no docker CLI at all
    result = client.docker("info", "--format", "{{.ServerVersion}}", check=False)
    return client if result.returncode == 0 else None


def private_engine_missing() -> list[str]:
    """What this machine lacks to run an engine of our own; empty when it can."""
    missing = []
    if os.geteuid() != 0:
        missing.append("not root (a Docker engine of our own needs root)")
    for name, package in (("dockerd", "docker.io"), ("containerd", "containerd"),
                          ("runc", "runc"), ("docker", "docker.io"), ("iptables", "iptables")):
        try:
            paths.system_binary(name, package)
        except LocalServiceError:
            missing.append(f"{name} (package {package})")
    # Its daemons run in a cgroup the guard matches on (an unprivileged container has none).
    reason = EgressGuard.available()
    if reason:
        missing.append(f"egress guard: {reason}")
    return missing


class PrivateEngine:
    """containerd + dockerd of our own, for kind only, in the guard's cgroup."""

    def __init__(self, spawner: Spawner, *, gateway: str) -> None:
        self.spawner = spawner
        self.gateway = gateway
        self.containerd_socket = RUN_DIR / "containerd" / "containerd.sock"
        self.socket = RUN_DIR / "docker.sock"
        self.daemons: list[Daemon] = []

    def start(self) -> DockerClient:
        for directory in (RUN_DIR / "containerd", RUN_DIR / "docker-exec",
                          DATA_ROOT / "containerd", DATA_ROOT / "data"):
            directory.mkdir(parents=True, exist_ok=True)
        config = RUN_DIR / "containerd.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{DATA_ROOT / "containerd"}"\n'
            f'state = "{RUN_DIR / "containerd"}"\n'
            # Our bounding set has no CAP_SYS_RESOURCE: leave the score where it is.
            "oom_score = 0\n"
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.containerd_socket}"\n'
            f'[ttrpc]\n  address = "{self.containerd_socket}.ttrpc"\n')
        containerd = self.spawner.spawn(
            "kind-containerd", [paths.system_binary("containerd", "containerd"),
                                "--config", str(config)], stop_timeout_seconds=20)
        self.daemons.append(containerd)
        wait_until(self.containerd_socket.exists, timeout=30, interval=0.1,
                   what="kind's containerd", daemon=containerd)
        dockerd = self.spawner.spawn("kind-dockerd", [
            paths.system_binary("dockerd", "docker.io"),
            f"--host=unix://{self.socket}", f"--data-root={DATA_ROOT / 'data'}",
            f"--exec-root={RUN_DIR / 'docker-exec'}", f"--pidfile={RUN_DIR / 'dockerd.pid'}",
            f"--containerd={self.containerd_socket}", "--storage-driver=overlay2",
            "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--ip-forward=false",
            "--bridge=none", "--userland-proxy=true",
            f"--userland-proxy-path={shutil.which('docker-proxy') or '/usr/sbin/docker-proxy'}",
            f"--dns={self.gateway}", "--log-level=warn",
            f"--add-runtime=runc-bounded={RUNC_BOUNDED}", "--default-runtime=runc-bounded",
        ], stop_timeout_seconds=30)
        self.daemons.append(dockerd)
        client = DockerClient(f"unix://{self.socket}", KIND_CACHE)
        wait_until(lambda: client.docker("info", check=False).returncode == 0, timeout=90,
                   interval=0.2, what="kind's dockerd", daemon=dockerd)
        return client

    def stop(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.stop()
        self.daemons.clear()
