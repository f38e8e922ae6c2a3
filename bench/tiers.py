"""Tiers on the local cluster with real KEDA: what archiving saves, what it costs a wake, and
what records cost the control plane's processes.

1. objects: N sessions asleep (bundles at 0 replicas, as KEDA leaves idle sessions: Deployment,
   ReplicaSet, Service + EndpointSlice, ScaledObject + KEDA's HPA, TriggerAuthentication), then
   all but ACTIVE of them archived by the real archiver. Objects in the sessions namespace and
   etcd's keys and size (compacted and defragmented, so sizes compare) at each point; the same
   per session for the lighter template set (no Service). Target: with archiving, objects grow
   with the ACTIVE sessions, not with all N.
2. wake: chat-to-reply on an archived session against a sleeping one (KEDA at 0, objects kept),
   interleaved. Target: archived <= sleeping + 1 s.
3. memory: RSS of `python -m service serve` and `python -m service worker` with 5,000 and then
   20,000 records (archived: no objects). Target: 20,000 within 1.25x of 5,000.

Everything runs on this machine (the stack, Redis on loopback, the API and worker in-process
for 1-2, as processes for 3). BENCH_TIERS_SESSIONS sets N (default 5,000; --quick 500).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devcluster.processes import WaitTimedOut, wait_until
from service import bundle
from service.bundle import TemplateVersion
from service.core import names
from service.core.clock import utc_now
from service.core.config import REPO_ROOT, Settings
from service.core.tokens import hash_token
from service.core.transitions import Actor
from service.sessions import Archiver, Tiers
from service.store import Store, keda_keys
from service.store.keys import BUNDLED_INDEX

from .harness import Client, Context
from .report import Figure, Row, Target
from .wake import API_KEY, Session, Stack

ACTIVE = 50  # sessions active within ARCHIVE_AFTER_SECONDS in the archived arm
KINDS = "deployments,replicasets,pods,services,endpointslices,scaledobjects,hpa," \
        "triggerauthentications"
WAKE_MARGIN_SECONDS = 1.0
MEMORY_SIZES = (5_000, 20_000)
MEMORY_GROWTH_TARGET = 1.25


def _sessions(ctx: Context) -> int:
    return int(os.environ.get("BENCH_TIERS_SESSIONS") or (500 if ctx.quick else 5_000))


class Etcd:
    """etcd's own figures through its JSON gateway on loopback."""

    def __init__(self, port: int) -> None:
        self.port = port

    def _post(self, path: str, body: dict) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            conn.request("POST", path, body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"etcd {path}: HTTP {response.status} {payload[:300]!r}")
            return json.loads(payload)
        finally:
            conn.close()

    def keys(self) -> int:
        key = base64.b64encode(b"/registry/").decode()
        end = base64.b64encode(b"/registry0").decode()
        found = self._post("/v3/kv/range", {"key": key, "range_end": end, "count_only": True})
        return int(found.get("count", 0))

    def compacted_size(self) -> int:
        """Bytes of etcd's database after compacting to now and defragmenting: what the
        objects themselves take, without the history a live cluster keeps for a while."""
        revision = int(self._post("/v3/maintenance/status", {})["header"]["revision"])
        self._post("/v3/kv/compaction", {"revision": revision, "physical": True})
        self._post("/v3/maintenance/defragment", {})
        return int(self._post("/v3/maintenance/status", {})["dbSize"])


def _objects(stack: Stack, namespace: str) -> int:
    out = stack.cluster.kubectl("-n", namespace, "get", KINDS, "-o", "name",
                                "--chunk-size=500", check=False).stdout
    return len(out.split())


def _hpas(stack: Stack, namespace: str) -> int:
    out = stack.cluster.kubectl("-n", namespace, "get", "hpa", "-o", "name",
                                "--chunk-size=500", check=False).stdout
    return len(out.split())


def _sleeping_sessions(stack: Stack, settings: Settings, store: Store, count: int) -> list[str]:
    """`count` sessions with records and bundles at 0 replicas: sleeping sessions as KEDA
    leaves them (a created session would first start a pod, which 2 cores cannot do for
    thousands)."""
    kube = stack.client(settings.namespace)
    version = TemplateVersion(settings, keda_keys).current()

    def one(_: int) -> str:
        session_id = names.new_session_id()
        rendered = bundle.render(session_id, settings, keda_keys(session_id))
        for obj in rendered.objects:
            if obj["kind"] == "Deployment":
                obj["spec"]["replicas"] = 0
        kinds = [(k.api_version, k.kind) for k in rendered.kinds()]
        store.records.note_applied_kinds(kinds)
        kube.apply(rendered)
        store.records.create_session(session_id, user_id="bench", now=utc_now(),
                             token_hash=hash_token(secrets.token_urlsafe(16)),
                             bundle_version=version, bundle_kinds=kinds)
        store.records.set_status(session_id, "sleeping", actor=Actor.WATCH)
        return session_id

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def database(stack: Stack, number: int) -> tuple[str, Store]:
    """The stack's Redis, another database: one installation per database (the stack's own
    worker, of namespace bench-wake, would reconcile another namespace's records as failed)."""
    url = stack.redis.url.rsplit("/", 1)[0] + f"/{number}"
    store = Store.from_url(url, socket_timeout_seconds=10, session_ttl_seconds=86400,
                           activity_ttl_seconds=stack.settings.activity_ttl_seconds)
    store.redis.flushdb()
    return url, store


def _measure(stack: Stack, namespace: str, etcd: Etcd) -> tuple[int, int, int]:
    return _objects(stack, namespace), etcd.keys(), etcd.compacted_size()


def _objects_figure(ctx: Context, stack: Stack, figure: Figure, count: int) -> None:
    etcd = Etcd(stack.cluster.apiserver.etcd_port)
    namespace = "bench-tiers"
    stack.namespace(namespace)
    # KEDA polls each ScaledObject every pollingInterval, asleep or not: at the default 5 s,
    # some 3,600 sleeping sessions kept this machine's 2 cores busy (KEDA and the push
    # scaler) and KEDA made their HPAs ever slower. What is counted here does not depend on
    # it, so these sessions poll every 5 minutes.
    url, store = database(stack, 1)
    settings = stack.settings.replace(namespace=namespace, archive_after_seconds=600,
                                      keda_polling_interval_seconds=300, redis_url=url)
    base_objects, base_keys, base_size = _measure(stack, namespace, etcd)

    began = time.monotonic()
    ids = _sleeping_sessions(stack, settings, store, count)
    created_in = time.monotonic() - began
    # KEDA makes the HPAs at about 2 a second here (its client: 20 requests/s by default).
    wait_until(lambda: _hpas(stack, namespace) >= count, timeout=600 + count / 2, interval=30,
               what=f"KEDA's HPAs for {count} ScaledObjects")
    sleeping = _measure(stack, namespace, etcd)
    print(f"    {count} sleeping: {sleeping[0]} objects, {sleeping[1]} etcd keys, "
          f"{sleeping[2] / 2**20:.1f} MiB (created in {created_in:.0f}s)", flush=True)

    # All but ACTIVE idle past ARCHIVE_AFTER_SECONDS: the archiver's passes, as its leader
    # runs them (BUNDLE_CONCURRENCY sessions' deletes at once), until every archive's objects
    # are gone (KEDA drops its finalizer from each ScaledObject, the garbage collector takes
    # ReplicaSets, EndpointSlices and KEDA's HPAs).
    # ACTIVE of them had activity just now (creating thousands of bundles and waiting for
    # KEDA takes longer than ARCHIVE_AFTER_SECONDS, so the first ones made would be idle).
    idle = ids[ACTIVE:]
    store.redis.zadd(BUNDLED_INDEX, {**dict.fromkeys(idle, time.time() - 3600),
                                     **dict.fromkeys(ids[:ACTIVE], time.time())})
    kube = stack.client(namespace)
    archiver = Archiver(settings, store, kube, Tiers(settings, store, kube))
    began = time.monotonic()
    archived = 0
    with ThreadPoolExecutor(settings.bundle_concurrency) as pool:
        while archived < len(idle):
            done = archiver.archive_idle(pool)["archived"]
            if not done:
                break
            archived += done
        archive_seconds = time.monotonic() - began
        print(f"    archived {archived} in {archive_seconds:.0f}s", flush=True)
        wait_until(lambda: not archiver.archive_idle(pool)["sweeping"], timeout=900 + count / 5,
                   interval=5, what="no archive left with objects")
    swept_seconds = time.monotonic() - began
    # Then the garbage collector takes their dependents (ReplicaSets, EndpointSlices, KEDA's
    # HPAs): counted until the namespace holds what the ACTIVE sessions' bundles have (the
    # figure below says if it never got there).
    expected = (sleeping[0] - base_objects) * ACTIVE / count + base_objects
    with contextlib.suppress(WaitTimedOut):
        wait_until(lambda: _objects(stack, namespace) <= expected * 1.02,
                   timeout=600 + count / 10, interval=5, what="the dependents collected")
    collected_seconds = time.monotonic() - began
    after = _measure(stack, namespace, etcd)
    print(f"    {count} sessions, {ACTIVE} active: {after[0]} objects, {after[1]} etcd keys, "
          f"{after[2] / 2**20:.1f} MiB (archives' own objects gone after {swept_seconds:.0f}s, "
          f"their dependents after {collected_seconds:.0f}s)", flush=True)

    per_session = (sleeping[0] - base_objects) / count
    expected_active = per_session * ACTIVE
    figure.rows += [
        Row(f"objects, {count:,} sessions asleep", "", [sleeping[0] - base_objects]),
        Row(f"objects, {count:,} sessions, {ACTIVE} active, rest archived", "",
            [after[0] - base_objects], ratios=[(after[0] - base_objects) / expected_active],
            baseline=f"{ACTIVE} sleeping sessions' objects", target=Target("<=", 1.1, on="ratio")),
        Row(f"etcd keys, {count:,} asleep", "", [sleeping[1] - base_keys]),
        Row(f"etcd keys, {ACTIVE} active + archived", "", [after[1] - base_keys],
            ratios=[(after[1] - base_keys) / max(1, sleeping[1] - base_keys)],
            baseline="all asleep"),
        Row(f"etcd size, {count:,} asleep", "MiB", [(sleeping[2] - base_size) / 2**20]),
        Row(f"etcd size, {ACTIVE} active + archived", "MiB", [(after[2] - base_size) / 2**20],
            ratios=[(after[2] - base_size) / max(1, sleeping[2] - base_size)],
            baseline="all asleep"),
        Row("archive pass: sessions archived (objects deleted)", "sessions/s",
            [archived / max(archive_seconds, 1e-9)]),
        Row("archives' objects gone (KEDA's finalizers)", "sessions/s",
            [archived / max(swept_seconds, 1e-9)]),
        Row("archives' dependents gone too (garbage collector)", "sessions/s",
            [archived / max(collected_seconds, 1e-9)]),
    ]
    figure.data["objects"] = {"sessions": count, "active": ACTIVE, "base": base_objects,
                              "sleeping": sleeping, "archived": after,
                              "archive_seconds": archive_seconds,
                              "swept_seconds": swept_seconds,
                              "collected_seconds": collected_seconds}
    stack.cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=900s",
                          check=False)

    # The lighter set: objects and etcd bytes per session, against the default set's.
    light_count = max(50, count // 10)
    namespace = "bench-tiers-light"
    stack.namespace(namespace)
    light = settings.replace(namespace=namespace, templates_dir=REPO_ROOT / "templates-light")
    base_objects, _, base_size = _measure(stack, namespace, etcd)
    _sleeping_sessions(stack, light, store, light_count)
    wait_until(lambda: _hpas(stack, namespace) >= light_count, timeout=900, interval=15,
               what="KEDA's HPAs for the light bundles")
    light_after = _measure(stack, namespace, etcd)
    light_per_session = (light_after[0] - base_objects) / light_count
    figure.rows += [
        Row("objects per sleeping session, default set", "", [per_session]),
        Row("objects per sleeping session, light set (no Service)", "", [light_per_session],
            ratios=[light_per_session / per_session], baseline="default set"),
        Row("etcd KiB per sleeping session, light set", "KiB",
            [(light_after[2] - base_size) / light_count / 1024]),
    ]
    stack.cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=900s",
                          check=False)


def _wake_figure(ctx: Context, stack: Stack, figure: Figure) -> None:
    settings = stack.settings.replace(archive_after_seconds=600)
    sleeper, archived = Session(stack, settings), Session(stack, settings)
    archiver = Archiver(settings, stack.store, archived.kube,
                        Tiers(settings, stack.store, archived.kube))
    turns = (2 if ctx.quick else 3) * ctx.rounds
    samples: dict[str, list[float]] = {"sleeping": [], "archived": []}
    for turn in range(turns):
        sleeper.to_zero()
        samples["sleeping"].append(sleeper.chat_to_reply())
        archived.to_zero()
        assert archiver.archive(archived.id, time.time() + 1) == "archived"
        # Measured from an archive that is done: pod gone, and every object (KEDA's finalizer
        # on the ScaledObject dropped), else the restore waits for that first.
        wait_until(lambda: not archived.pods() and not archiver.finish_sweeps()["sweeping"],
                   timeout=120, what="the archived session's pod and objects gone")
        samples["archived"].append(archived.chat_to_reply())
        print(f"    turn {turn + 1}/{turns}: sleeping {samples['sleeping'][-1]:.2f}s, "
              f"archived {samples['archived'][-1]:.2f}s", flush=True)
    base = samples["sleeping"]
    figure.rows += [
        Row("chat -> reply, sleeping (objects kept)", "s", base),
        Row("chat -> reply, archived (bundle re-applied)", "s", samples["archived"],
            ratios=[a / s for a, s in zip(samples["archived"], base, strict=True)],
            baseline="sleeping"),
        Row("archived - sleeping, per turn", "s",
            [a - s for a, s in zip(samples["archived"], base, strict=True)],
            target=Target("<=", WAKE_MARGIN_SECONDS, "s")),
    ]
    figure.data["wake"] = samples


def _rss_kib(pid: int) -> int:
    """Resident memory of a process and its children (gunicorn: master + workers)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines()
                          if ":" in line)
        except OSError:
            continue
        pids = (status.parent.name, fields.get("PPid", "").strip())
        if str(pid) in pids and "VmRSS" in fields:
            total += int(fields["VmRSS"].split()[0])
    return total


def _archived_records(store: Store, count: int) -> None:
    now = utc_now()
    pipe = store.redis.pipeline(transaction=False)
    queued = Store(pipe, session_ttl_seconds=store.db.session_ttl,  # type: ignore[arg-type]
                   activity_ttl_seconds=store.db.activity_ttl)
    ids = [names.new_session_id() for _ in range(count)]
    for session_id in ids:
        queued.records.create_session(session_id, user_id="bench", now=now,
                              token_hash=hash_token(secrets.token_urlsafe(16)))
        queued.archive(session_id, idle_since=time.time() + 1, lock_token="bench",
                       lock_seconds=1)
    pipe.execute()


def _answers(client: Client) -> bool:
    try:
        return client.request("GET", "/livez")[0] == 200
    except OSError:
        return False


def _memory_figure(ctx: Context, stack: Stack, figure: Figure) -> None:
    namespace = "bench-tiers-memory"
    stack.namespace(namespace)
    url, store = database(stack, 2)  # this namespace's worker's
    port = int(stack.settings.scaler_port) + 1
    env = {"REDIS_URL": url, "NAMESPACE": namespace,
           "KUBECONFIG": str(stack.cluster.kubeconfig), "API_KEYS": API_KEY,
           "LOG_LEVEL": "WARNING", "WEB_CONCURRENCY": "1", "RATE_LIMITS_ENABLED": "false",
           "ARCHIVE_AFTER_SECONDS": "600", "RECONCILE_INTERVAL_SECONDS": "5",
           "RECONCILE_GRACE_SECONDS": "0", "POD_URL_TEMPLATE": "http://{pod_ip}:{port}",
           "SCALER_TLS_DIR": str(stack.tls / "server"), "SCALER_PORT": "0",
           "SCALER_ADDRESS": f"127.0.0.1:{stack.port}", "WORKER_HEALTH_PORT": "0",
           "BIND_ADDRESS": "127.0.0.1", "PORT": str(port)}
    api = ctx.spawn("tiers-api", [sys.executable, "-m", "service", "serve"], env, port=port)
    worker = ctx.spawn("tiers-worker", [sys.executable, "-m", "service", "worker"], env)
    client = Client(port, {"X-API-Key": API_KEY})
    try:
        wait_until(lambda: _answers(client), timeout=60, what="the API process", daemon=api)
        time.sleep(5)
        worker.check_running()
        have = 0
        rss: dict[str, list[float]] = {"api": [], "worker": []}
        for size in MEMORY_SIZES:
            _archived_records(store, size - have)
            have = size
            # Every process has had to read them: pages of /sessions, the figures, and the
            # worker's reconcile passes over every record.
            cursor = None
            for _ in range(20):
                path = "/sessions?limit=500" + (f"&cursor={cursor}" if cursor else "")
                cursor = client.json("GET", path)["next_cursor"]
                if cursor is None:
                    break
            client.request("GET", "/metrics")
            time.sleep(15)  # three reconcile passes
            rss["api"].append(_rss_kib(api.pid) / 1024)
            rss["worker"].append(_rss_kib(worker.pid) / 1024)
            print(f"    {size:,} records: API {rss['api'][-1]:.0f} MiB, worker "
                  f"{rss['worker'][-1]:.0f} MiB", flush=True)
        for name in ("api", "worker"):
            small, large = rss[name]
            who = "API (gunicorn, 1 worker)" if name == "api" else "worker"
            figure.rows += [
                Row(f"{who} RSS, {MEMORY_SIZES[0]:,} records", "MiB", [small]),
                Row(f"{who} RSS, {MEMORY_SIZES[1]:,} records", "MiB", [large],
                    ratios=[large / small], baseline=f"{MEMORY_SIZES[0]:,} records",
                    target=Target("<=", MEMORY_GROWTH_TARGET, on="ratio")),
            ]
        figure.data["memory_mib"] = rss
    finally:
        client.close()
        api.stop()
        worker.stop()


def tiers(ctx: Context) -> Figure:
    figure = Figure("tiers", "Archived vs sleeping sessions: cluster objects, etcd, wake, "
                    "control-plane memory (local cluster, real KEDA)")
    count = _sessions(ctx)
    # The stack's worker does not archive: the bench runs the archiver's passes itself, in
    # the namespace it measures (one Redis serves one sessions namespace in production).
    stack = Stack(ctx, archive_after_seconds=0)
    try:
        _wake_figure(ctx, stack, figure)
        _objects_figure(ctx, stack, figure, count)
        _memory_figure(ctx, stack, figure)
        figure.notes.append(
            f"objects: {KINDS.replace(',', ', ')} in the sessions namespace; sleeping "
            "bundles are applied at 0 replicas with records (as KEDA leaves idle sessions); "
            f"archiving is the worker's own pass. etcd: keys under /registry and the database "
            "size after compaction and defragmentation, less what was there before.")
    finally:
        stack.close()
    return figure
