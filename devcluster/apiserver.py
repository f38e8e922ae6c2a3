"""A real redis-server, and a real etcd + kube-apiserver, as processes on this machine.

Used by the test fixtures, the benchmarks and the full local stack. On its own the API server
is envtest style (no kubelet, no controllers: objects are stored and validated, no pod runs);
cluster.LocalCluster adds the rest. kube-apiserver is built from the k8s.io/kubernetes module by
scripts/build-cluster-binaries.sh (cached outside the repo).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path

import yaml

from . import paths
from .certs import make_ca_and_cert
from .paths import LocalServiceError
from .ports import free_port, retry_on_port_in_use
from .processes import NO_CLOUD_ENV, Daemon, Spawner, http_ok, wait_until


class RedisServer:
    """redis-server with a password on a random loopback port; stop/start keep the data dir."""

    def __init__(self, workdir: Path) -> None:
        self.binary = paths.system_binary("redis-server", "redis-server")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.spawner = Spawner(workdir)
        self.daemon: Daemon | None = None
        self._started_once = False

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (again: on the same port, so clients find it where it was)."""
        if self._started_once:
            return self._start()

        def first_start() -> RedisServer:
            self.port = free_port()
            return self._start()

        return retry_on_port_in_use(first_start)

    def _start(self) -> RedisServer:
        # Its log goes to redis.log (redis-server logs to its output without --logfile).
        self.daemon = self.spawner.spawn(
            "redis",
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--requirepass", self.password, "--dir", str(self.workdir),
             # No periodic snapshots (FLUSHALL would write one each time); stop() saves one.
             "--save", "", "--appendonly", "no"],
            stop_timeout_seconds=10)
        wait_until(self._answers, timeout=10, interval=0.1, what="redis-server",
                   daemon=self.daemon)
        self._started_once = True
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
        if self.daemon is not None and self.daemon.running():
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=2
            ) as sock:
                sock.sendall(f"AUTH {self.password}\r\nSHUTDOWN SAVE\r\n".encode())
                sock.recv(64)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.daemon.process.wait(10)
        self.spawner.stop_all()  # SIGTERM (then SIGKILL) only if SHUTDOWN did not end it
        self.daemon = None


class KubeApiServer:
    """etcd + kube-apiserver with a token kubeconfig.

    Alone (the default): on random loopback ports, envtest style. For a node (`advertise`
    given): bound to the node's address, so kubelet, pods (through the `kubernetes` Service)
    and host processes reach it, with service-account tokens for the controller-manager.
    """

    def __init__(self, workdir: Path, *, build: bool = True, spawner: Spawner | None = None,
                 advertise: str | None = None, service_cidr: str = "10.0.0.0/16") -> None:
        # Alone, no node routes or serves these addresses: the range only has to hold every
        # session Service one test run creates (a /24 filled up at 254).
        self.binary = paths.kube_apiserver(build_missing=build)
        self.etcd_binary = paths.etcd(build_missing=build)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spawner = spawner or Spawner(workdir, env=NO_CLOUD_ENV)
        self.advertise = advertise
        self.service_cidr = service_cidr
        self.token = secrets.token_hex(24)
        self.port = free_port()
        self.etcd_port = free_port()
        self.kubeconfig = self.workdir / "kubeconfig"
        self.certs = self.workdir / "certs"
        self.sa_key = self.certs / "sa.key"
        self.ca = self.certs / "apiserver.crt"

    @property
    def host(self) -> str:
        return self.advertise or "127.0.0.1"

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> KubeApiServer:
        retry_on_port_in_use(self._start_etcd)
        retry_on_port_in_use(self._start_apiserver)
        self._write_kubeconfig()
        return self

    def _start_etcd(self) -> None:
        self.etcd_port = free_port()
        shutil.rmtree(getattr(self, "_etcd_data", ""), ignore_errors=True)  # an earlier try
        # etcd fsyncs every write: on tmpfs the tests don't wait on the disk.
        shm = Path("/dev/shm")  # noqa: S108 - a private mkdtemp directory inside it
        data = Path(tempfile.mkdtemp(prefix="etcd-", dir=shm if shm.is_dir() else None))
        self._etcd_data = data
        url = f"http://127.0.0.1:{self.etcd_port}"
        etcd = self.spawner.spawn(
            "etcd",
            [self.etcd_binary, "--data-dir", str(data), "--listen-client-urls", url,
             "--advertise-client-urls", url, "--listen-peer-urls",
             f"http://127.0.0.1:{free_port()}", "--log-level", "error"])
        wait_until(lambda: http_ok(f"{url}/health"), timeout=20, interval=0.1, what="etcd",
                   daemon=etcd)

    def _start_apiserver(self) -> None:
        self.port = free_port()
        self.certs.mkdir(exist_ok=True)
        subprocess.run(["openssl", "genrsa", "-out", str(self.sa_key), "2048"], check=True,
                       capture_output=True)
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin,"system:masters"\n')
        tokens.chmod(0o600)
        args = [
            self.binary,
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--bind-address={self.host}", f"--advertise-address={self.host}",
            f"--secure-port={self.port}",
            f"--cert-dir={self.certs}", f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.sa_key}",
            f"--service-account-signing-key-file={self.sa_key}",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--v=0",
        ]
        if self.advertise is None:
            # Nothing creates service accounts without a controller-manager.
            args.append("--disable-admission-plugins=ServiceAccount")
        else:
            # Aggregated APIs (KEDA's external metrics) are reached at their endpoint's
            # address: the node's, for a metrics server running on the host.
            args.append("--enable-aggregator-routing=true")
            # The node by its address, never by name: a name lookup would ask the machine's
            # resolver, off this machine.
            args.append("--kubelet-preferred-address-types=InternalIP")
            # The front proxy: how the API server authenticates itself to aggregated APIs.
            proxy = self.certs / "front-proxy"
            make_ca_and_cert(proxy, common_name="front-proxy-client")
            args += [f"--requestheader-client-ca-file={proxy / 'ca.crt'}",
                     "--requestheader-allowed-names=front-proxy-client",
                     "--requestheader-username-headers=X-Remote-User",
                     "--requestheader-group-headers=X-Remote-Group",
                     "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                     f"--proxy-client-cert-file={proxy / 'tls.crt'}",
                     f"--proxy-client-key-file={proxy / 'tls.key'}"]
        server = self.spawner.spawn("kube-apiserver", args)
        wait_until(self._ready, timeout=90, interval=0.1, what="kube-apiserver", daemon=server)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def _ready(self) -> bool:
        if not self.ca.exists():
            return False
        with contextlib.suppress(ssl.SSLError):
            return http_ok(f"{self.url}/readyz", context=self.ssl_context(),
                           headers={"Authorization": f"Bearer {self.token}"})
        return False

    def _write_kubeconfig(self) -> None:
        kubeconfig = {
            "apiVersion": "v1", "kind": "Config", "current-context": "local",
            "clusters": [{"name": "local", "cluster": {
                "server": self.url, "certificate-authority": str(self.ca)}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig))
        self.kubeconfig.chmod(0o600)

    def stop(self) -> None:
        self.spawner.stop_all()
        shutil.rmtree(getattr(self, "_etcd_data", ""), ignore_errors=True)


__all__ = ["KubeApiServer", "LocalServiceError", "RedisServer"]
