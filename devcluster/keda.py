"""KEDA's operator and metrics API server, built from its module, run as host processes.

Out of cluster, the way KEDA's own `make run` runs the operator: a kubeconfig instead of a
service account, its cluster-object namespace from the environment. The operator scales
sessions 0 <-> 1 itself (activation); the metrics API server (`keda-adapter`) serves
`external.metrics.k8s.io` to the HPA KEDA makes for each ScaledObject, registered as an
APIService whose endpoint is this node's address. Both talk over KEDA's gRPC metrics service
with certificates made here (KEDA's cert rotation would want in-cluster Services).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from . import network, paths
from .processes import Daemon, Spawner, free_port, http_ok

NAMESPACE = "keda"
APISERVICE = "v1beta1.external.metrics.k8s.io"
METRICS_SERVICE = "keda-metrics-apiserver"


def make_certs(cert_dir: Path, *, ip: str, dns: tuple[str, ...]) -> None:
    """A CA and a serving/client certificate for `ip` and `dns`, as KEDA's cert dir expects
    (ca.crt, tls.crt, tls.key)."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    if (cert_dir / "tls.crt").is_file():
        return

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cert_dir)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj",
            "/CN=session-manager-local-keda-ca", "-keyout", "ca.key", "-out", "ca.crt")
    san = ",".join([f"IP:{ip}", "IP:127.0.0.1", *(f"DNS:{name}" for name in dns)])
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={dns[0]}", "-keyout",
            "tls.key", "-out", "tls.csr")
    (cert_dir / "ext.cnf").write_text(
        f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "30", "-extfile", "ext.cnf", "-out", "tls.crt")


class Keda:
    def __init__(self, run_dir: Path, spawner: Spawner, *, kubeconfig: Path) -> None:
        self.run_dir = run_dir
        self.spawner = spawner
        self.kubeconfig = kubeconfig
        self.cert_dir = run_dir / "keda-certs"
        self.ca_dir = run_dir / "keda-ca"
        self.grpc_port = free_port()
        self.operator_health_port = free_port()
        self.operator_metrics_port = free_port()
        self.adapter_port = free_port()
        self.operator: Daemon | None = None
        self.adapter: Daemon | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig), "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
                "POD_NAMESPACE": NAMESPACE, "WATCH_NAMESPACE": ""}

    def start_operator(self) -> Daemon:
        make_certs(self.cert_dir, ip=network.NODE_IP,
                   dns=("keda-operator.keda.svc", f"{METRICS_SERVICE}.keda.svc"))
        self.ca_dir.mkdir(parents=True, exist_ok=True)
        self.operator = self.spawner.spawn("keda-operator", [
            paths.binary("keda", build_part="keda"),
            "--leader-elect=false",
            f"--metrics-bind-address=127.0.0.1:{self.operator_metrics_port}",
            f"--health-probe-bind-address=127.0.0.1:{self.operator_health_port}",
            f"--metrics-service-bind-address={network.NODE_IP}:{self.grpc_port}",
            f"--cert-dir={self.cert_dir}", f"--ca-dir={self.ca_dir}",
            "--enable-cert-rotation=false", "--enable-webhook-patching=false",
            "--enable-apiservice-patching=false",
            "--zap-log-level=info", "--zap-encoder=console",
        ], env=self.env)
        healthz = f"http://127.0.0.1:{self.operator_health_port}/healthz"
        self.operator.wait_until(lambda: http_ok(healthz), timeout=60, what="keda-operator")
        return self.operator
