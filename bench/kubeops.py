"""Create and delete on the local API server: latency and the requests each one makes.

Create = `Kube.apply(bundle)` (parallel waves of server-side apply) against the baseline of the
same four objects applied one after another (`Kube._apply_one` in render order, no threads).
Delete = `Kube.delete(session_id, kinds)` (label sweep; Services answer 405 to
deletecollection on 1.20 and fall back to list + delete). Every HTTP request the kubernetes
client sends goes through `RESTClientObject.request`; a wrapper there counts them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from urllib.parse import urlsplit

from service import bundle
from service.core import names
from service.core.config import Settings
from service.kube import Kube
from service.store import keda_keys

from .harness import Client, Context, percentile
from .report import Figure, Row, Target

NAMESPACE = "bench-kube"


class RequestCounter:
    """Counts (method, path, status) of every request an ApiClient sends."""

    def __init__(self, kube: Kube) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, int]] = []
        rest = kube.api_client.rest_client
        original = rest.request

        def counting(method, url, *args, **kwargs):
            status = 0
            try:
                response = original(method, url, *args, **kwargs)
                status = int(getattr(response, "status", 0) or 0)
                return response
            except Exception as err:
                status = int(getattr(err, "status", 0) or 0)
                raise
            finally:
                with self.lock:
                    self.calls.append((method, urlsplit(url).path, status))

        rest.request = counting

    def take(self) -> list[tuple[str, str, int]]:
        with self.lock:
            calls, self.calls = self.calls, []
        return calls


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def _is_discovery(path: str) -> bool:
    return "/namespaces/" not in path


def kube_ops(ctx: Context) -> Figure:
    figure = Figure("kube", "4. Create and delete on the API server (bundle apply, label sweep)")
    kube = ctx.kube(NAMESPACE)
    counter = RequestCounter(kube)
    settings = Settings(namespace=NAMESPACE, auth_disabled=True)

    def render() -> bundle.Bundle:
        session_id = names.new_session_id()
        return bundle.render(session_id, settings, keda_keys(session_id))

    def sequential(rendered: bundle.Bundle) -> None:
        for obj in rendered.objects:  # render order: TriggerAuth, Deployment, Service, SO
            kube._apply_one(obj)

    def delete(rendered: bundle.Bundle) -> None:
        kube.delete(rendered.session_id, rendered.kinds())

    ctx.settle()
    # Warm-up: discovery (once per Kube instance), connection pool, server caches.
    for _ in range(2):
        for apply in (kube.apply, sequential):
            rendered = render()
            apply(rendered)
            delete(rendered)
    warmup = counter.take()
    discovery = [c for c in warmup if _is_discovery(c[1])]

    per_round = 4 if ctx.quick else 10
    parallel_ms: list[list[float]] = []
    sequential_ms: list[list[float]] = []
    delete_ms: list[list[float]] = []
    create_requests: list[int] = []
    sequential_requests: list[int] = []
    delete_requests: list[list[tuple[str, str, int]]] = []
    stray: list[tuple[str, str, int]] = []
    for _ in range(ctx.rounds):
        par, seq, dele = [], [], []
        for index in range(per_round):
            steps = [(kube.apply, par, create_requests), (sequential, seq, sequential_requests)]
            made = []
            for apply, sink, counts in steps if index % 2 == 0 else reversed(steps):
                rendered = render()
                counter.take()
                sink.append(_timed(lambda apply=apply, rendered=rendered: apply(rendered)))
                calls = counter.take()
                stray += [c for c in calls if _is_discovery(c[1])]
                counts.append(len(calls))
                made.append(rendered)
            for rendered in made:
                counter.take()
                dele.append(_timed(lambda rendered=rendered: delete(rendered)))
                calls = counter.take()
                stray += [c for c in calls if _is_discovery(c[1])]
                delete_requests.append(calls)
        parallel_ms.append(par)
        sequential_ms.append(seq)
        delete_ms.append(dele)

    render_ms, api_create, api_delete = _through_the_api(ctx, render, per_round)

    kinds = len(render().kinds())
    refused = Counter(c[1].rsplit("/", 1)[-1] for calls in delete_requests for c in calls
                      if c[2] == 405)
    per_delete = [len(calls) for calls in delete_requests]
    # Allowed: one request per kind, plus for each kind that refuses deletecollection (405)
    # one list and one delete per object of that kind (one per bundle).
    allowed = kinds + 2 * max((sum(1 for c in calls if c[2] == 405)
                               for calls in delete_requests), default=0)
    verbs = Counter(_verb(c) for calls in delete_requests for c in calls)
    n = len(delete_requests)

    def p(rounds: list[list[float]], q: float) -> list[float]:
        return [percentile(r, q) for r in rounds]

    figure.rows = [
        Row("create: Kube.apply (parallel waves)", "ms", p(parallel_ms, 50),
            p95s=p(parallel_ms, 95), baseline="sequential",
            ratios=[a / b for a, b in zip(p(parallel_ms, 50), p(sequential_ms, 50),
                                          strict=True)],
            target=Target("<=", 0.6, on="ratio")),
        Row("create: 4 SSA calls one after another", "ms", p(sequential_ms, 50),
            p95s=p(sequential_ms, 95)),
        Row("delete: Kube.delete (label sweep)", "ms", p(delete_ms, 50), p95s=p(delete_ms, 95)),
        Row("render: bundle.render (in process)", "ms", p(render_ms, 50),
            p95s=p(render_ms, 95)),
        Row("POST /session/create, end to end", "ms", p(api_create, 50), p95s=p(api_create, 95)),
        Row("DELETE /session/<id>, end to end", "ms", p(api_delete, 50), p95s=p(api_delete, 95)),
        Row("requests per create (parallel)", "", [max(create_requests)]),
        Row("requests per create (sequential)", "", [max(sequential_requests)]),
        Row("requests per delete (max)", "", [max(per_delete)],
            target=Target("<=", allowed)),
    ]
    figure.notes = [
        f"{ctx.rounds} rounds x {per_round} sessions each way; parallel and sequential creates "
        "alternate; every session is deleted (delete latency pools both kinds).",
        f"Warm-up excluded: {len(warmup)} requests in 4 warm-up create+delete pairs, "
        f"{len(discovery)} of them discovery (/api, /apis, once per Kube instance); "
        f"discovery requests during the measured rounds: {len(stray)}.",
        f"Delete requests over {n} deletes: "
        + ", ".join(f"{v}: {c / n:g}/delete" for v, c in sorted(verbs.items()))
        + f"; 405 answers by resource: {dict(refused)}. Allowed = {kinds} kinds + 2 per 405 "
        "(list + delete of the one object) = " + str(allowed) + ".",
        "End-to-end rows: the gunicorn service (HTTP, API key) on namespace bench; the "
        "service renders the bundle in create and again in delete (Sessions.delete uses "
        "render().kinds()).",
        "Waves (service/bundle/rendering.py): TriggerAuthentication → Deployment ‖ Service → "
        "ScaledObject, so a create is at least 3 sequential SSA round trips.",
    ]
    figure.data = {"parallel_ms": parallel_ms, "sequential_ms": sequential_ms,
                   "delete_ms": delete_ms, "delete_requests": per_delete,
                   "delete_verbs": dict(verbs)}
    return figure


def _through_the_api(ctx: Context, render, per_round: int
                     ) -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
    """Per round: bundle.render times, and POST /session/create and DELETE /session/<id>
    through the real service."""
    service = ctx.service("limits-on")
    client = Client(service.port, {"X-API-Key": ctx.api_key})

    def create() -> str:
        return client.json("POST", "/session/create", {"user_id": "bench@example.com"},
                           expect=201)["uuid"]

    for _ in range(2):  # warm-up: the service's discovery, connections
        client.json("DELETE", f"/session/{create()}")
    renders, creates, deletes = [], [], []
    for _ in range(ctx.rounds):
        r, c, d = [], [], []
        for _ in range(per_round):
            r.append(_timed(render))
            holder: list[str] = []
            c.append(_timed(lambda holder=holder: holder.append(create())))
            d.append(_timed(lambda holder=holder: client.json("DELETE",
                                                              f"/session/{holder[0]}")))
        renders.append(r)
        creates.append(c)
        deletes.append(d)
    client.close()
    return renders, creates, deletes


def _verb(call: tuple[str, str, int]) -> str:
    method, path, status = call
    named = _has_name(path)
    if method == "DELETE":
        return ("delete" if named else "deletecollection") + (" (405)" if status == 405 else "")
    if method == "GET":
        return "get" if named else "list"
    return method.lower()


def _has_name(path: str) -> bool:
    # .../namespaces/<ns>/<resource>[/<name>]
    parts = path.strip("/").split("/")
    try:
        at = parts.index("namespaces")
    except ValueError:
        return False
    return len(parts) - at >= 4
