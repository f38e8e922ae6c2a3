"""`make e2e` without kind: k8s-manifests deployed for real onto the local cluster, then e2e/.

The local cluster with its addons (CoreDNS, storage, KEDA in-cluster from its own config), the
images built from the repo's Dockerfiles, random Secrets created in the cluster, then
`kubectl apply -k` of an overlay of k8s-manifests that changes only what this machine needs
(the Redis image, which no registry serves here, and short timings), the rollouts, and pytest
e2e/ against the session-manager Service's ClusterIP (reached from the host through kube-proxy,
i.e. from outside the cluster). Logs of the stack and the pods go to e2e/logs/local-<time>/.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from . import addons, certs, paths
from .cluster import LocalCluster

# Short timings so the lifecycle runs in minutes (as e2e/run.sh sets them for kind).
TIMINGS = {"IDLE_TIMEOUT": "40", "KEDA_COOLDOWN_PERIOD": "10", "KEDA_POLLING_INTERVAL": "2",
           "KEDA_INITIAL_COOLDOWN_PERIOD": "30"}


# The names KEDA dials the worker's push scaler at (SCALER_ADDRESS in the ConfigMap).
SCALER_NAMES = ("session-manager-scaler.session-manager.svc.cluster.local",
                "session-manager-scaler.session-manager.svc")


def log(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def overlay(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    base = os.path.relpath(paths.REPO_ROOT / "k8s-manifests", work)
    patch = [{"op": "add", "path": f"/data/{key}", "value": value}
             for key, value in {**TIMINGS, "LOG_LEVEL": "DEBUG"}.items()]
    redis_name, redis_tag = addons.REDIS_IMAGE.rsplit(":", 1)
    (work / "kustomization.yaml").write_text(json.dumps({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [base],
        "images": [{"name": "redis", "newName": redis_name, "newTag": redis_tag}],
        "patches": [{"target": {"kind": "ConfigMap", "name": "session-manager-config"},
                     "patch": json.dumps(patch)}],
    }, indent=2))
    return work


def deploy(cluster: LocalCluster, work: Path) -> str:
    """Secrets, the manifests, the rollouts; returns an API key."""
    kubectl = cluster.kubectl
    kubectl("apply", "-f", str(paths.REPO_ROOT / "k8s-manifests" / "namespaces.yaml"))
    redis_password, api_key = secrets.token_hex(24), secrets.token_hex(32)
    for namespace in ("session-manager", "sessions"):
        kubectl("-n", namespace, "create", "secret", "generic", "redis-credentials",
                f"--from-literal=password={redis_password}")
    kubectl("-n", "session-manager", "create", "secret", "generic", "api-keys",
            f"--from-literal=keys={api_key}")
    # The push scaler's mutual TLS, as k8s-manifests/README.md makes it.
    tls = certs.scaler_certs(work / "scaler-certs", *SCALER_NAMES)
    kubectl("-n", "session-manager", "create", "secret", "generic", "session-manager-scaler-tls",
            f"--from-file={tls / 'server'}")
    kubectl("-n", "sessions", "create", "secret", "generic", "session-manager-scaler-client",
            f"--from-file={tls / 'client'}")
    log("kubectl apply -k k8s-manifests (overlay: Redis image, short timings)")
    kubectl("apply", "-k", str(overlay(work)))
    for deployment in ("redis", "session-manager", "session-manager-worker"):
        kubectl("-n", "session-manager", "rollout", "status", f"deployment/{deployment}",
                "--timeout=300s")
    return api_key


def save_logs(cluster: LocalCluster, logs: Path) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    cluster.save_logs(logs / "stack")
    for what, args in (("objects", ["get", "all,scaledobjects,triggerauthentications,"
                                           "networkpolicies,pvc,pv", "-A", "-o", "wide"]),
                       ("events", ["get", "events", "-A", "--sort-by=.lastTimestamp"])):
        result = cluster.kubectl(*args, check=False)
        (logs / f"{what}.txt").write_text(result.stdout + result.stderr)
    for namespace in ("session-manager", "keda"):
        pods = cluster.kubectl("-n", namespace, "get", "pods", "-o", "name", check=False)
        for pod in pods.stdout.split():
            result = cluster.kubectl("-n", namespace, "logs", pod, "--all-containers",
                                     check=False)
            (logs / f"{namespace}-{pod.split('/')[-1]}.log").write_text(
                result.stdout + result.stderr)


def run_e2e(pytest_args: list[str]) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = paths.REPO_ROOT / "e2e" / "logs" / f"local-{stamp}"
    work = paths.REPO_ROOT / "e2e" / ".work" / f"local-{stamp}"
    began = time.monotonic()
    cluster = LocalCluster(addons=True).start()
    status = 1
    try:
        api_key = deploy(cluster, work)
        service = json.loads(cluster.kubectl("-n", "session-manager", "get", "service",
                                             "session-manager", "-o", "json").stdout)
        base_url = f"http://{service['spec']['clusterIP']}:80"
        log(f"deployed in {time.monotonic() - began:.0f}s; running pytest e2e/ against "
            f"{base_url}")
        env = {**os.environ, "E2E_BASE_URL": base_url, "E2E_API_KEY": api_key,
               "E2E_NAMESPACE": "sessions", "E2E_CONTROL_NAMESPACE": "session-manager",
               "E2E_IDLE_TIMEOUT": TIMINGS["IDLE_TIMEOUT"],
               "E2E_KEDA_COOLDOWN_PERIOD": TIMINGS["KEDA_COOLDOWN_PERIOD"],
               "E2E_KEDA_POLLING_INTERVAL": TIMINGS["KEDA_POLLING_INTERVAL"],
               # The Debian bridge CNI does not enforce NetworkPolicies.
               "E2E_NETWORKPOLICY_ENFORCED": "0",
               "KUBECONFIG": str(cluster.kubeconfig),
               "PATH": f"{paths.BIN_DIR}:{os.environ.get('PATH', '')}"}
        status = subprocess.run([sys.executable, "-m", "pytest", "e2e/", "-v",
                                 "-p", "no:cacheprovider", *pytest_args],
                                cwd=paths.REPO_ROOT, env=env, check=False).returncode
        counts = cluster.guard.counts()
        if counts.total:
            log(f"egress guard counted traffic leaving the machine: {counts}")
            status = status or 1
    finally:
        save_logs(cluster, logs)
        cluster.stop()
        log(f"{'passed' if status == 0 else f'FAILED ({status})'} in "
            f"{time.monotonic() - began:.0f}s; logs in {logs.relative_to(paths.REPO_ROOT)}")
    return status
