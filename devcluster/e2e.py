"""`make e2e`: the product installed with Helm on a real cluster, then pytest e2e/ against it.

One driver, two clusters, the same suite:
  - kind, whenever Docker can run here: an engine that answers (GitHub's runners, a
    contributor's machine), or, as root with Debian's docker.io, an engine of our own (this
    machine; no registry: the node image is built here by scripts/build-kind.sh);
  - else the local cluster (devcluster.cluster: a real kubelet and containerd, no Docker),
    saying why in one line;
  - else nothing: one line saying why, exit 0.
E2E_CLUSTER=kind|local picks one (and fails if it cannot run). Then on either: KEDA in-cluster
from the binaries built here, both product images and a Redis image in the node (nothing is
pulled by the cluster), `helm install` with e2e/values.yaml (devcluster.release), pytest e2e/
against the API Service's ClusterIP from the host, the egress guard's counters asserted 0 (a
packet counted fails the run), logs to e2e/logs/<cluster>/, and the cluster deleted, whatever
happened. KEEP_CLUSTER=1 keeps it up after the suite until Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from . import paths, release
from .chart import ChartError
from .paths import LocalServiceError


def log(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def choose() -> tuple[str | None, str]:
    """("kind" | "local" | None, why not kind / why neither)."""
    from .cluster import missing_requirements as local_missing
    from .kind import missing_requirements as kind_missing

    wanted = os.environ.get("E2E_CLUSTER", "")
    kind = kind_missing()
    if wanted == "kind" or (not kind and wanted != "local"):
        return "kind", ""
    local = local_missing()
    if wanted == "local" or not local:
        return "local", "; ".join(kind) if kind else "E2E_CLUSTER=local"
    return None, f"kind: {'; '.join(kind)}; local cluster: {'; '.join(local)}"


class Run:
    """One e2e run on one cluster; `steps` records how long each part took."""

    def __init__(self, which: str) -> None:
        self.which = which
        self.steps: dict[str, float] = {}
        self.started = False
        if which == "kind":
            from .kind import KindCluster

            self.cluster = KindCluster()
            self.name = self.cluster.name
        else:
            from .cluster import LocalCluster

            self.cluster = LocalCluster(addons=True)
            self.name = f"local-{time.strftime('%Y%m%d-%H%M%S')}"
        self.logs = paths.REPO_ROOT / "e2e" / "logs" / self.name

    def step(self, what: str, fn):
        log(f"{what}...")
        began = time.monotonic()
        result = fn()
        self.steps[what] = time.monotonic() - began
        return result

    def deploy(self) -> dict[str, str]:
        """Cluster up, addons, the release; the suite's environment."""
        self.step(f"{self.which} cluster up", self.cluster.start)
        self.started = True
        set_values: dict[str, str] = {}
        if self.which == "kind":
            from .kind import addons

            self.step("cluster DNS without upstream", lambda: addons.cluster_dns_only(
                self.cluster))
            set_values = self.step("images into the node", lambda: addons.load_images(
                self.cluster))
            self.step("KEDA in-cluster", lambda: addons.install_keda(self.cluster))
        self.step("helm install", lambda: release.install(self.cluster,
                                                          set_values=set_values))
        timings = release.timings()
        return {
            "E2E_BASE_URL": release.api_url(self.cluster),
            "E2E_API_KEY": release.api_key(self.cluster),
            "E2E_NAMESPACE": release.SESSIONS_NAMESPACE,
            "E2E_CONTROL_NAMESPACE": release.NAMESPACE,
            "E2E_RELEASE": release.RELEASE,
            "E2E_IDLE_TIMEOUT": timings["IDLE_TIMEOUT"],
            "E2E_KEDA_COOLDOWN_PERIOD": timings["KEDA_COOLDOWN_PERIOD"],
            "E2E_KEDA_POLLING_INTERVAL": timings["KEDA_POLLING_INTERVAL"],
            # kind's CNI enforces NetworkPolicies (kube-network-policies, or kindnetd upstream);
            # the local cluster's Debian bridge plugin ignores them.
            "E2E_NETWORKPOLICY_ENFORCED": "1" if self.which == "kind" else "0",
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "PATH": f"{paths.BIN_DIR}:{os.environ.get('PATH', '')}",
        }

    def suite(self, env: dict[str, str], pytest_args: list[str]) -> int:
        log(f"pytest e2e/ against {env['E2E_BASE_URL']}")
        return self.step("pytest e2e/", lambda: subprocess.run(
            [sys.executable, "-m", "pytest", "e2e/", "-v", "-p", "no:cacheprovider",
             *pytest_args], cwd=paths.REPO_ROOT, env={**os.environ, **env},
            check=False).returncode)

    def guard_failure(self, when: str) -> str | None:
        counts = (self.cluster.final_counts if when == "teardown" and self.which == "kind"
                  else self.cluster.guard.counts())
        if counts is None:
            return None
        log(f"egress guard at {when}: {counts.output_rejected} packets rejected leaving our "
            f"daemons, {counts.forward_dropped} dropped leaving the cluster")
        return None if counts.total == 0 else f"the egress guard counted {counts} at {when}"

    def owns_cluster(self) -> bool:
        """Whether stop() and logs are ours to run: the local cluster cleans up after its own
        failed start (and must not touch a stack whose lock it did not get); a kind cluster
        tears down what it made of a failed start, once its logs are saved."""
        return self.started or self.which == "kind"

    def save_logs(self) -> None:
        if self.started:
            try:
                release.save_logs(self.cluster, self.logs)
            except (LocalServiceError, OSError) as err:
                log(f"could not save every log: {err}")
        self.cluster.save_logs(self.logs / "cluster")


def _interrupt(*_: object) -> None:
    """SIGTERM (a CI job cancelled) tears down as Ctrl-C does."""
    raise KeyboardInterrupt


def run_e2e(pytest_args: list[str]) -> int:
    which, why = choose()
    if which is None:
        if os.environ.get("REQUIRE_FULL_STACK") == "1":  # CI: a layer that cannot run fails
            print(f"e2e: FAILED — neither kind nor the local cluster can run here ({why})")
            return 1
        print(f"e2e: skipped — neither kind nor the local cluster can run here ({why})")
        return 0
    if which == "local":
        print(f"e2e: kind cannot run here ({why}): running on the local cluster")
    signal.signal(signal.SIGTERM, _interrupt)
    began = time.monotonic()
    run = Run(which)
    status, failures = 1, []
    try:
        env = run.deploy()
        status = run.suite(env, pytest_args)
        failure = run.guard_failure("the end of the suite")
        if failure:
            failures.append(failure)
        if os.environ.get("KEEP_CLUSTER") == "1":
            log(f"KEEP_CLUSTER=1: the cluster stays up; KUBECONFIG={env['KUBECONFIG']} "
                f"E2E_BASE_URL={env['E2E_BASE_URL']}; Ctrl-C to tear it down")
            threading.Event().wait()
    except (LocalServiceError, ChartError) as err:
        failures.append(str(err))
    except KeyboardInterrupt:
        failures.append("interrupted")
    finally:
        if run.owns_cluster():
            run.step("logs", run.save_logs)
            run.step("teardown", run.cluster.stop)
        if which == "kind":
            failure = run.guard_failure("teardown")
            if failure:
                failures.append(failure)
    for failure in failures:
        log(f"FAILED: {failure}")
    status = status or (1 if failures else 0)
    steps = ", ".join(f"{what} {seconds:.0f}s" for what, seconds in run.steps.items())
    log(f"{'passed' if status == 0 else f'FAILED ({status})'} on {which} in "
        f"{time.monotonic() - began:.0f}s ({steps}); logs in "
        f"{run.logs.relative_to(paths.REPO_ROOT)}")
    return status

