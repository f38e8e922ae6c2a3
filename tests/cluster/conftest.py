"""The real-cluster layer: the whole local stack (devcluster.LocalCluster) once per test run.

Real kubelet + containerd run the demo agent image, real KEDA scales sessions: by default
through the worker's push scaler (in-process, on loopback, mutual TLS from the
`session-manager-scaler-client` Secret), in redis mode through the TriggerAuthentication and
the `redis-credentials` Secret (Redis with requirepass). The API and worker are the project's
own code in-process. The fixtures here replace the root conftest's
`namespace`, `kube` and `settings`, so its `store`, `make_api` and `make_worker` work on the
cluster. On a machine that cannot run the stack (not Linux/root, packages missing) the layer
is skipped with the reason; with REQUIRE_FULL_STACK=1 (CI) that is an error instead.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from devcluster import cluster as cluster_module
from devcluster import network, paths
from devcluster.ports import free_port
from service.core.config import Settings
from service.kube import Kube, load_api_client
from tests.constants import API_KEY

_namespaces = itertools.count(1)


@pytest.fixture(scope="package")  # down again before the other layers run: 2 cores
def local_cluster(tmp_path_factory: pytest.TempPathFactory):
    missing = cluster_module.missing_requirements()
    if missing:
        reason = "the full local stack cannot run here: " + "; ".join(missing)
        if os.environ.get("REQUIRE_FULL_STACK") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    sysctls_before = network.read_sysctls()
    stack = cluster_module.LocalCluster().start()
    try:
        yield stack
        counts = stack.guard.counts()
        assert counts.total == 0, f"egress guard counted traffic leaving the machine: {counts}"
    finally:
        stack.save_logs(tmp_path_factory.getbasetemp() / "cluster-logs")
        stack.stop()
    assert leftovers(sysctls_before) == [], "the stack's teardown left things behind"


def leftovers(sysctls_before: dict[str, str]) -> list[str]:
    """What of the stack is still on the host after its teardown: should be nothing."""
    found = []
    for link in (network.NODE_BRIDGE, network.POD_BRIDGE):
        if Path("/sys/class/net", link).exists():
            found.append(f"link {link}")
    for command in ("iptables-save", "ip6tables-save"):
        rules = subprocess.run([command], capture_output=True, text=True, check=True).stdout
        found += [f"{command}: {line}" for line in rules.splitlines()
                  if "KUBE-" in line or "SM-EGRESS" in line or network.POD_BRIDGE in line]
    roots = [str(p) + "/" for p in (paths.RUN_DIR, paths.CONTAINERD_ROOT, paths.DOCKER_ROOT)]
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        found += [f"mount {line.split()[4]}" for line in mountinfo
                  if any(line.split()[4].startswith(root) for root in roots)]
    found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob("*/kubepods")]
    if (network.CGROUP2_ROOT / network.STACK_CGROUP).exists():
        found.append(f"cgroup {network.STACK_CGROUP}")
    if Path("/var/run/netns").is_dir():
        found += [f"netns {p.name}" for p in Path("/var/run/netns").glob("cni-*")]
    after = network.read_sysctls()
    found += [f"sysctl {name}={after.get(name)} (was {value})"
              for name, value in sysctls_before.items() if after.get(name) != value]
    for proc in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv0 = proc.read_bytes().split(b"\0")[0].decode(errors="replace")
            if str(paths.BIN_DIR) in argv0 or Path(argv0).name in (
                    "containerd", "containerd-shim-runc-v2", "dockerd"):
                found.append(f"process {proc.parent.name}: {argv0}")
    return found


@pytest.fixture(scope="package")
def scaler_port() -> int:
    """One port for every test's push scaler: KEDA (on the host) keeps dialing one address."""
    return free_port()


@pytest.fixture
def namespace(local_cluster, redis_server, scaler_certs) -> str:
    name = f"c{os.getpid()}-{next(_namespaces)}"
    try:
        cluster_module.prepare_sessions_namespace(
            local_cluster.kubeconfig, name, redis_password=redis_server.password,
            scaler_tls=scaler_certs)
        yield name
    finally:
        # Stop the namespace's pods now (2 cores); the namespace controller finishes later.
        local_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def kube(local_cluster, namespace: str) -> Kube:
    client = Kube(load_api_client(str(local_cluster.kubeconfig)), namespace)
    yield client
    client.close()


@pytest.fixture
def settings(namespace: str, redis_server, scaler_certs, scaler_port: int) -> Settings:
    """KEDA on the host reaches the worker's push scaler and the tests' Redis on loopback; the
    control plane reaches pods at their address (no cluster DNS in this stack)."""
    return Settings(
        scaler_address=f"127.0.0.1:{scaler_port}", scaler_port=scaler_port,
        scaler_tls_dir=scaler_certs / "server",
        api_keys=(API_KEY,), namespace=namespace, redis_url=redis_server.url,
        pod_url_template="http://{pod_ip}:{port}",
        keda_redis_host="127.0.0.1", keda_redis_port=redis_server.port,
        keda_polling_interval_seconds=1, keda_cooldown_period_seconds=5,
        keda_initial_cooldown_period_seconds=60, idle_timeout_seconds=120,
        user_pod_cpu_request="20m", user_pod_memory_request="32Mi",
        user_pod_cpu_limit="500m", user_pod_memory_limit="128Mi",
        delivery_backoff_seconds=0.5, worker_poll_interval_seconds=0.1,
        pod_timeout_seconds=60, delivery_lease_seconds=90,
    )


class ClusterView:
    """What the cluster itself says about a session: read with the real kubectl."""

    def __init__(self, stack, namespace: str) -> None:
        self.stack = stack
        self.namespace = namespace

    def get(self, *args: str) -> dict:
        result = self.stack.kubectl("-n", self.namespace, "get", *args, "-o", "json")
        return json.loads(result.stdout)

    def pods(self, session_id: str) -> list[dict]:
        return self.get("pods", "-l", f"session-manager/session={session_id}")["items"]

    def ready_pods(self, session_id: str) -> list[dict]:
        return [p for p in self.pods(session_id)
                if not p["metadata"].get("deletionTimestamp")
                and any(c["type"] == "Ready" and c["status"] == "True"
                        for c in p["status"].get("conditions") or [])]

    def ready_endpoints(self, session_id: str) -> list[str]:
        slices = self.get("endpointslices", "-l",
                          f"kubernetes.io/service-name=session-{session_id}")["items"]
        return [address for item in slices for endpoint in item.get("endpoints") or []
                if (endpoint.get("conditions") or {}).get("ready")
                for address in endpoint["addresses"]]

    def replicas(self, session_id: str) -> int:
        return int(self.get("deployment", f"session-{session_id}")["spec"].get("replicas") or 0)

    def events(self, reason: str, *, since: float = 0) -> list[dict]:
        """Events of `reason` last seen at or after the wall-clock time `since`."""
        found = []
        for event in self.get("events")["items"]:
            stamp = event.get("lastTimestamp") or event.get("eventTime") or ""
            seen = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() \
                if stamp else 0
            if event.get("reason") == reason and seen >= since:
                found.append(event)
        return found

    def scaled_object(self, session_id: str) -> dict:
        return self.get("scaledobject", f"session-{session_id}")

    def session_objects(self, session_id: str) -> list[str]:
        kinds = "deployments,services,scaledobjects,triggerauthentications,hpa,pods,replicasets"
        result = self.stack.kubectl("-n", self.namespace, "get", kinds, "-l",
                                    f"session-manager/session={session_id}", "-o", "name")
        hpa = self.stack.kubectl("-n", self.namespace, "get", "hpa",
                                 f"keda-hpa-session-{session_id}", "-o", "name", check=False)
        return result.stdout.split() + hpa.stdout.split()


@pytest.fixture
def view(local_cluster, namespace: str) -> ClusterView:
    return ClusterView(local_cluster, namespace)

