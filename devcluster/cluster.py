"""A whole single-node Kubernetes cluster on this machine, up and down in one place.

    cluster = LocalCluster().start()   # etcd, control plane, node, KEDA, images
    ...                                 # cluster.kubeconfig, cluster.kubectl(...)
    cluster.stop()                      # every process, mount, link, rule, cgroup, sysctl

One stack per machine (fixed bridge and chain names): a lock file says who owns it, and a start
first removes whatever a crashed stack left behind (cleanup.clean_host).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import addons, cleanup, images, keda, network, node, paths, stack, storage
from .apiserver import KubeApiServer
from .paths import LocalServiceError
from .ports import free_port
from .processes import NO_CLOUD_ENV, Spawner, WaitTimedOut, wait_until
from .stack import StackLock


def log(message: str) -> None:
    print(f"[devcluster] {message}", file=sys.stderr, flush=True)


def missing_requirements() -> list[str]:
    """What this machine lacks for the full stack; empty when it can run it."""
    missing = []
    if platform.system() != "Linux":
        missing.append("not Linux")
    if os.geteuid() != 0:
        missing.append("not root (the node needs mounts, bridges, iptables, cgroups)")
    for name, package in (("containerd", "containerd"), ("runc", "runc"),
                          ("iptables", "iptables"), ("dockerd", "docker.io"),
                          ("debootstrap", "debootstrap"),
                          ("gcc", "gcc"), ("go", "golang (the machine's Go)")):
        try:
            paths.system_binary(name, package)
        except LocalServiceError:
            missing.append(f"{name} (package {package})")
    if not Path("/usr/lib/cni/bridge").is_file():
        missing.append("CNI plugins (package containernetworking-plugins)")
    if not Path("/proc/sys/net/bridge").is_dir():
        missing.append("br_netfilter (bridged traffic through iptables)")
    reason = network.EgressGuard.available()
    if reason:
        missing.append(f"egress guard: {reason}")
    return missing


class LocalCluster:
    """`addons=False` (tests, make run): KEDA runs on the host, no cluster DNS. `addons=True`
    (make e2e): CoreDNS and KEDA in-cluster from its own config (addons.py). Dynamic storage
    (storage.py) in both."""

    def __init__(self, *, build: bool = True, addons: bool = False) -> None:
        self.build = build
        self.addons = addons
        self.run_dir = paths.RUN_DIR
        self.state = cleanup.StateFile(paths.STATE_FILE)
        self.guard = network.EgressGuard()
        self.spawner: Spawner | None = None
        self.apiserver: KubeApiServer | None = None
        self.node: node.Node | None = None
        self.keda: keda.Keda | None = None
        self.lock = StackLock()
        self.timings: dict[str, float] = {}

    @property
    def kubeconfig(self) -> Path:
        assert self.apiserver is not None
        return self.apiserver.kubeconfig

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        missing = missing_requirements()
        if missing:
            raise LocalServiceError("the full local stack cannot run here: " + "; ".join(missing))
        owner = self.state.read().get("owner")  # named in the message if the lock is busy
        self.lock.acquire(f"another local stack is running on this machine (pid {owner}); stop "
                          "it first (Ctrl-C in its terminal, or `python -m devcluster down`)")
        started = time.monotonic()
        try:
            self._step("binaries (built once, then cached)", self._build)
            self._step("clean up what an earlier stack left", self._clean)
            self.state.update(sysctls=network.read_sysctls(), pids=[], owner=os.getpid())
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.guard.install()
            network.setup_node_network()
            self.spawner = Spawner(self.run_dir / "logs", cgroup_procs=self.guard.cgroup_procs,
                                   env=NO_CLOUD_ENV, on_spawn=self.state.add_pid)
            self._step("etcd + kube-apiserver", self._start_apiserver)
            self._step("controller-manager + scheduler", self._start_controllers)
            self.node = node.Node(self.run_dir, self.spawner, kubeconfig=self.kubeconfig)
            self._step("containerd", self.node.start_containerd)
            self._step("images", lambda: images.ensure_images(self.node, self.run_dir,
                                                             self.spawner))
            self._step("kubelet", lambda: self.node.start_kubelet(
                self.state.read()["sysctls"],
                cluster_dns=addons.DNS_SERVICE_IP if self.addons else None))
            self._step("kube-proxy", self.node.start_kube_proxy)
            self.guard.ensure_first()
            self._step("node Ready", self._wait_node_ready)
            self._step("storage (local-path-provisioner)", lambda: storage.install(self))
            if self.addons:
                self._step("CoreDNS, KEDA in-cluster", lambda: addons.install(self))
            else:
                self._step("KEDA", self._start_keda)
            self.guard.ensure_first()  # kube-proxy's first sync prepends its FORWARD jumps
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - started
        steps = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in self.timings.items()
                          if name != "total" and seconds >= 1)
        log(f"up in {self.timings['total']:.0f}s (Kubernetes "
            f"{(paths.BIN_DIR / 'kubelet.version').read_text().strip()}, KEDA "
            f"{(paths.BIN_DIR / 'keda.version').read_text().strip()}; {steps})")
        return self

    def stop(self) -> None:
        began = time.monotonic()
        if self.spawner is not None:
            by_name = {d.name: d for d in self.spawner.started}
            # KEDA and the node first, so nothing restarts pods while the rest goes away.
            for name in ("keda-operator", "keda-adapter", "kube-proxy", "kubelet"):
                if name in by_name:
                    by_name[name].stop()
            if self.node is not None and by_name.get("containerd") is not None:
                self.node.remove_pods()
            self.spawner.stop_all()
        cleanup.clean_host(self.run_dir, self.state, self.guard)
        self.lock.release()
        log(f"down in {time.monotonic() - began:.1f}s")

    def _step(self, what: str, fn) -> None:
        log(f"{what}...")
        began = time.monotonic()
        fn()
        self.timings[what] = time.monotonic() - began

    def _build(self) -> None:
        if not self.build:
            return
        for part in ("kube", "keda", "pause", *(("coredns",) if self.addons else ())):
            paths.build(part)

    def _clean(self) -> None:
        cleanup.clean_host(self.run_dir, self.state, self.guard)

    # -- parts -----------------------------------------------------------------------------

    def _start_apiserver(self) -> None:
        self.apiserver = KubeApiServer(self.run_dir / "apiserver", spawner=self.spawner,
                                       advertise=network.NODE_IP,
                                       service_cidr=network.SERVICE_CIDR).start()

    def _start_controllers(self) -> None:
        assert self.apiserver is not None and self.spawner is not None
        kubeconfig = str(self.kubeconfig)
        manager = self.spawner.spawn("kube-controller-manager", [
            paths.binary("kube-controller-manager"), f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--leader-elect=false",
            f"--service-account-private-key-file={self.apiserver.sa_key}",
            f"--root-ca-file={self.apiserver.ca}", "--use-service-account-credentials=false",
            f"--cluster-cidr={network.POD_CIDR}",
            f"--service-cluster-ip-range={network.SERVICE_CIDR}",
            "--allocate-node-cidrs=false", "--controllers=*,-nodeipam,-cloud-node-lifecycle",
            "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
            # Its API client's defaults (20 requests/s, burst 30) made the garbage collector
            # take ~7 dependents a second (ReplicaSets, EndpointSlices, KEDA's HPAs) after
            # thousands of archived bundles: minutes of objects left behind.
            "--kube-api-qps=100", "--kube-api-burst=200",
            "--profiling=false", "--v=1",
        ])
        scheduler = self.spawner.spawn("kube-scheduler", [
            paths.binary("kube-scheduler"), f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--leader-elect=false",
            "--profiling=false", "--v=1",
        ])
        time.sleep(1)
        for daemon in (manager, scheduler):
            if not daemon.running():
                raise LocalServiceError(f"{daemon.name} exited:\n{daemon.log_tail()}")

    def _wait_node_ready(self, timeout: float = 90) -> None:
        last = ""  # what the node said last: its Ready condition, or kubectl's error

        def ready() -> bool:
            nonlocal last
            result = self.kubectl("get", "node", node.NODE_NAME, "-o", "json", check=False)
            if result.returncode != 0:
                last = result.stderr.strip()
                return False
            conditions = json.loads(result.stdout)["status"].get("conditions") or []
            ready = [c for c in conditions if c["type"] == "Ready"]
            last = json.dumps(ready)
            return bool(ready) and ready[0]["status"] == "True"

        try:
            wait_until(ready, timeout=timeout, interval=0.5, what=f"node {node.NODE_NAME} Ready")
        except WaitTimedOut as timed_out:
            raise LocalServiceError(f"{timed_out}: {last}") from None

    def _start_keda(self) -> None:
        from service.kube import ClusterSetup, Kube, load_api_client

        admin = Kube(load_api_client(str(self.kubeconfig)), keda.NAMESPACE)
        try:
            ClusterSetup(admin).install_crds(paths.keda_crds())
            ClusterSetup(admin).ensure_namespace(keda.NAMESPACE)
        finally:
            admin.close()
        self.keda = keda.Keda(self.run_dir, self.spawner, kubeconfig=self.kubeconfig)
        self.keda.start_operator()
        self.keda.start_adapter(self.apply, self.kubectl)

    # -- clients ---------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True,
                input_text: str | None = None) -> subprocess.CompletedProcess:
        return stack.kubectl(self.kubeconfig, *args, check=check, input_text=input_text)

    def apply(self, objects: list[dict]) -> None:
        """Server-side apply of objects as one List (stack setup: DNS, storage, KEDA)."""
        stack.apply(self.kubeconfig, objects)

    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    def save_logs(self, target: Path) -> None:
        """Copy every daemon's log (for a failed test run's report)."""
        if self.logs_dir().is_dir():
            shutil.copytree(self.logs_dir(), target, dirs_exist_ok=True)


def down() -> None:
    """Tear down a stack whose owner is gone (`python -m devcluster down`)."""
    state = cleanup.StateFile(paths.STATE_FILE)
    owner = state.read().get("owner")
    if owner and owner != os.getpid():
        from .processes import kill_pids, pid_alive

        if pid_alive(owner):
            kill_pids([owner], timeout=60)  # it tears down its own stack on SIGTERM
    cleanup.clean_host(paths.RUN_DIR, state, network.EgressGuard())


def prepare_sessions_namespace(kubeconfig: Path, namespace: str, *, redis_password: str,
                               scaler_tls: Path) -> None:
    """A sessions namespace as KEDA needs it for either scaler mode: the Secret the redis
    triggers' TriggerAuthentication reads and the one the push scaler's mutual TLS reads."""
    from service.kube import ClusterSetup, Kube, load_api_client

    from .certs import scaler_client_secret

    kube = Kube(load_api_client(str(kubeconfig)), namespace)
    try:
        setup = ClusterSetup(kube)
        setup.ensure_namespace(namespace)
        setup.ensure_secret("redis-credentials", {"password": redis_password})
        setup.ensure_secret("session-manager-scaler-client", scaler_client_secret(scaler_tls))
    finally:
        kube.close()
