"""The product installed the way the deploy guide says (docs/deploy.md): the release namespace
made with the restricted Pod Security Standard, then `helm install` of charts/session-manager
with a values file; the chart generates the API key, the Redis password and the push scaler's
certificates. Used by `make e2e` (devcluster/e2e.py) on either cluster.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import yaml

from . import chart, paths
from .paths import LocalServiceError

RELEASE = chart.RELEASE
NAMESPACE = chart.NAMESPACE
SESSIONS_NAMESPACE = "sessions"
E2E_VALUES = paths.REPO_ROOT / "e2e" / "values.yaml"
ROLLOUTS = ("redis", "session-manager", "session-manager-worker")


class Cluster(Protocol):
    kubeconfig: Path

    def kubectl(self, *args: str, check: bool = True,
                input_text: str | None = None) -> subprocess.CompletedProcess: ...


def helm(cluster: Cluster, *args: str) -> str:
    result = subprocess.run([paths.helm(), f"--kubeconfig={cluster.kubeconfig}", *args],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LocalServiceError(f"helm {' '.join(args[:3])} failed: {result.stderr.strip()}")
    return result.stdout


def install(cluster: Cluster, values: Path = E2E_VALUES,
            set_values: Mapping[str, str] | None = None) -> None:
    """Namespace, `helm install`, the rollouts."""
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl("label", "namespace", NAMESPACE,
                    "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
    extra = [arg for key, value in (set_values or {}).items()
             for arg in ("--set", f"{key}={value}")]
    helm(cluster, "install", RELEASE, str(chart.CHART), "--namespace", NAMESPACE,
         "--values", str(values), *extra)
    for deployment in ROLLOUTS:
        cluster.kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{deployment}",
                        "--timeout=300s")


def api_key(cluster: Cluster) -> str:
    """The first key of the Secret the chart generated (as NOTES.txt says to read it)."""
    data = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "secret",
                                      f"{RELEASE}-api-keys", "-o", "json").stdout)["data"]
    return base64.b64decode(data["keys"]).decode().split(",")[0]


def api_url(cluster: Cluster) -> str:
    """The API Service's ClusterIP: reached from the host through kube-proxy (the local
    cluster's node is the host; kind's, through the routes devcluster.kind adds)."""
    service = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "service", RELEASE,
                                         "-o", "json").stdout)
    port = service["spec"]["ports"][0]["port"]
    return f"http://{service['spec']['clusterIP']}:{port}"


def timings(values: Path = E2E_VALUES) -> dict[str, str]:
    """The lifecycle timings the release runs with, for the suite's bounds."""
    config = yaml.safe_load(values.read_text())["config"]
    return {key: str(config[key]) for key in ("IDLE_TIMEOUT", "KEDA_COOLDOWN_PERIOD",
                                              "KEDA_POLLING_INTERVAL")}


def save_logs(cluster: Cluster, logs: Path) -> None:
    """Objects, events and every pod's log of the namespaces that matter."""
    logs.mkdir(parents=True, exist_ok=True)
    for name, args in (("objects", ["get", "all,scaledobjects,triggerauthentications,"
                                           "networkpolicies,pvc,pv", "-A", "-o", "wide"]),
                       ("events", ["get", "events", "-A", "--sort-by=.lastTimestamp"]),
                       ("helm-values", None)):
        if args is None:
            text = _helm_values(cluster)
        else:
            result = cluster.kubectl(*args, check=False)
            text = result.stdout + result.stderr
        (logs / f"{name}.txt").write_text(text)
    for namespace in (NAMESPACE, SESSIONS_NAMESPACE, "keda", "kube-system"):
        pods = cluster.kubectl("-n", namespace, "get", "pods", "-o", "name", check=False)
        for pod in pods.stdout.split():
            result = cluster.kubectl("-n", namespace, "logs", pod, "--all-containers",
                                     "--prefix", check=False)
            (logs / f"{namespace}-{pod.split('/')[-1]}.log").write_text(
                result.stdout + result.stderr)


def _helm_values(cluster: Cluster) -> str:
    try:
        return helm(cluster, "get", "values", RELEASE, "--namespace", NAMESPACE, "--all")
    except LocalServiceError as err:
        return str(err)
