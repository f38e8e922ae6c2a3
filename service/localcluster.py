"""A real, local Kubernetes API (etcd + kube-apiserver) and a real redis-server, as processes.

Used by the test fixtures and by `make run` on a machine with no cluster: envtest style, no
kubelet and no controllers, so objects are stored and validated but no pod ever runs.
kube-apiserver comes from scripts/build-kube-apiserver.sh (Debian's 1.20.2 source, cached).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from .config import REPO_ROOT

CACHE_DIR = Path(
    os.environ.get("SESSION_MANAGER_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "session-manager"
)
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-kube-apiserver.sh"
KEDA_CRDS = Path(__file__).resolve().parent / "crds" / "keda-crds.yaml"


class LocalServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(name: str, hint: str) -> str:
    path = shutil.which(name)
    if not path:
        raise LocalServiceError(f"{name} not found on PATH: {hint}")
    return path


def kube_apiserver_binary(*, build: bool = False) -> str:
    explicit = os.environ.get("KUBE_APISERVER")
    if explicit:
        return explicit
    cached = CACHE_DIR / "bin" / "kube-apiserver"
    if cached.is_file():
        return str(cached)
    if build:
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
        return str(cached)
    raise LocalServiceError(
        f"kube-apiserver not found at {cached}: run scripts/build-kube-apiserver.sh "
        "(or `make apiserver`) first; it builds one from Debian's kubernetes source package"
    )


def _wait(predicate, *, timeout: float, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise LocalServiceError(f"{what} exited with {process.returncode}:\n{tail}")
        if predicate():
            return
        time.sleep(0.1)
    raise LocalServiceError(f"{what} not ready after {timeout}s (log: {log})")


class RedisServer:
    """redis-server with a password on a random loopback port; stop/start keep the data dir."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require_binary("redis-server", "apt-get install redis-server")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = self.workdir / "redis.log"
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--requirepass", self.password, "--dir", str(self.workdir),
             # No periodic snapshots (FLUSHALL would write one each time); stop() saves one.
             "--save", "", "--appendonly", "no", "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        _wait(self._answers, timeout=10, what="redis-server", process=self.process, log=log)
        return self

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(
            ("127.0.0.1", self.port), timeout=0.5
        ) as sock:
            sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
            return b"PONG" in sock.recv(64) or b"PONG" in sock.recv(64)
        return False

    def stop(self) -> None:
        """Shut down with a snapshot (SHUTDOWN SAVE), so a stop/start keeps the data the way
        a real deployment's persistence would, whatever the server's save configuration."""
        if self.process and self.process.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=2
            ) as sock:
                sock.sendall(f"AUTH {self.password}\r\nSHUTDOWN SAVE\r\n".encode())
                sock.recv(64)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                self.process.wait(10)
        self.process = None


class KubeApiServer:
    """etcd + kube-apiserver on random loopback ports, with a token kubeconfig."""

    def __init__(self, workdir: Path, *, build: bool = False) -> None:
        self.binary = kube_apiserver_binary(build=build)
        self.etcd_binary = require_binary("etcd", "apt-get install etcd-server")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(24)
        self.port = free_port()
        self.etcd_port = free_port()
        self.processes: list[subprocess.Popen] = []
        self.kubeconfig = self.workdir / "kubeconfig"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> KubeApiServer:
        self._start_etcd()
        self._start_apiserver()
        self._write_kubeconfig()
        return self

    def _start_etcd(self) -> None:
        # etcd fsyncs every write: on tmpfs the tests don't wait on the disk.
        shm = Path("/dev/shm")  # noqa: S108 - a private mkdtemp directory inside it
        data = Path(tempfile.mkdtemp(prefix="etcd-", dir=shm if shm.is_dir() else None))
        self._etcd_data = data
        log = self.workdir / "etcd.log"
        url = f"http://127.0.0.1:{self.etcd_port}"
        process = _spawn(
            [self.etcd_binary, "--data-dir", str(data), "--listen-client-urls", url,
             "--advertise-client-urls", url, "--listen-peer-urls",
             f"http://127.0.0.1:{free_port()}", "--log-level", "error"],
            log,
        )
        self.processes.append(process)
        _wait(lambda: _http_ok(f"{url}/health"), timeout=20, what="etcd", process=process,
              log=log)

    def _start_apiserver(self) -> None:
        certs = self.workdir / "certs"
        certs.mkdir(exist_ok=True)
        sa_key = certs / "sa.key"
        subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True,
                       capture_output=True)
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin,"system:masters"\n')
        log = self.workdir / "kube-apiserver.log"
        process = _spawn(
            [self.binary,
             f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
             "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
             f"--secure-port={self.port}", "--insecure-port=0",
             f"--cert-dir={certs}", f"--token-auth-file={tokens}",
             "--authorization-mode=RBAC",
             "--service-cluster-ip-range=10.0.0.0/24",
             "--service-account-issuer=https://kubernetes.default.svc",
             f"--service-account-key-file={sa_key}",
             f"--service-account-signing-key-file={sa_key}",
             "--disable-admission-plugins=ServiceAccount",
             "--allow-privileged=true",
             "--enable-priority-and-fairness=false",
             "--v=0"],
            log,
        )
        self.processes.append(process)
        self._ca = certs / "apiserver.crt"
        _wait(self._ready, timeout=60, what="kube-apiserver", process=process, log=log)

    def _ready(self) -> bool:
        if not self._ca.exists():
            return False
        context = ssl.create_default_context(cafile=str(self._ca))
        request = urllib.request.Request(f"{self.url}/readyz",  # noqa: S310 - https only
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own https URL
                    request, context=context, timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False

    def _write_kubeconfig(self) -> None:
        kubeconfig = {
            "apiVersion": "v1", "kind": "Config", "current-context": "local",
            "clusters": [{"name": "local", "cluster": {
                "server": self.url, "certificate-authority": str(self._ca)}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig))
        self.kubeconfig.chmod(0o600)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        shutil.rmtree(getattr(self, "_etcd_data", ""), ignore_errors=True)


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    """Start a server with its output in `log`; the parent closes its copy of the file."""
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - http only
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def keda_crds() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(KEDA_CRDS.read_text()) if doc]
