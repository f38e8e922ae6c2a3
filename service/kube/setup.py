"""Cluster set-up the local stack and the tests need: CRDs, a namespace, a Secret."""

from __future__ import annotations

import time
from typing import Any

from service.bundle import KindRef
from service.core.errors import KubeError
from service.kube.translate import FIELD_MANAGER


class ClusterSetup:
    """Set-up in the kube client's cluster: CRDs, namespaces, Secrets."""

    def __init__(self, kube: Any) -> None:
        self.kube = kube  # client.Kube

    def install_crds(self, crds: list[dict[str, Any]], *, timeout_seconds: float = 30) -> None:
        """Apply CustomResourceDefinitions and wait until each is Established."""
        resource = self.kube.resource(KindRef("apiextensions.k8s.io/v1",
                                          "CustomResourceDefinition"))
        for crd in crds:
            self.kube.call(lambda crd=crd: resource.server_side_apply(
                body=crd, field_manager=FIELD_MANAGER, force_conflicts=True),
                kind="CustomResourceDefinition", name=crd["metadata"]["name"])
        deadline = time.monotonic() + timeout_seconds
        for crd in crds:
            name = crd["metadata"]["name"]
            while True:
                stored = self.kube.call(lambda name=name: resource.get(name=name).to_dict())
                conditions = (stored.get("status") or {}).get("conditions") or []
                if any(c["type"] == "Established" and c["status"] == "True"
                       for c in conditions):
                    break
                if time.monotonic() > deadline:
                    raise KubeError(f"CRD {name} not Established after {timeout_seconds}s")
                time.sleep(0.1)
        self.kube.rediscover()  # the new kinds are served now

    def ensure_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        resource = self.kube.resource(KindRef("v1", "Namespace"))
        body = {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels or {}}}
        self.kube.call(lambda: resource.server_side_apply(
            body=body, name=name, field_manager=FIELD_MANAGER, force_conflicts=True),
            kind="Namespace", name=name)

    def ensure_secret(self, name: str, data: dict[str, str]) -> None:
        """A Secret in this namespace (e.g. the Redis password KEDA's TriggerAuthentication
        reads), applied so a re-run updates it."""
        resource = self.kube.resource(KindRef("v1", "Secret"))
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": self.kube.namespace}, "stringData": data}
        self.kube.call(lambda: resource.server_side_apply(
            body=body, name=name, namespace=self.kube.namespace, field_manager=FIELD_MANAGER,
            force_conflicts=True), kind="Secret", name=name)
