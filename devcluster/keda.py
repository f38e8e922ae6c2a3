"""KEDA's operator and metrics API server, built from its module, run as host processes.

Out of cluster, the way KEDA's own `make run` runs the operator: a kubeconfig instead of a
service account, its cluster-object namespace from the environment. The operator scales
sessions 0 <-> 1 itself (activation); the metrics API server (`keda-adapter`) serves
`external.metrics.k8s.io` to the HPA KEDA makes for each ScaledObject, registered as an
APIService whose endpoint is this node's address. Both talk over KEDA's gRPC metrics service
with certificates made here (KEDA's cert rotation would want in-cluster Services).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from . import network, paths
from .certs import make_ca_and_cert
from .ports import free_port, retry_on_port_in_use
from .processes import Daemon, Spawner, http_ok, wait_until

NAMESPACE = "keda"
APISERVICE = "v1beta1.external.metrics.k8s.io"
METRICS_SERVICE = "keda-metrics-apiserver"
# The operator's API client and concurrency, sized for thousands of ScaledObjects (the tiers
# bench); a production install with that many sets the same flags (docs/operations.md).
API_QPS = 100
API_BURST = 200
MAX_RECONCILES = 20


class Keda:
    def __init__(self, run_dir: Path, spawner: Spawner, *, kubeconfig: Path) -> None:
        self.run_dir = run_dir
        self.spawner = spawner
        self.kubeconfig = kubeconfig
        self.cert_dir = run_dir / "keda-certs"
        self.ca_dir = run_dir / "keda-ca"
        self.grpc_port = self.operator_health_port = self.operator_metrics_port = 0
        self.adapter_port = 0
        self.operator: Daemon | None = None
        self.adapter: Daemon | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig), "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
                "POD_NAMESPACE": NAMESPACE, "WATCH_NAMESPACE": "",
                "KEDA_SCALEDOBJECT_CTRL_MAX_RECONCILES": str(MAX_RECONCILES)}

    def start_operator(self) -> Daemon:
        return retry_on_port_in_use(self._start_operator)

    def _start_operator(self) -> Daemon:
        self.grpc_port = free_port()
        self.operator_health_port = free_port()
        self.operator_metrics_port = free_port()
        make_ca_and_cert(self.cert_dir, common_name="keda-operator.keda.svc",
                         ips=(network.NODE_IP, "127.0.0.1"),
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
            # KEDA's defaults (20 requests/s, burst 30, 5 ScaledObjects reconciled at once)
            # made 2 HPAs a second for 2,000 new ScaledObjects and kept a deleted one's
            # finalizer for minutes; KEDA's docs advise raising them from ~400 ScaledObjects.
            # (The concurrency is an environment variable, see `env`.)
            f"--kube-api-qps={API_QPS}", f"--kube-api-burst={API_BURST}",
        ], env=self.env)
        healthz = f"http://127.0.0.1:{self.operator_health_port}/healthz"
        wait_until(lambda: http_ok(healthz), timeout=60, interval=0.1, what="keda-operator",
                   daemon=self.operator)
        return self.operator

    def start_adapter(self, apply, kubectl) -> Daemon:
        """The metrics API server on the node's address, registered as KEDA's APIService."""
        return retry_on_port_in_use(lambda: self._start_adapter(apply, kubectl))

    def _start_adapter(self, apply, kubectl) -> Daemon:
        kubeconfig = str(self.kubeconfig)
        self.adapter_port = free_port()
        self.adapter = self.spawner.spawn("keda-adapter", [
            paths.binary("keda-adapter", build_part="keda"),
            f"--secure-port={self.adapter_port}", f"--bind-address={network.NODE_IP}",
            f"--cert-dir={self.cert_dir}", f"--tls-cert-file={self.cert_dir / 'tls.crt'}",
            f"--tls-private-key-file={self.cert_dir / 'tls.key'}",
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", f"--lister-kubeconfig={kubeconfig}",
            f"--metrics-service-address={network.NODE_IP}:{self.grpc_port}",
            f"--port={free_port()}", "--v=0",
        ], env=self.env)
        apply(self._registration())

        def available() -> bool:
            result = kubectl("get", "apiservice", APISERVICE, "-o", "json", check=False)
            if result.returncode != 0:
                return False
            conditions = json.loads(result.stdout).get("status", {}).get("conditions") or []
            return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

        wait_until(available, timeout=90, interval=0.1, what=f"APIService {APISERVICE} Available",
                   daemon=self.adapter)
        return self.adapter

    def _registration(self) -> list[dict]:
        """A selector-less Service whose endpoint is this node, and the APIService using it
        (the API server routes to the endpoint: --enable-aggregator-routing)."""
        ca_bundle = base64.b64encode((self.cert_dir / "ca.crt").read_bytes()).decode()
        meta = {"name": METRICS_SERVICE, "namespace": NAMESPACE}
        return [
            {"apiVersion": "v1", "kind": "Service", "metadata": meta,
             "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                 "targetPort": self.adapter_port}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE,
                          "labels": {"kubernetes.io/service-name": METRICS_SERVICE,
                                     "endpointslice.kubernetes.io/managed-by":
                                         "session-manager-devcluster"}},
             "addressType": "IPv4",
             "endpoints": [{"addresses": [network.NODE_IP], "conditions": {"ready": True}}],
             "ports": [{"name": "https", "port": self.adapter_port, "protocol": "TCP"}]},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
             "metadata": {"name": APISERVICE},
             "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1",
                      "service": {"name": METRICS_SERVICE, "namespace": NAMESPACE,
                                  "port": 443},
                      "caBundle": ca_bundle, "groupPriorityMinimum": 100,
                      "versionPriority": 100}},
        ]

