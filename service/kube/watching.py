"""List-then-watch a kind of the sessions namespace (the worker's status watch)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from service.bundle import KindRef
from service.core.errors import KubeError
from service.kube.translate import translate

# A watch asked to end after N seconds that has sent nothing for N + this is dead.
WATCH_READ_MARGIN_SECONDS = 10


class Watcher:
    """Watches of the kube client's namespace."""

    def __init__(self, kube: Any) -> None:
        self.kube = kube  # client.Kube

    def list_and_watch(self, kind: KindRef, *, selector: str, timeout_seconds: int = 60,
                       stop: threading.Event | None = None,
                       on_restart: Callable[[], None] | None = None,
                       ) -> Iterator[tuple[str, dict]]:
        """Yield (event type, object) forever: first ("RELIST", {"items": [...]}) with the
        whole current state — consumers replace what they knew, so objects deleted while no
        watch was open are forgotten — then WATCH events, resuming from the last
        resourceVersion (kept fresh by bookmarks); a 410 Gone starts over with a new LIST."""
        resource = self.kube.resource(kind)
        while stop is None or not stop.is_set():
            listing = self.kube.call(
                lambda: resource.get(namespace=self.kube.namespace, label_selector=selector,
                                     _request_timeout=self.kube.timeout),
                kind=kind.kind,
            )
            yield "RELIST", {"items": [item.to_dict() for item in listing.items]}
            version = listing.metadata.resourceVersion
            while stop is None or not stop.is_set():
                if on_restart is not None:
                    on_restart()  # a quiet watch still proves it is alive, request by request
                watcher = watch.Watch()
                try:
                    # timeout_seconds asks the server to end the watch; the client's own read
                    # deadline ends it when the server cannot (a half-open connection would
                    # otherwise freeze every status while this worker keeps its lease).
                    for event in watcher.stream(
                        resource.get, namespace=self.kube.namespace, label_selector=selector,
                        resource_version=version, timeout_seconds=timeout_seconds,
                        allow_watch_bookmarks=True, serialize=False,
                        _request_timeout=(self.kube.timeout,
                                          timeout_seconds + WATCH_READ_MARGIN_SECONDS),
                    ):
                        obj = event["raw_object"]
                        if event["type"] == "ERROR":
                            if obj.get("code") == 410:
                                break
                            raise KubeError(f"watch error: {obj.get('message')}")
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK":
                            continue  # only moves `version` on, so a resume is not too old
                        yield event["type"], obj
                        if stop is not None and stop.is_set():
                            return
                    else:
                        continue  # the server ended the watch: resume from `version`
                    break  # 410 Gone: list again
                except ApiException as err:
                    if err.status == 410:
                        break
                    raise translate(err, kind=kind.kind) from err
                except (urllib3.exceptions.HTTPError, OSError) as err:
                    raise translate(err, kind=kind.kind) from err
                finally:
                    watcher.stop()
