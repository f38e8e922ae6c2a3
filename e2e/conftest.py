"""e2e fixtures: the deployed service (over HTTP) and the cluster it runs in (over kubectl).

e2e/run.sh sets the environment after deploying to a kind cluster:
  E2E_BASE_URL, E2E_API_KEY          where the API answers and a key it accepts
  E2E_NAMESPACE                      the sessions namespace (default "sessions")
  E2E_CONTROL_NAMESPACE              the control plane's namespace (default "session-manager")
  E2E_IDLE_TIMEOUT, E2E_KEDA_COOLDOWN_PERIOD, E2E_KEDA_POLLING_INTERVAL
                                     the timings the service was deployed with (seconds)
Without E2E_BASE_URL every test here is skipped with one reason. kubectl uses KUBECONFIG.
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

SKIP_REASON = (
    "e2e: E2E_BASE_URL is not set; run `bash e2e/run.sh` (needs Docker and kind), which deploys "
    "to a kind cluster and sets it"
)
# Per test: the lifecycle steps wait for KEDA and pod starts, beyond the unit-test timeout.
TEST_TIMEOUT_SECONDS = 600
HERE = Path(__file__).resolve().parent
LATENCIES = pytest.StashKey[list[tuple[str, float]]]()


@dataclasses.dataclass(frozen=True)
class Deployment:
    base_url: str
    api_key: str
    namespace: str
    control_namespace: str
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
        pytest.fail("E2E_API_KEY is not set (e2e/run.sh sets it with E2E_BASE_URL)")
    return Deployment(
        base_url=os.environ["E2E_BASE_URL"].rstrip("/"),
        api_key=api_key,
        namespace=os.environ.get("E2E_NAMESPACE", "sessions"),
        control_namespace=os.environ.get("E2E_CONTROL_NAMESPACE", "session-manager"),
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


@pytest.fixture(scope="session")
def api(deployment: Deployment) -> Iterator[Api]:
    client = Api(deployment)
    yield client
    client.close()


@pytest.fixture(scope="session")
def kubectl(deployment: Deployment) -> Kubectl:
    return Kubectl(deployment.namespace)


@pytest.fixture
def record_latency(request: pytest.FixtureRequest) -> Any:
    """record_latency(label, seconds): printed in the summary at the end of the run."""

    def record(label: str, seconds: float) -> None:
        request.config.stash[LATENCIES].append((label, seconds))

    return record
