"""Starting the real parts (Redis, API server, demo agent, gunicorn, workers) and statistics.

Everything binds to 127.0.0.1 on random ports. Processes the bench starts are daemons of
devcluster.processes, each leading its own process group, so stopping one (a gunicorn master
and its workers) ends exactly what it started. Parts start on first use: `--only memory`
needs no API server.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from devcluster import apiserver as local
from devcluster import paths
from devcluster.ports import free_port
from devcluster.processes import Daemon, Spawner, http_ok, wait_until
from service.core import names
from service.core.clock import utc_now
from service.core.config import RATE_LIMITED_ROUTES, REPO_ROOT
from service.core.tokens import hash_token
from service.kube import ClusterSetup, Kube, load_api_client
from service.store import Store
from service.store.keys import INSTALLATION_KEY

SERVICE_NAMESPACE = "bench"
UNLIMITED = "1000000/minute"


# -- statistics ---------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """Linear interpolation between closest ranks; q in 0..100."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    k = (len(ordered) - 1) * q / 100
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def median(values: Iterable[float]) -> float:
    return percentile(values, 50)


def cpu_busy(interval: float = 0.5) -> float:
    """Fraction of all CPUs busy over `interval` (Linux /proc/stat; 0 elsewhere)."""

    def snapshot() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        total, idle = snapshot()
        time.sleep(interval)
        total2, idle2 = snapshot()
    except OSError:
        return 0.0
    return 1 - (idle2 - idle) / max(1, total2 - total)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(*, group: int | None = None, pid: int | None = None) -> float:
    """User + system CPU seconds of one process, or of every process in a process group
    (a gunicorn master and its workers), from /proc."""
    total = 0
    pids = [str(pid)] if pid is not None else [d for d in os.listdir("/proc") if d.isdigit()]
    for entry in pids:
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if group is None or int(fields[2]) == group:
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def settle(*, threshold: float = 0.15, max_seconds: float = 45) -> tuple[float, float]:
    """Wait until the machine is quiet (a freshly started kube-apiserver runs its start-up
    hooks for a while); returns (busy fraction, seconds waited)."""
    started = time.monotonic()
    busy = cpu_busy()
    while busy > threshold and time.monotonic() - started < max_seconds:
        busy = cpu_busy()
    return busy, time.monotonic() - started


# -- HTTP ---------------------------------------------------------------------------------


class Client:
    """One keep-alive HTTP/1.1 connection; returns (status, body, seconds) per request."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.headers = headers or {}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        data = None if body is None else json.dumps(body).encode()
        all_headers = {**self.headers, **(headers or {})}
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                started = time.perf_counter()
                self.conn.request(method, path, body=data, headers=all_headers)
                response = self.conn.getresponse()
                payload = response.read()
                return response.status, payload, time.perf_counter() - started
            except (ConnectionError, http.client.HTTPException):
                # The server closed an idle keep-alive connection: reconnect once.
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, payload, _ = self.request(method, path, body)
        if status != expect:
            raise RuntimeError(f"{method} {path}: HTTP {status} {payload[:300]!r}")
        return json.loads(payload)

    def close(self) -> None:
        self.conn.close()


# -- the environment ----------------------------------------------------------------------


class Context:
    """The run: options, a work directory and the parts, started on first use."""

    def __init__(self, *, rounds: int, quick: bool, keep: bool = False,
                 profile_dir: Path | None = None) -> None:
        self.rounds = rounds
        self.profile_dir = profile_dir  # --profile: where py-spy summaries go
        self.quick = quick
        self.keep = keep
        self.workdir = Path(tempfile.mkdtemp(prefix="session-manager-bench-"))
        self.spawner = Spawner(self.workdir, cwd=REPO_ROOT)  # logs: <workdir>/<name>.log
        self.api_key = "bench-" + secrets.token_hex(16)
        self._redis: local.RedisServer | None = None
        self._apiserver: local.KubeApiServer | None = None
        self._store: Store | None = None
        self._procs: dict[str, Daemon] = {}
        self._namespaces: set[str] = set()
        self._kubes: list[Kube] = []
        self.settled: list[float] = []  # machine busy fraction before each measurement

    # -- parts --

    def spawn(self, name: str, args: list[str], env: Mapping[str, str | None], *,
              port: int | None = None) -> Daemon:
        """A process of the bench's (the caller stops it; `close` stops what is left)."""
        return self.spawner.spawn(name, args, env=env, port=port, stop_group=True,
                                  stop_timeout_seconds=20)

    def spawn_service(self, name: str, env: Mapping[str, str | None]) -> Daemon:
        """`python -m service serve` with `env` (service_env's, PORT its port), once its
        /livez answers."""
        api = self.spawn(name, [sys.executable, "-m", "service", "serve"], env,
                         port=int(str(env["PORT"])))
        wait_until(lambda: http_ok(f"{api.url}/livez"), timeout=30, what=name, daemon=api)
        return api

    def redis(self) -> local.RedisServer:
        if self._redis is None:
            self._redis = local.RedisServer(self.workdir / "redis").start()
        return self._redis

    def apiserver(self) -> local.KubeApiServer:
        if self._apiserver is None:
            server = local.KubeApiServer(self.workdir / "apiserver").start()
            self._apiserver = server
            admin = Kube(load_api_client(str(server.kubeconfig)), "default")
            try:
                ClusterSetup(admin).install_crds(paths.keda_crds())
            finally:
                admin.close()
        return self._apiserver

    def kube(self, namespace: str) -> Kube:
        """A fresh Kube client on `namespace` (created if needed); closed at the end."""
        server = self.apiserver()
        kube = Kube(load_api_client(str(server.kubeconfig)), namespace)
        if namespace not in self._namespaces:
            ClusterSetup(kube).ensure_namespace(namespace)
            self._namespaces.add(namespace)
        self._kubes.append(kube)
        return kube

    def store(self) -> Store:
        if self._store is None:
            server = self.redis()
            self._store = Store.from_url(server.url, socket_timeout_seconds=30,
                                         session_ttl_seconds=86400, activity_ttl_seconds=90)
        return self._store

    def settle(self) -> None:
        busy, waited = settle()
        self.settled.append(busy)
        print(f"    (machine {busy:.0%} busy after waiting {waited:.1f} s for it to settle)",
              flush=True)

    def flush(self) -> None:
        """A clean Redis for the next figure (services keep their connections)."""
        self.store().redis.flushall()

    def cpu(self, proc: Daemon) -> tuple[float, float]:
        """CPU seconds used so far by `proc`'s process group and by redis-server."""
        redis = self.redis().daemon
        return (cpu_seconds(group=proc.pid),
                cpu_seconds(pid=redis.pid) if redis is not None else 0.0)

    def redis_info(self, section: str) -> dict[str, Any]:
        return self.store().redis.info(section)

    def agent(self) -> Daemon:
        """The repo's demo agent (the session pod contract), no state file, no delay."""
        if "agent" not in self._procs:
            self._procs["agent"] = self.start_agent("agent")
        return self._procs["agent"]

    def start_agent(self, name: str, **env: str) -> Daemon:
        """Another demo agent, with its settings (AGENT_DELAY_SECONDS, AGENT_STREAM, ...);
        the caller stops it. Its port is `proc.port`."""
        port = free_port()
        proc = self.spawn(name, [sys.executable, str(REPO_ROOT / "demo_agent" / "agent.py")],
                          {"PORT": str(port), "AGENT_HOST": "127.0.0.1", **env}, port=port)
        wait_until(lambda: http_ok(f"{proc.url}/healthz"), timeout=15, what=name, daemon=proc)
        return proc

    def service_env(self, *, port: int, namespace: str,
                    limits: bool) -> dict[str, str | None]:
        """The environment of a service process (on top of ours; None unsets)."""
        env: dict[str, str | None] = {
            "REDIS_URL": self.redis().url,
            "KUBECONFIG": str(self.apiserver().kubeconfig),
            "NAMESPACE": namespace,
            "API_KEYS": self.api_key,
            "PORT": str(port),
            "BIND_ADDRESS": "127.0.0.1",
            "LOG_LEVEL": "INFO",
            "POD_URL_TEMPLATE": self.agent().url,
            # Never a backlog or budget refusal under load (and a backlog the conversation
            # keeps: the service refuses MAX_QUEUED_MESSAGES >= MAX_MESSAGES_KEPT).
            "MAX_QUEUED_MESSAGES": "1000000",
            "MAX_MESSAGES_KEPT": "1000001",
            "MAX_SESSION_BYTES": str(2**30),
            "RATE_LIMITS_ENABLED": "true" if limits else "false",
        }
        for route in RATE_LIMITED_ROUTES:
            env[f"RATE_LIMIT_{route.upper()}"] = UNLIMITED  # limiter runs, never refuses
        env["AUTH_DISABLED"] = None
        return env

    def service(self, variant: str = "limits-on") -> Daemon:
        """`python -m service serve` (gunicorn, production options) as a subprocess."""
        if variant not in self._procs:
            self.kube(SERVICE_NAMESPACE)  # the namespace the service applies bundles in
            env = self.service_env(port=free_port(), namespace=SERVICE_NAMESPACE,
                                   limits=variant == "limits-on")
            self._procs[variant] = self.spawn_service(f"service-{variant}", env)
        return self._procs[variant]

    def floor(self) -> Daemon:
        """The baseline: a minimal Flask app under the same gunicorn options."""
        if "floor" not in self._procs:
            port = free_port()
            env = {"REDIS_URL": self.redis().url, "PORT": str(port),
                   "BIND_ADDRESS": "127.0.0.1", "LOG_LEVEL": "INFO"}
            proc = self.spawn("floor", [sys.executable, "-m", "bench.floor"], env, port=port)
            self._procs["floor"] = proc
            wait_until(lambda: http_ok(f"{proc.url}/livez"), timeout=30, what="floor app",
                       daemon=proc)
        return self._procs["floor"]

    def start_worker(self, name: str, namespace: str, extra_env: dict[str, str]) -> Daemon:
        """`python -m service worker`; returns once it logged that it started."""
        self.kube(namespace)
        # Figures run one after another on one Redis, each in its own namespace: this one's
        # worker serves the database now (a worker refuses one that serves another).
        self.store().redis.delete(INSTALLATION_KEY)
        env = {**self.service_env(port=free_port(), namespace=namespace, limits=True),
               # It serves the push scaler as deployed (mutual TLS), on a port of its own.
               "SCALER_TLS_DIR": str(self._scaler_certs() / "server"), "SCALER_PORT": "0",
               **extra_env}
        proc = self.spawn(name, [sys.executable, "-m", "service", "worker"], env)
        self._procs[name] = proc
        wait_until(lambda: "worker started" in proc.output(), timeout=30,
                   what=f"worker {name}", daemon=proc)
        return proc

    def _scaler_certs(self) -> Path:
        out = self.workdir / "scaler-certs"
        if not (out / "server").is_dir():
            subprocess.run([str(REPO_ROOT / "scripts" / "scaler-certs.sh"), str(out),
                            "127.0.0.1", "localhost"], check=True, capture_output=True)
        return out

    def stop(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            proc.stop()

    def check_alive(self) -> None:
        for proc in self._procs.values():
            proc.check_running()

    def close(self) -> None:
        for name in list(self._procs):
            self.stop(name)
        self.spawner.stop_all()  # what a figure started and an error kept it from stopping
        for kube in self._kubes:
            with contextlib.suppress(Exception):
                kube.close()
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.redis.flushall()  # no snapshot of 100k sessions at shutdown
            self._store.redis.close()
        if self._redis is not None:
            self._redis.stop()
        if self._apiserver is not None:
            self._apiserver.stop()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


# -- sessions in bulk ---------------------------------------------------------------------


def create_sessions(store: Store, count: int, *, batch: int = 1000,
                    prefix: str = "bench-user") -> list[str]:
    """`count` sessions through the store's own code path (`Store.create_session`, the same
    Lua script), its calls queued on a pipeline `batch` at a time instead of one round trip
    each. Ids come from `names.new_session_id` like `reserve_id`'s, without the reservation
    key (the script deletes it anyway) — 80 random bits do not collide in a benchmark."""
    pipe = store.redis.pipeline(transaction=False)
    queued = Store(pipe, session_ttl_seconds=store.db.session_ttl,  # type: ignore[arg-type]
                   activity_ttl_seconds=store.db.activity_ttl)
    ids: list[str] = []
    while len(ids) < count:
        now = utc_now()
        chunk = [names.new_session_id() for _ in range(min(batch, count - len(ids)))]
        for index, session_id in enumerate(chunk, start=len(ids)):
            queued.records.create_session(session_id, user_id=f"{prefix}-{index}@example.com",
                                  token_hash=hash_token(secrets.token_urlsafe(32)), now=now)
        results = pipe.execute()
        if not all(results):
            raise RuntimeError("create_session refused a fresh id")
        ids.extend(chunk)
    return ids


def create_sessions_one_by_one(store: Store, count: int, prefix: str = "bench") -> list[str]:
    """A few sessions exactly as `Sessions._create` makes them (reserve, then create)."""
    ids = []
    for index in range(count):
        session_id = store.records.reserve_id()
        store.records.create_session(session_id, user_id=f"{prefix}-{index}@example.com",
                             token_hash=hash_token(secrets.token_urlsafe(32)), now=utc_now())
        ids.append(session_id)
    return ids
