"""The client of the sessions namespace: applies a bundle with server-side apply (one field
manager, forced: these objects are ours), sweeps a session's objects by label, lists, reads a
session's Deployment, pauses and resumes its ScaledObject — the client's exceptions turned into
our own (errors.Kube*), always chained."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config, dynamic

from service.bundle import Bundle, KindRef, label_selector, wave_of
from service.core import names
from service.core.errors import KubeError, KubeNotFound
from service.kube.kinds import (
    DELETE_PROPAGATION,
    PAUSE_KIND,
    PAUSED_REPLICAS_ANNOTATION,
    DeploymentState,
    state_of_deployment,
)
from service.kube.translate import CLIENT_ERRORS, FIELD_MANAGER, translate

log = logging.getLogger(__name__)
T = TypeVar("T")

LIST_PAGE_SIZE = 500
METADATA_LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.retries = 1
    return client.ApiClient(configuration)


class Kube:
    def __init__(self, api_client: client.ApiClient, namespace: str, *, parallel: int = 4,
                 request_timeout_seconds: float = 15.0) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.timeout = request_timeout_seconds
        cache_dir = tempfile.mkdtemp(prefix="session-manager-discovery-")
        atexit.register(shutil.rmtree, cache_dir, True)
        self._dynamic_lock = threading.Lock()
        self._dynamic_client: dynamic.DynamicClient | None = None
        self._cache_file = str(Path(cache_dir) / "discovery.json")
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="kube")

    @classmethod
    def from_environment(cls, namespace: str, kubeconfig: str | None = None) -> Kube:
        return cls(load_api_client(kubeconfig), namespace)

    @property
    def dynamic(self) -> dynamic.DynamicClient:
        # Discovery is a dozen requests: done once, on first use, not at import or start.
        with self._dynamic_lock:
            if self._dynamic_client is None:
                try:
                    self._dynamic_client = dynamic.DynamicClient(
                        self.api_client, cache_file=self._cache_file
                    )
                except CLIENT_ERRORS as err:
                    raise translate(err) from err
            return self._dynamic_client

    def rediscover(self) -> None:
        """Forget what discovery found: kinds installed since (a CRD) are served now."""
        with self._dynamic_lock:
            self._dynamic_client = None

    def resource(self, kind: KindRef) -> Any:
        try:
            return self.dynamic.resources.get(api_version=kind.api_version, kind=kind.kind)
        except CLIENT_ERRORS as err:
            raise translate(err, kind=kind.kind) from err

    def call(self, fn: Callable[[], T], *, kind: str | None = None,
              name: str | None = None) -> T:
        try:
            return fn()
        except CLIENT_ERRORS as err:
            raise translate(err, kind=kind, name=name) from err

    # -- apply ---------------------------------------------------------------------------

    def apply(self, bundle: Bundle, *, sweep_on_failure: bool = True) -> None:
        """Apply every object, wave by wave; on any failure sweep the session (a create's
        half-made bundle; not a re-apply's, whose objects are live) and re-raise."""
        try:
            for wave in bundle.waves():
                self._run_parallel(self._apply_one, wave)
        except KubeError:
            if not sweep_on_failure:
                raise
            log.warning("apply failed part-way; sweeping the session's objects",
                        extra={"session_id": bundle.session_id})
            try:
                self.delete(bundle.session_id, bundle.kinds())
            except KubeError:
                log.exception("sweep after a failed apply also failed; the reconciler will retry",
                              extra={"session_id": bundle.session_id})
            raise

    def _apply_one(self, obj: dict[str, Any]) -> None:
        kind = KindRef.of(obj)
        resource = self.resource(kind)
        name = obj["metadata"]["name"]
        # Sent as JSON text (valid YAML) and the answer left unparsed: the client's recursive
        # (de)serialisation would otherwise be most of the CPU an apply costs.
        body = json.dumps(obj)
        self.call(
            lambda: resource.server_side_apply(
                body=body, name=name, namespace=self.namespace, field_manager=FIELD_MANAGER,
                force_conflicts=True, _request_timeout=self.timeout, serialize=False,
            ),
            kind=kind.kind, name=name,
        )

    def _run_parallel(self, fn: Callable[[Any], None], items: Iterable[Any]) -> None:
        items = list(items)
        if len(items) == 1:
            fn(items[0])
            return
        futures = [self._pool.submit(fn, item) for item in items]
        errors = [f.exception() for f in futures]
        for err in errors:
            if err is not None:
                raise err

    # -- delete --------------------------------------------------------------------------

    def delete(self, session_id: str, kinds: Iterable[KindRef]) -> None:
        """Label-sweep every given kind, ScaledObject first; a missing object or kind is fine."""
        names.check_session_id(session_id)
        self.sweep(label_selector(session_id), kinds)

    def sweep(self, selector: str, kinds: Iterable[KindRef]) -> None:
        by_wave: dict[int, list[KindRef]] = {}
        for kind in dict.fromkeys(kinds):
            by_wave.setdefault(wave_of(kind.kind), []).append(kind)
        for wave in sorted(by_wave, reverse=True):
            self._run_parallel(lambda kind: self._sweep_kind(kind, selector), by_wave[wave])

    def _sweep_kind(self, kind: KindRef, selector: str) -> None:
        try:
            resource = self.resource(kind)
        except KubeNotFound:
            return  # the kind is not served (CRD gone): nothing of it can exist
        body = {"propagationPolicy": DELETE_PROPAGATION}
        try:
            self.call(
                lambda: resource.delete(namespace=self.namespace, label_selector=selector,
                                        body=body, _request_timeout=self.timeout,
                                        serialize=False),
                kind=kind.kind,
            )
            return
        except KubeNotFound:
            return
        except KubeError as err:
            if err.api_status != 405:
                raise
        # No deletecollection for this kind (Services before 1.23): list, then delete each.
        listing = self.call(
            lambda: resource.get(namespace=self.namespace, label_selector=selector,
                                 _request_timeout=self.timeout),
            kind=kind.kind,
        )
        for item in listing.items:
            with contextlib.suppress(KubeNotFound):
                self._delete_one(resource, kind, item.metadata.name, body)

    def _delete_one(self, resource: Any, kind: KindRef, name: str, body: dict) -> None:
        self.call(lambda: resource.delete(name=name, namespace=self.namespace, body=body,
                                           _request_timeout=self.timeout, serialize=False),
                   kind=kind.kind, name=name)

    def remaining(self, session_id: str, kinds: Iterable[KindRef]) -> int:
        """How many of the session's objects of these kinds still exist (being deleted or
        not): 0 once a sweep has finished, finalizers included."""
        names.check_session_id(session_id)
        return sum(len(page) for kind in dict.fromkeys(kinds)
                   for page in self.list_pages(kind, label_selector(session_id),
                                               metadata_only=True))

    def list_objects(self, kind: KindRef, selector: str) -> list[dict[str, Any]]:
        return [obj for page in self.list_pages(kind, selector) for obj in page]

    def list_pages(self, kind: KindRef, selector: str, *, metadata_only: bool = False,
                   page_size: int = LIST_PAGE_SIZE) -> Iterator[list[dict[str, Any]]]:
        """The objects of a kind, a page (`limit` + `continue`) at a time, so neither side
        holds thousands of sessions' objects in one answer. metadata_only asks the API
        server for PartialObjectMetadata: names, labels, annotations and timestamps."""
        try:
            resource = self.resource(kind)
        except KubeNotFound:
            return
        headers = {"Accept": METADATA_LIST_ACCEPT} if metadata_only else {}
        token: str | None = None
        while True:
            listing = self.call(
                lambda token=token: resource.get(
                    namespace=self.namespace, label_selector=selector, limit=page_size,
                    _continue=token, header_params=headers, _request_timeout=self.timeout),
                kind=kind.kind,
            )
            yield [item.to_dict() for item in listing.items or []]
            token = getattr(listing.metadata, "continue", None)
            if not token:
                return

    # -- status and KEDA pause -----------------------------------------------------------

    def deployment_state(self, session_id: str) -> DeploymentState:
        apps = client.AppsV1Api(self.api_client)
        name = names.object_name(session_id)
        try:
            deployment = self.call(
                lambda: apps.read_namespaced_deployment(name, self.namespace,
                                                        _request_timeout=self.timeout),
                kind="Deployment", name=name,
            )
        except KubeNotFound:
            return DeploymentState(exists=False)
        return state_of_deployment(deployment.to_dict())

    def set_paused(self, session_id: str, paused: bool) -> bool:
        """Pause the session's ScaledObject at 0 replicas (KEDA >= 2.7), or resume it.

        A JSON merge patch of one annotation, not part of the applied bundle, so re-applying
        the bundle neither drops nor forces it. Returns what the API server stored (read back).
        """
        resource = self.resource(PAUSE_KIND)
        name = names.object_name(session_id)
        patch = {"metadata": {"annotations": {PAUSED_REPLICAS_ANNOTATION: "0" if paused else None}}}
        stored = self.call(
            lambda: resource.patch(body=patch, name=name, namespace=self.namespace,
                                   content_type="application/merge-patch+json",
                                   _request_timeout=self.timeout),
            kind=PAUSE_KIND.kind, name=name,
        )
        annotations = stored.to_dict()["metadata"].get("annotations") or {}
        return annotations.get(PAUSED_REPLICAS_ANNOTATION) == "0"

    def is_paused(self, session_id: str) -> bool:
        resource = self.resource(PAUSE_KIND)
        name = names.object_name(session_id)
        stored = self.call(
            lambda: resource.get(name=name, namespace=self.namespace,
                                 _request_timeout=self.timeout),
            kind=PAUSE_KIND.kind, name=name,
        )
        annotations = stored.to_dict()["metadata"].get("annotations") or {}
        return annotations.get(PAUSED_REPLICAS_ANNOTATION) == "0"

    # -- health --------------------------------------------------------------------------

    def ping(self) -> str:
        """The server's version; raises KubeUnavailable when it cannot be reached."""
        version = client.VersionApi(self.api_client)
        info = self.call(lambda: version.get_code(_request_timeout=3))
        return str(info.git_version)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()
