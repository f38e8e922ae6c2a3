"""Fixtures: the real parts (redis-server, etcd + kube-apiserver, the demo agent, API and worker
processes) and the helpers tests use on them.

One API server and one Redis per test session; each test gets its own namespace and a
flushed Redis. A missing binary is an error, never a skip: these layers are the point.
tests/cluster/conftest.py puts the same fixtures on a real cluster.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import settings as hypothesis_settings

from devcluster import apiserver as local
from devcluster import paths
from devcluster.processes import Daemon, Spawner
from service import store as store_module
from service.core.config import REPO_ROOT, Settings
from service.kube import ClusterSetup, Kube, load_api_client
from service.sessions import release_all
from service.worker import Worker

from . import service_processes, worker_threads
from .browser import guarded_browser
from .constants import API_KEY
from .service_processes import DemoAgent, start_api, start_worker
from .session_api import SessionApi
from .tcpproxy import TcpProxy

# Hypothesis keeps no example database in the work tree: the runs are derandomized, so a
# failure is found again by the same run.
hypothesis_settings.register_profile("repo", database=None)
hypothesis_settings.load_profile("repo")


def pytest_configure(config: pytest.Config) -> None:
    # A run stopped with SIGTERM (`timeout`, CI cancelling) unwinds like ^C: pytest then runs
    # the fixtures' teardown, so the processes and the local stack they started are stopped
    # rather than left running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

_namespaces = itertools.count(1)


# -- the real parts, once per test session ------------------------------------------------

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
    # The apps' notice listeners are daemon threads subscribed to this Redis: stop them first,
    # or they log its disappearance after pytest has closed its output.
    release_all()
    server.stop()


# -- each test's installation -------------------------------------------------------------

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
    if redis_server.daemon is None:
        redis_server.start()  # a previous test stopped it
    client = store_module.Store.from_url(
        settings.redis_url, socket_timeout_seconds=2,
        session_ttl_seconds=settings.session_ttl_seconds,
        activity_ttl_seconds=settings.activity_ttl_seconds,
    )
    client.redis.flushall()
    yield client
    client.redis.close()


# -- processes: the demo agent, API and worker processes ----------------------------------

@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Spawner]:
    """Starts the test's processes, each logging to tmp_path/<name>.log; what is still
    running at the end is stopped."""
    spawner = Spawner(tmp_path, cwd=REPO_ROOT)
    yield spawner
    spawner.stop_all()


@pytest.fixture
def make_agent(processes: Spawner, tmp_path: Path):
    """make_agent(delay_seconds=, stream=, stream_delay_seconds=): a demo agent, not started
    yet (its port is chosen: `.url`); `.start()` starts it, again after `.kill()`."""
    agents = itertools.count()
    return lambda **options: DemoAgent(processes, f"agent-{next(agents)}", tmp_path, **options)


@pytest.fixture
def demo_agent(make_agent) -> DemoAgent:
    return make_agent().start()


@pytest.fixture
def api_process(processes: Spawner, apiserver: local.KubeApiServer):
    """api_process(settings, **env): `python -m service serve` on a free loopback port, once
    it answers; stopped (SIGTERM) at the end."""
    started: list[Daemon] = []

    def start(settings: Settings, **env: str) -> Daemon:
        started.append(start_api(processes, f"api-{len(started)}", settings,
                                 apiserver.kubeconfig, **env))
        return started[-1]

    yield start
    for api in started:
        api.stop()


@pytest.fixture
def worker_process(processes: Spawner, apiserver: local.KubeApiServer, scaler_certs: Path,
                   store):
    """worker_process(settings, name, **env): `python -m service worker`, killed at the end.
    `store` empties Redis first, as a worker refuses a database that serves another
    namespace (an earlier test's)."""
    started: list[Daemon] = []

    def start(settings: Settings, name: str, **env: str) -> Daemon:
        started.append(start_worker(processes, f"worker-{name}", settings,
                                    apiserver.kubeconfig, scaler_certs, **env))
        return started[-1]

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def logged_deliveries():
    """logged_deliveries(worker): how many deliveries a worker process's log reports."""
    return service_processes.logged_deliveries


# -- in-process: the API, workers, and the cluster's part ---------------------------------

@pytest.fixture
def make_api(kube: Kube):
    """make_api(settings, kube=): the REST API in-process (tests/session_api.py)."""
    apis: list[SessionApi] = []

    def make(settings: Settings, kube: Kube = kube) -> SessionApi:
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


@pytest.fixture
def running_worker():
    """`with running_worker(worker):` runs `worker.run` (delivery loop + leader roles) in a
    thread for the block."""
    return worker_threads.running


@pytest.fixture
def status_watch():
    """`with status_watch(worker):` runs the worker's real Deployment + Pod watch (the status
    tracker) in a thread for the block."""
    return worker_threads.watching_status


@pytest.fixture
def mark_ready(kube: Kube):
    """mark_ready(session_id, ready=1, replicas=1): nothing runs controllers here, so write
    the Deployment status a kubelet + controller would."""
    from kubernetes import client as k8s  # tests may use the client to play the cluster

    apps = k8s.AppsV1Api(kube.api_client)

    def mark(session_id: str, ready: int = 1, replicas: int = 1) -> None:
        name = f"session-{session_id}"
        apps.patch_namespaced_deployment_scale(name, kube.namespace,
                                               {"spec": {"replicas": replicas}})
        apps.patch_namespaced_deployment_status(
            name, kube.namespace,
            {"status": {"replicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
                        "updatedReplicas": replicas}},
        )

    return mark


@pytest.fixture
def apiserver_proxy(apiserver: local.KubeApiServer) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the API server (tests/tcpproxy.py): forward, go silent, refuse."""
    proxy = TcpProxy(apiserver.port)
    yield proxy
    proxy.close()


@pytest.fixture
def kube_through(apiserver: local.KubeApiServer, namespace: str):
    """kube_through(proxy): a client whose kubeconfig names a TcpProxy in front of the API
    server (on 127.0.0.1 too, which the cert names): faults of the path to the real server."""
    def through(proxy: TcpProxy) -> Kube:
        config = yaml.safe_load(Path(apiserver.kubeconfig).read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
        path = Path(apiserver.kubeconfig).with_name(f"kubeconfig-proxy-{proxy.port}")
        path.write_text(yaml.safe_dump(config))
        return Kube(load_api_client(str(path)), namespace, request_timeout_seconds=3)

    return through


# -- the browser --------------------------------------------------------------------------

@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    """A headless Chromium (Selenium WebDriver) with a throwaway profile under tmp_path, in
    the egress guard's cgroup (tests/browser.py); the guard must have stopped nothing by the
    end. The page's console log is printed at teardown (pytest shows it when the test
    failed); chromedriver's log is tmp_path/chromedriver.log."""
    with guarded_browser(tmp_path) as driver:
        yield driver
