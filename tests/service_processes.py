"""The repo's own programs as real processes, as the `demo_agent`, `make_agent`, `api_process`
and `worker_process` fixtures start them: daemons of devcluster.processes, logs in the test's
directory."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import requests

from devcluster.ports import free_port
from devcluster.processes import Daemon, Spawner, http_ok, wait_until
from service.core.config import REPO_ROOT, Settings

from .constants import API_KEY, WORKER_LEASE_SECONDS

AGENT = str(REPO_ROOT / "demo_agent" / "agent.py")


class DemoAgent:
    """The demo agent, a session pod's stand-in, on a loopback port and with a state file that
    it keeps across a kill and a start (a pod that came back); its port is chosen before it
    first starts."""

    def __init__(self, processes: Spawner, name: str, workdir: Path, *,
                 delay_seconds: float = 0, stream: bool = False,
                 stream_delay_seconds: float = 0.05) -> None:
        self.processes = processes
        self.name = name
        self.port = free_port()
        self.env = {"PORT": str(self.port), "AGENT_HOST": "127.0.0.1",
                    "AGENT_STATE_FILE": str(workdir / "agent-state.json"),
                    "AGENT_DELAY_SECONDS": str(delay_seconds),
                    "AGENT_STREAM": "1" if stream else "",
                    "AGENT_STREAM_DELAY_SECONDS": str(stream_delay_seconds)}
        self.daemon: Daemon | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DemoAgent:
        self.daemon = self.processes.spawn(self.name, [sys.executable, AGENT], env=self.env,
                                           port=self.port, stop_signal=signal.SIGKILL)
        wait_until(lambda: http_ok(f"{self.url}/healthz"), timeout=10, what="the demo agent",
                   daemon=self.daemon)
        return self

    def kill(self) -> None:
        if self.daemon is not None:
            self.daemon.kill()

    def deliveries(self) -> list[dict]:
        return requests.get(f"{self.url}/deliveries", timeout=5).json()["deliveries"]


def _service_env(settings: Settings, kubeconfig: Path) -> dict[str, str]:
    return {"REDIS_URL": settings.redis_url, "NAMESPACE": settings.namespace,
            "KUBECONFIG": str(kubeconfig), "API_KEYS": API_KEY,
            "POD_URL_TEMPLATE": settings.pod_url_template}


def start_api(processes: Spawner, name: str, settings: Settings, kubeconfig: Path,
              **env: str) -> Daemon:
    """`python -m service serve` (gunicorn, as the image runs it) on a free loopback port
    (`.url`), once it answers."""
    port = free_port()
    api = processes.spawn(
        name, [sys.executable, "-m", "service", "serve"], port=port, stop_timeout_seconds=20,
        env={**_service_env(settings, kubeconfig), "PORT": str(port),
             "BIND_ADDRESS": "127.0.0.1", "WEB_CONCURRENCY": "1", "LOG_LEVEL": "WARNING",
             **env})
    wait_until(lambda: http_ok(f"{api.url}/livez"), timeout=30, interval=0.1,
               what="the API process", daemon=api)
    return api


def start_worker(processes: Spawner, name: str, settings: Settings, kubeconfig: Path,
                 scaler_certs: Path, **env: str) -> Daemon:
    """`python -m service worker` as a deployment runs it: `.stop()` is SIGTERM, as
    Kubernetes stops a pod."""
    return processes.spawn(
        name, [sys.executable, "-m", "service", "worker"],
        env={**_service_env(settings, kubeconfig), "LOG_LEVEL": "INFO",
             # The lease must outlast the pod timeout; WORKER_POLL_INTERVAL_SECONDS stays at its
             # default 0.5 s (the setting refuses less than 1).
             "DELIVERY_LEASE_SECONDS": str(WORKER_LEASE_SECONDS), "POD_TIMEOUT_SECONDS": "3",
             "DELIVERY_BACKOFF_SECONDS": "0.2",
             # It serves the push scaler and /healthz, as deployed, on ports of its own.
             "SCALER_TLS_DIR": str(scaler_certs / "server"), "SCALER_PORT": "0",
             "WORKER_HEALTH_PORT": "0", **env})


def logged_deliveries(worker: Daemon) -> int:
    """How many deliveries a worker process's log reports."""
    return sum(1 for line in worker.output().splitlines()
               if line.startswith("{") and json.loads(line)["message"] == "message delivered")
