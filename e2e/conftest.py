"""e2e fixtures: the deployed service (over HTTP), the cluster it runs in (over kubectl) and
its Helm release (over helm).

`make e2e` (devcluster/e2e.py) sets the environment after `helm install` on kind or the local
cluster:
  E2E_BASE_URL, E2E_API_KEY          where the API answers and a key it accepts
  E2E_NAMESPACE                      the sessions namespace (default "sessions")
  E2E_CONTROL_NAMESPACE              the release's namespace (default "session-manager")
  E2E_RELEASE                        the Helm release (default "session-manager")
  E2E_IDLE_TIMEOUT, E2E_KEDA_COOLDOWN_PERIOD, E2E_KEDA_POLLING_INTERVAL
                                     the timings the service was deployed with (seconds)
  E2E_NETWORKPOLICY_ENFORCED         "0" where the cluster's CNI ignores NetworkPolicies
Without E2E_BASE_URL every test here is skipped with one reason. kubectl and helm use
KUBECONFIG and come first on PATH.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devcluster.processes import wait_until

SKIP_REASON = (
    "e2e: E2E_BASE_URL is not set; run `make e2e`, which installs the chart on kind (or the "
    "local cluster) and sets it"
)
# Per test: the lifecycle steps wait for KEDA and pod starts, beyond the unit-test timeout.
TEST_TIMEOUT_SECONDS = 600
HERE = Path(__file__).resolve().parent
CHART = HERE.parent / "charts" / "session-manager"
LATENCIES = pytest.StashKey[list[tuple[str, float]]]()


@dataclasses.dataclass(frozen=True)
class Deployment:
    base_url: str
    api_key: str
    namespace: str
    control_namespace: str
    release: str
    idle_timeout_seconds: int
    keda_cooldown_period_seconds: int
    keda_polling_interval_seconds: int


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "incremental: steps of one scenario; after a failure the rest xfail"
    )
    config.stash[LATENCIES] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if HERE in item.path.parents]
    if not os.environ.get("E2E_BASE_URL"):
        for item in ours:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
        return
    if config.pluginmanager.hasplugin("timeout"):
        for item in ours:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_SECONDS))


# Incremental scenarios (pytest docs, "incremental testing - test steps"): once a step fails,
# the later steps of the same class report xfail instead of failing for the same cause.
_failed_step: dict[str, str] = {}


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    # A step that skips or xfails on purpose (e.g. isolation this CNI cannot enforce) is not
    # a failure of the scenario.
    failed = call.excinfo is not None and not call.excinfo.errisinstance(
        (pytest.skip.Exception, pytest.xfail.Exception))
    if failed and "incremental" in item.keywords:
        _failed_step.setdefault(item.parent.nodeid, item.name)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "incremental" in item.keywords and item.parent.nodeid in _failed_step:
        pytest.xfail(f"an earlier step failed: {_failed_step[item.parent.nodeid]}")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    latencies = config.stash.get(LATENCIES, [])
    if latencies:
        terminalreporter.section("e2e latencies")
        for label, seconds in latencies:
            terminalreporter.write_line(f"{label}: {seconds:.1f} s")


@pytest.fixture(scope="session")
def deployment() -> Deployment:
    api_key = os.environ.get("E2E_API_KEY", "")
    if not api_key:
        pytest.fail("E2E_API_KEY is not set (make e2e sets it with E2E_BASE_URL)")
    return Deployment(
        base_url=os.environ["E2E_BASE_URL"].rstrip("/"),
        api_key=api_key,
        namespace=os.environ.get("E2E_NAMESPACE", "sessions"),
        control_namespace=os.environ.get("E2E_CONTROL_NAMESPACE", "session-manager"),
        release=os.environ.get("E2E_RELEASE", "session-manager"),
        idle_timeout_seconds=int(os.environ.get("E2E_IDLE_TIMEOUT", "40")),
        keda_cooldown_period_seconds=int(os.environ.get("E2E_KEDA_COOLDOWN_PERIOD", "10")),
        keda_polling_interval_seconds=int(os.environ.get("E2E_KEDA_POLLING_INTERVAL", "2")),
    )


class Api:
    """The REST API, authenticated with the API key unless told otherwise."""

    def __init__(self, deployment: Deployment) -> None:
        self.base_url = deployment.base_url
        self.http = requests.Session()
        self.http.headers["X-API-Key"] = deployment.api_key

    def request(self, method: str, path: str, *, auth: bool = True,
                **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        if auth:
            return self.http.request(method, self.base_url + path, **kwargs)
        return requests.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:
        self.http.close()


class Kubectl:
    """kubectl against the e2e cluster (KUBECONFIG), in the sessions namespace by default."""

    # What the control plane labels a session's objects with.
    SESSION_SELECTOR = "app.kubernetes.io/managed-by=session-manager,session-manager/session={}"
    # The chart's API and worker pods.
    API_SELECTOR = "app.kubernetes.io/name=session-manager,app.kubernetes.io/component=api"
    WORKER_SELECTOR = "app.kubernetes.io/name=session-manager,app.kubernetes.io/component=worker"

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def run(self, *args: str, namespace: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = ["kubectl", "--namespace", namespace or self.namespace, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        return result

    def items(self, resource: str, selector: str, **kwargs: Any) -> list[dict[str, Any]]:
        output = self.run("get", resource, "--selector", selector, "--output", "json",
                          **kwargs).stdout
        return json.loads(output)["items"]

    def session_items(self, resource: str, session_id: str) -> list[dict[str, Any]]:
        """The session's objects of `resource` that the control plane made."""
        return self.items(resource, self.SESSION_SELECTOR.format(session_id))

    def ready_pod(self, session_id: str) -> dict[str, Any] | None:
        """The session's pod that is Ready and not terminating, if there is one."""
        for pod in self.session_items("pods", session_id):
            if not pod["metadata"].get("deletionTimestamp") and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in pod["status"].get("conditions") or []):
                return pod
        return None


class Release:
    """The Helm release, changed the way an operator changes it."""

    def __init__(self, deployment: Deployment, kubectl: Kubectl) -> None:
        self.deployment = deployment
        self.kubectl = kubectl

    def upgrade(self, **config: str) -> None:
        """`helm upgrade --reuse-values` with changed settings (the chart's `config`), then
        the API's and the worker's rollouts to their end."""
        sets = [f"--set=config.{name}={value}" for name, value in config.items()]
        namespace = self.deployment.control_namespace
        result = subprocess.run(["helm", "upgrade", self.deployment.release, str(CHART),
                                 "--namespace", namespace, "--reuse-values", *sets],
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, f"helm upgrade failed: {result.stderr}"
        for name in (self.deployment.release, f"{self.deployment.release}-worker"):
            self.kubectl.run("rollout", "status", f"deployment/{name}", "--timeout=300s",
                             namespace=namespace, timeout=320)
        # The roll is over when the old pods are gone, not only replaced (they drain first).
        wait_until(lambda: not any(
            pod["metadata"].get("deletionTimestamp")
            for selector in (Kubectl.API_SELECTOR, Kubectl.WORKER_SELECTOR)
            for pod in self.kubectl.items("pods", selector, namespace=namespace)),
            timeout=120, interval=1.0, what="the old API and worker pods gone")

    def setting_in_pods(self, selector: str, name: str) -> dict[str, str]:
        """What each live pod of `selector` has in its environment for `name`."""
        namespace = self.deployment.control_namespace
        found = {}
        for pod in self.kubectl.items("pods", selector, namespace=namespace):
            if pod["metadata"].get("deletionTimestamp"):
                continue
            result = self.kubectl.run(
                "exec", pod["metadata"]["name"], "--", "python3", "-c",
                f"import os; print(os.environ.get({name!r}, ''))", namespace=namespace)
            found[pod["metadata"]["name"]] = result.stdout.strip()
        return found


@pytest.fixture(scope="session")
def release(deployment: Deployment, kubectl: Kubectl) -> Release:
    return Release(deployment, kubectl)


@pytest.fixture(scope="session")
def api(deployment: Deployment) -> Iterator[Api]:
    client = Api(deployment)
    yield client
    client.close()


@pytest.fixture(scope="session")
def kubectl(deployment: Deployment) -> Kubectl:
    return Kubectl(deployment.namespace)


@pytest.fixture
def running_session(api: Api, kubectl: Kubectl) -> Iterator[Any]:
    """running_session(user): a new session whose pod is Ready; deleted after the test."""
    made: list[str] = []

    def make(user: str) -> str:
        response = api.post("/session/create", json={"user_id": user})
        assert response.status_code == 201, response.text
        session_id = response.json()["uuid"]
        made.append(session_id)
        wait_until(lambda: kubectl.ready_pod(session_id), timeout=120, interval=1.0,
                   what=f"session {session_id}'s pod Ready")
        return session_id

    yield make
    for session_id in made:
        api.delete(f"/session/{session_id}")


@pytest.fixture
def record_latency(request: pytest.FixtureRequest) -> Any:
    """record_latency(label, seconds): printed in the summary at the end of the run."""

    def record(label: str, seconds: float) -> None:
        request.config.stash[LATENCIES].append((label, seconds))

    return record
