"""A throwaway kind cluster, up and down in one place (the e2e driver's cluster when Docker
can run here).

    cluster = KindCluster().start()   # engine, network, guard, node image, kind create
    cluster.kubectl(...); cluster.load(refs); cluster.load_archive(tar)
    cluster.stop()                    # kind delete, engine, network, guard, host restored

Like the local cluster it holds the stack lock (devcluster/stack.py; one cluster per machine:
fixed bridge, chain and cgroup names), and a start first undoes what a crashed run left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .. import paths, stack
from ..images import DockerClient
from ..network import GuardCounts
from ..paths import LocalServiceError
from ..processes import NO_CLOUD_ENV, Spawner, kill_pids, pid_alive
from ..stack import StackLock
from . import engine, nodeimage
from .guard import KindGuard
from .host import HostChanges

NETWORK = "session-manager-kind"   # a docker network of our own (KIND_EXPERIMENTAL_DOCKER_NETWORK)
BRIDGE = "br-smkind"
SUBNET = "172.30.99.0/24"
GATEWAY = "172.30.99.1"
POD_SUBNET = "10.244.0.0/16"
SERVICE_SUBNET = "10.96.0.0/16"
BASE_CONFIG = paths.REPO_ROOT / "e2e" / "kind-config.yaml"
NAME_PREFIX = "sm-e2e-"


def log(message: str) -> None:
    print(f"[kind] {message}", file=sys.stderr, flush=True)


def missing_requirements() -> list[str]:
    """What keeps kind from running here; empty when it can: root (the egress guard's rules,
    the routes to the cluster's ranges) and a Docker engine that answers, or what it takes
    to run one of our own."""
    if os.geteuid() != 0:
        return ["not root (the egress guard and the routes to the cluster need it)"]
    if engine.machine_engine() is not None:
        try:
            paths.system_binary("iptables", "iptables")  # the guard on the kind network
        except LocalServiceError as missing:
            return [str(missing)]
        return []
    return engine.private_engine_missing()


class KindCluster:
    def __init__(self, name: str | None = None) -> None:
        self.name = name or NAME_PREFIX + time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = engine.KIND_CACHE / "run" / self.name
        self.kubeconfig = self.run_dir / "kubeconfig"
        machine = engine.machine_engine()
        self.own_engine = machine is None
        self.client: DockerClient | None = machine
        self.guard = KindGuard(bridge=BRIDGE, subnet=SUBNET, own_engine=self.own_engine)
        self.host = HostChanges()
        self.engine: engine.PrivateEngine | None = None
        self.spawner: Spawner | None = None
        self.node_image: nodeimage.NodeImage | None = None
        self.created = False
        self.final_counts: GuardCounts | None = None
        self.guard_installed = False
        self.lock = StackLock()
        self.kind = ""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> KindCluster:
        """Up, or an exception; call stop() in either case (after saving the logs): a failed
        start leaves what it made for the logs to show."""
        self.kind = str(nodeimage.build("kind"))
        self.lock.acquire("another local cluster (the local stack or kind) runs on this "
                          "machine: wait for it, or stop it")
        began = time.monotonic()
        self.host.restore(self.guard, BRIDGE)  # what a crashed run left behind
        self.host.save()
        self.guard.install()
        self.guard_installed = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.spawner = Spawner(self.run_dir / "logs", cgroup_procs=self.guard.cgroup_procs,
                               env=NO_CLOUD_ENV)
        if self.own_engine:
            log("starting a Docker engine of our own (no engine answers here)")
            self.engine = engine.PrivateEngine(self.spawner, gateway=GATEWAY)
            self.client = self.engine.start()
        self._delete_leftovers()
        self._create_network()
        self.node_image = nodeimage.choose(self.client, may_pull=not self.own_engine)
        log(f"kind create cluster {self.name} --image {self.node_image.ref}")
        self.created = True
        self._kind("create", "cluster", "--name", self.name, "--image", self.node_image.ref,
                   "--config", str(self._config()), "--kubeconfig", str(self.kubeconfig),
                   "--wait", "300s", "--retain")
        self.host.restore_sysctls()  # kubelet in the node set host-global ones
        self.host.add_routes([SERVICE_SUBNET, POD_SUBNET], via=self.node_ip())
        log(f"cluster {self.name} up in {time.monotonic() - began:.0f}s "
            f"(node image {self.node_image.ref})")
        return self

    def stop(self) -> None:
        if not self.lock.held:
            return  # never started (or the lock was someone else's): nothing here is ours
        began = time.monotonic()
        try:
            if self.created and self.client is not None:
                self._kind("delete", "cluster", "--name", self.name, check=False)
            if self.client is not None:
                self.client.docker("network", "rm", NETWORK, check=False)
            if self.guard_installed:
                self.final_counts = self.guard.counts()
        finally:
            if self.engine is not None:
                self.engine.stop()
            self.host.restore(self.guard, BRIDGE)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.lock.release()
        log(f"cluster {self.name} down in {time.monotonic() - began:.0f}s")

    # -- parts -----------------------------------------------------------------------------

    def _kind(self, *args: str, check: bool = True) -> int:
        """The kind CLI in the guard's cgroup, its output in the run's log dir."""
        assert self.spawner is not None and self.client is not None
        env = {"KIND_EXPERIMENTAL_PROVIDER": "docker",
               "KIND_EXPERIMENTAL_DOCKER_NETWORK": NETWORK,
               # kind runs `docker`: the client that matches the engine first on PATH.
               "PATH": f"{Path(self.client.binary).parent}:{os.environ.get('PATH', '')}"}
        if self.client.host:
            env["DOCKER_HOST"] = self.client.host
        command = self.spawner.spawn(f"kind-{args[0]}", [self.kind, *args], env=env,
                                     stop_timeout_seconds=60)
        code = command.process.wait()
        if check and code != 0:
            raise LocalServiceError(f"kind {' '.join(args[:3])} failed ({code}):\n"
                                    f"{command.log_tail(3000)}")
        return code

    def _config(self) -> Path:
        """e2e/kind-config.yaml with this cluster's ranges and the node image's patches."""
        config = yaml.safe_load(BASE_CONFIG.read_text())
        config.setdefault("networking", {}).update(podSubnet=POD_SUBNET,
                                                   serviceSubnet=SERVICE_SUBNET)
        if self.node_image and self.node_image.cluster_patch:
            config.setdefault("kubeadmConfigPatches", []).append(
                yaml.safe_dump(self.node_image.cluster_patch))
        path = self.run_dir / "kind-config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _create_network(self) -> None:
        """Our own bridge network with a fixed range and no masquerade: nothing a node sends is
        meant to leave the machine (kind uses a network it finds under its name)."""
        assert self.client is not None
        self.client.docker("network", "rm", NETWORK, check=False)
        self.client.docker(
            "network", "create", "--driver", "bridge", "--subnet", SUBNET, "--gateway", GATEWAY,
            "--opt", f"com.docker.network.bridge.name={BRIDGE}",
            "--opt", "com.docker.network.bridge.enable_ip_masquerade=false", NETWORK)

    def _delete_leftovers(self) -> None:
        """Clusters of earlier runs that did not get to delete theirs (ours only, by name)."""
        assert self.client is not None
        names = self.client.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
        for container in names:
            if container.startswith(NAME_PREFIX) and container.endswith("-control-plane"):
                log(f"removing {container}, left by an earlier run")
                self.client.docker("rm", "--force", "--volumes", container, check=False)

    def node_ip(self) -> str:
        assert self.client is not None
        result = self.client.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}",
                                    f"{self.name}-control-plane")
        return json.loads(result.stdout)[NETWORK]["IPAddress"]

    # -- clients ---------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True,
                input_text: str | None = None) -> subprocess.CompletedProcess:
        return stack.kubectl(self.kubeconfig, *args, check=check, input_text=input_text)

    def apply(self, objects: list[dict]) -> None:
        """Server-side apply of objects as one List."""
        stack.apply(self.kubeconfig, objects)

    def load(self, *refs: str) -> None:
        """Images of the engine into the node (`kind load docker-image`)."""
        self._kind("load", "docker-image", "--name", self.name, *refs)

    def load_archive(self, archive: Path) -> None:
        """A docker-archive into the node (`kind load image-archive`)."""
        self._kind("load", "image-archive", "--name", self.name, str(archive))

    def save_logs(self, target: Path) -> None:
        """`kind export logs` (node journal, containers, kubelet) and our daemons' logs."""
        if not self.lock.held:
            return
        if self.created and self.client is not None:
            self._kind("export", "logs", str(target / "kind"), "--name", self.name, check=False)
        if (self.run_dir / "logs").is_dir():
            shutil.copytree(self.run_dir / "logs", target / "stack", dirs_exist_ok=True)


def down() -> None:
    """Tear down what a kind run left behind (`python -m devcluster down`): its owner is asked
    to stop first (it deletes its cluster on SIGTERM), then the host is put back."""
    host = HostChanges()
    owner = host.state.read().get("owner")
    if owner and owner != os.getpid() and pid_alive(owner):
        kill_pids([owner], timeout=90)
    host.restore(KindGuard(bridge=BRIDGE, subnet=SUBNET, own_engine=True), BRIDGE)
