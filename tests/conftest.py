"""Fixtures starting the real parts: redis-server, etcd + kube-apiserver, the demo agent.

One API server and one Redis per test session; each test gets its own namespace and a
flushed Redis. A missing binary is an error, never a skip: these layers are the point.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from hypothesis import settings as hypothesis_settings

from devcluster import apiserver as local
from devcluster import paths
from service import store as store_module
from service.core.config import REPO_ROOT, Settings
from service.http import create_app
from service.kube import ClusterSetup, Kube, load_api_client
from service.worker import Worker

# Hypothesis keeps no example database in the work tree: the runs are derandomized, so a
# failure is found again by the same run.
hypothesis_settings.register_profile("repo", database=None)
hypothesis_settings.load_profile("repo")

API_KEY = "test-api-key-0123456789abcdef"
_namespaces = itertools.count(1)


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> local.KubeApiServer:
    server = local.KubeApiServer(tmp_path_factory.mktemp("apiserver")).start()
    try:
        admin = Kube(load_api_client(str(server.kubeconfig)), "default")
        ClusterSetup(admin).install_crds(paths.keda_crds())
        admin.close()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def scaler_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The push scaler's mutual TLS, made the way a deployment makes it: `server/` for the
    worker (SCALER_TLS_DIR), `client/` for KEDA or a test's gRPC client."""
    out = tmp_path_factory.mktemp("scaler-certs")
    subprocess.run([str(REPO_ROOT / "scripts" / "scaler-certs.sh"), str(out), "127.0.0.1",
                    "localhost"], check=True)
    return out


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> local.RedisServer:
    server = local.RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def namespace(apiserver: local.KubeApiServer) -> str:
    name = f"t{os.getpid()}-{next(_namespaces)}"
    admin = Kube(load_api_client(str(apiserver.kubeconfig)), name)
    ClusterSetup(admin).ensure_namespace(name)
    admin.close()
    return name


@pytest.fixture
def kube(apiserver: local.KubeApiServer, namespace: str) -> Kube:
    client = Kube(load_api_client(str(apiserver.kubeconfig)), namespace)
    yield client
    client.close()


@pytest.fixture
def settings(namespace: str, redis_server: local.RedisServer) -> Settings:
    return Settings(
        api_keys=(API_KEY,),
        namespace=namespace,
        redis_url=redis_server.url,
        pod_url_template="http://127.0.0.1:1/unused",
    )


@pytest.fixture
def store(settings: Settings, redis_server: local.RedisServer) -> store_module.Store:
    if redis_server.process is None:
        redis_server.start()  # a previous test stopped it
    client = store_module.Store.from_url(
        settings.redis_url, socket_timeout_seconds=2,
        session_ttl_seconds=settings.session_ttl_seconds,
        activity_ttl_seconds=settings.activity_ttl_seconds,
    )
    client.redis.flushall()
    yield client
    client.redis.close()


class DemoAgent:
    """The repo's demo agent as a real process on a random loopback port."""

    def __init__(self, workdir: Path, *, delay_seconds: float = 0, stream: bool = False,
                 stream_delay_seconds: float = 0.05) -> None:
        self.port = local.free_port()
        self.state_file = workdir / "agent-state.json"
        self.delay_seconds = delay_seconds
        self.stream = stream
        self.stream_delay_seconds = stream_delay_seconds
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DemoAgent:
        env = {**os.environ, "PORT": str(self.port), "AGENT_HOST": "127.0.0.1",
               "AGENT_STATE_FILE": str(self.state_file),
               "AGENT_DELAY_SECONDS": str(self.delay_seconds),
               "AGENT_STREAM": "1" if self.stream else "",
               "AGENT_STREAM_DELAY_SECONDS": str(self.stream_delay_seconds)}
        self.process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "demo_agent" / "agent.py")], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=0.5).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("demo agent did not start")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def deliveries(self) -> list[dict]:
        return requests.get(f"{self.url}/deliveries", timeout=5).json()["deliveries"]


@pytest.fixture
def demo_agent(tmp_path: Path) -> DemoAgent:
    agent = DemoAgent(tmp_path).start()
    yield agent
    agent.kill()


@pytest.fixture
def make_agent(tmp_path: Path):
    agents: list[DemoAgent] = []

    def make(**kwargs) -> DemoAgent:
        agent = DemoAgent(tmp_path, **kwargs)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.kill()


def mark_deployment_ready(kube: Kube, session_id: str, ready: int = 1, replicas: int = 1) -> None:
    """Nothing runs controllers here: write the status a kubelet + controller would."""
    from kubernetes import client as k8s  # tests may use the client to play the cluster

    apps = k8s.AppsV1Api(kube.api_client)
    name = f"session-{session_id}"
    apps.patch_namespaced_deployment_scale(name, kube.namespace, {"spec": {"replicas": replicas}})
    apps.patch_namespaced_deployment_status(
        name, kube.namespace,
        {"status": {"replicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
                    "updatedReplicas": replicas}},
    )


def kube_through(proxy, apiserver, namespace: str) -> Kube:
    """A client whose kubeconfig names a TcpProxy in front of the API server (on 127.0.0.1
    too, which the cert names): faults of the path to the real server."""
    config = yaml.safe_load(Path(apiserver.kubeconfig).read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path = Path(apiserver.kubeconfig).with_name(f"kubeconfig-proxy-{proxy.port}")
    path.write_text(yaml.safe_dump(config))
    return Kube(load_api_client(str(path)), namespace, request_timeout_seconds=3)


def wait_for(predicate, *, timeout: float = 10, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class SessionApi:
    """The REST API in-process (Flask's test client), called with the API key."""

    def __init__(self, settings: Settings, kube: Kube) -> None:
        self.app = create_app(settings, kube=kube)
        self.client = self.app.test_client()
        self.headers = {"X-API-Key": API_KEY}

    def create(self, user_id: str = "user-1") -> str:
        response = self.client.post("/session/create", json={"user_id": user_id},
                                    headers=self.headers)
        assert response.status_code == 201, response.get_json()
        return response.get_json()["uuid"]

    def chat(self, session_id: str, message: str,
             message_id: str | None = None) -> tuple[int, dict]:
        body = {"message": message}
        if message_id is not None:
            body["message_id"] = message_id
        response = self.client.post(f"/session/{session_id}/chat", json=body,
                                    headers=self.headers)
        return response.status_code, response.get_json()

    def messages(self, session_id: str) -> list[dict]:
        response = self.client.get(f"/session/{session_id}/messages?limit=500",
                                   headers=self.headers)
        assert response.status_code == 200, response.get_json()
        return response.get_json()["messages"]

    def status(self, session_id: str) -> dict:
        response = self.client.get(f"/session/{session_id}/status", headers=self.headers)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def close(self) -> None:
        self.app.extensions["session_manager"].store.redis.close()


@pytest.fixture
def make_api(kube: Kube):
    apis: list[SessionApi] = []

    def make(settings: Settings) -> SessionApi:
        apis.append(SessionApi(settings, kube))
        return apis[-1]

    yield make
    for api in apis:
        api.close()


@pytest.fixture
def make_worker(kube: Kube, store: store_module.Store):
    """An in-process Worker; its watches end every second so a stopped term ends quickly."""
    workers: list[Worker] = []

    def make(settings: Settings) -> Worker:
        workers.append(Worker(settings, store, kube, watch_timeout_seconds=1))
        return workers[-1]

    yield make
    for worker in workers:
        worker.delivery_pool.shutdown(wait=True, cancel_futures=True)


class ApiProcess:
    """`python -m service serve` (gunicorn, as the image runs it) on a free loopback port."""

    def __init__(self, settings: Settings, kubeconfig: Path, log_file: Path, **env: str) -> None:
        self.port = local.free_port()
        self.log_file = log_file
        self.env = {
            **os.environ, "REDIS_URL": settings.redis_url, "NAMESPACE": settings.namespace,
            "KUBECONFIG": str(kubeconfig), "API_KEYS": API_KEY, "PORT": str(self.port),
            "BIND_ADDRESS": "127.0.0.1", "POD_URL_TEMPLATE": settings.pod_url_template,
            "WEB_CONCURRENCY": "1", "LOG_LEVEL": "WARNING", **env,
        }
        with open(log_file, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "service", "serve"],
                                            env=self.env, cwd=REPO_ROOT, stdout=log,
                                            stderr=subprocess.STDOUT)
        try:
            wait_for(self._answers, timeout=30, interval=0.1, what="the API process")
        except AssertionError:
            self.stop()
            raise AssertionError("the API did not start:\n"
                                 + log_file.read_text()[-3000:]) from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError("the API exited:\n" + self.log_file.read_text()[-3000:])
        try:
            return requests.get(f"{self.url}/livez", timeout=1).ok
        except (requests.ConnectionError, requests.Timeout):
            return False  # not listening yet, or listening while its worker still boots

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def api_process(apiserver: local.KubeApiServer, tmp_path: Path):
    started: list[ApiProcess] = []

    def start(settings: Settings, **env: str) -> ApiProcess:
        started.append(ApiProcess(settings, apiserver.kubeconfig,
                                  tmp_path / f"api-{len(started)}.log", **env))
        return started[-1]

    yield start
    for api in started:
        api.stop()


WORKER_LEASE_SECONDS = 4  # the delivery lease of worker processes


class WorkerProcess:
    """`python -m service worker` as a real process, configured like a deployment would be."""

    def __init__(self, settings: Settings, kubeconfig: Path, log_file: Path,
                 **env: str) -> None:
        self.env = {
            **os.environ, "REDIS_URL": settings.redis_url, "NAMESPACE": settings.namespace,
            "KUBECONFIG": str(kubeconfig), "API_KEYS": API_KEY,
            "POD_URL_TEMPLATE": settings.pod_url_template, "LOG_LEVEL": "INFO",
            # The lease must outlast the pod timeout; WORKER_POLL_INTERVAL_SECONDS stays at its
            # default 0.5 s (the setting refuses less than 1).
            "DELIVERY_LEASE_SECONDS": str(WORKER_LEASE_SECONDS), "POD_TIMEOUT_SECONDS": "3",
            "DELIVERY_BACKOFF_SECONDS": "0.2",
            **env,
        }
        self.log_file = log_file
        with open(log_file, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "service", "worker"],
                                            env=self.env, cwd=REPO_ROOT, stdout=log,
                                            stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        """True while it runs; a worker that exits on its own fails the test with its log."""
        if self.process.poll() is None:
            return True
        raise AssertionError(f"the worker exited ({self.process.returncode}):\n"
                             + self.log_file.read_text()[-3000:])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def stop(self) -> int:
        """SIGTERM, as Kubernetes stops a pod; the worker finishes what it holds and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def delivered(self) -> int:
        lines = self.log_file.read_text().splitlines()
        return sum(1 for line in lines
                   if line.startswith("{") and json.loads(line)["message"] == "message delivered")


@pytest.fixture
def worker_process(apiserver, tmp_path: Path, scaler_certs: Path, store):
    """Worker processes of this test's installation: `store` empties Redis first, as a
    worker refuses a database that serves another namespace (an earlier test's)."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, name: str, **env: str) -> WorkerProcess:
        # Each serves the push scaler and /healthz, as deployed, on ports of its own.
        env = {"SCALER_TLS_DIR": str(scaler_certs / "server"), "SCALER_PORT": "0",
               "WORKER_HEALTH_PORT": "0", **env}
        started.append(WorkerProcess(settings, apiserver.kubeconfig,
                                     tmp_path / f"worker-{name}.log", **env))
        return started[-1]

    yield start
    for worker in started:
        worker.kill()


@contextlib.contextmanager
def watching_status(worker: Worker) -> Iterator[None]:
    """Run the worker's real Deployment + Pod watch (the status tracker) for the block."""
    term_over = threading.Event()
    thread = threading.Thread(target=worker.status_watch.run, args=(term_over,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        term_over.set()
        thread.join(10)
        assert not thread.is_alive(), "the status watch did not stop"


@contextlib.contextmanager
def running(worker: Worker) -> Iterator[None]:
    """Run `worker.run` (delivery loop + leader roles) in a thread for the block."""
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive(), "the worker did not stop"


__all__ = [
    "API_KEY",
    "WORKER_LEASE_SECONDS",
    "ApiProcess",
    "DemoAgent",
    "SessionApi",
    "WorkerProcess",
    "kube_through",
    "mark_deployment_ready",
    "running",
    "store_module",
    "wait_for",
    "watching_status",
]
