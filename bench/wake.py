"""Wake and scaler cost on the local cluster with real KEDA: push scaler vs redis triggers.

1. `wake`: chat-to-reply on a session KEDA had scaled to 0 (idle, not slept), with the push
   scaler and with the redis triggers (same pollingInterval, 5 s, the production default),
   side by side with a bare `scale 0 -> 1 -> Ready` of the same pod (a Deployment from the
   same template with no ScaledObject). Interleaved, one of each per turn.
2. `scalers`: 100 / 300 / 1,000 sessions' ScaledObjects per mode (Deployments at 0, as
   sleeping sessions are): Redis connections KEDA holds, gRPC connections to the worker,
   KEDA operator CPU, and the activation latency of one more session under that load.

Everything runs on this machine: the stack (devcluster.LocalCluster), Redis on loopback, the
API in-process and a worker in-process serving the push scaler on loopback.
"""

from __future__ import annotations

import copy
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devcluster import apiserver, certs
from devcluster import cluster as cluster_module
from devcluster.ports import free_port
from devcluster.processes import wait_until
from service import bundle
from service.core import names
from service.core.config import TEMPLATES_OF_MODE, Settings
from service.http import create_app
from service.kube import Kube, load_api_client
from service.store import Store, keda_keys
from service.worker import Worker

from .harness import Context, percentile
from .report import Figure, Row, Target

POLLING_SECONDS = 5
API_KEY = "bench-wake-" + "k" * 16
PUSH_WAKE_TARGET = 1.2  # x the bare scale-up


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


def _established(port: int, *, pid: int | None = None, remote: bool = False) -> int:
    """Established TCP connections on `port` (ours: sport; with `remote`, to it: dport),
    only those of process `pid` when given."""
    side = "dport" if remote else "sport"
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( {side} = :{port} )"],
                         capture_output=True, text=True, check=False).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    if pid is not None:
        lines = [line for line in lines if f"pid={pid}," in line]
    return len(lines)


class Stack:
    """The cluster, Redis, certificates, a worker serving the push scaler, and an API per
    scaler mode: what both figures share."""

    def __init__(self, ctx: Context, **settings: object) -> None:
        """`settings`: changes to the stack's settings (its worker's among them)."""
        self.ctx = ctx
        self.cluster = cluster_module.LocalCluster().start()
        self.redis = apiserver.RedisServer(ctx.workdir / "wake-redis").start()
        self.tls = certs.scaler_certs(ctx.workdir / "scaler-certs", "127.0.0.1", "localhost")
        self.port = free_port()
        self.settings = Settings(
            api_keys=(API_KEY,), namespace="bench-wake", redis_url=self.redis.url,
            pod_url_template="http://{pod_ip}:{port}", keda_redis_host="127.0.0.1",
            keda_redis_port=self.redis.port, keda_polling_interval_seconds=POLLING_SECONDS,
            keda_cooldown_period_seconds=1, keda_initial_cooldown_period_seconds=0,
            idle_timeout_seconds=60, rate_limits_enabled=False,
            scaler_address=f"127.0.0.1:{self.port}", scaler_port=self.port,
            scaler_tls_dir=self.tls / "server", user_pod_cpu_request="20m",
            user_pod_memory_request="32Mi", user_pod_cpu_limit="500m",
            user_pod_memory_limit="128Mi", delivery_backoff_seconds=0.2,
            worker_poll_interval_seconds=0.05).replace(**settings)
        self.store = Store.from_url(self.redis.url, socket_timeout_seconds=10,
                                    session_ttl_seconds=86400,
                                    activity_ttl_seconds=self.settings.activity_ttl_seconds)
        self.kubes: list[Kube] = []
        self.namespace(self.settings.namespace)
        self.kube = self.client(self.settings.namespace)
        self.worker = Worker(self.settings, self.store, self.kube, watch_timeout_seconds=5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.worker.run, args=(self._stop,),
                                        kwargs={"scaler": True}, daemon=True)
        self._thread.start()
        wait_until(self._listening, timeout=30, what="the push scaler")

    def _listening(self) -> bool:
        out = subprocess.run(["ss", "-Htln", f"( sport = :{self.port} )"], capture_output=True,
                             text=True, check=False).stdout
        return bool(out.strip())

    def client(self, namespace: str) -> Kube:
        kube = Kube(load_api_client(str(self.cluster.kubeconfig)), namespace)
        self.kubes.append(kube)
        return kube

    def namespace(self, name: str) -> None:
        cluster_module.prepare_sessions_namespace(
            self.cluster.kubeconfig, name, redis_password=self.redis.password,
            scaler_tls=self.tls)

    def settings_for(self, mode: str, namespace: str | None = None) -> Settings:
        settings = self.settings if mode == "push" else self.settings.replace(
            keda_scaler="redis", templates_dir=TEMPLATES_OF_MODE["redis"])
        return settings.replace(namespace=namespace) if namespace else settings

    def keda_pid(self) -> int:
        return self.cluster.keda.operator.pid

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for kube in self.kubes:
            kube.close()
        self.redis.stop()
        self.cluster.stop()


class Session:
    """One session through the real API, woken from 0 by a chat."""

    def __init__(self, stack: Stack, settings: Settings) -> None:
        self.stack = stack
        self.kube = stack.client(settings.namespace)
        self.app = create_app(settings, kube=self.kube, store=Store.from_url(
            settings.redis_url, socket_timeout_seconds=10, session_ttl_seconds=86400,
            activity_ttl_seconds=settings.activity_ttl_seconds))
        self.client = self.app.test_client()
        response = self.client.post("/session/create", json={"user_id": "bench"},
                                    headers={"X-API-Key": API_KEY})
        assert response.status_code == 201, response.json
        self.id = response.json["uuid"]
        self.count = 0

    def replicas(self) -> int:
        return self.kube.deployment_state(self.id).replicas

    def pods(self) -> list[dict]:
        return self.kube.list_objects(bundle.KindRef("v1", "Pod"),
                                      bundle.label_selector(self.id))

    def to_zero(self) -> None:
        """Idle, then at 0 with its pod gone: KEDA's doing, as after IDLE_TIMEOUT."""
        self.stack.store.records.clear_activity(self.id)
        wait_until(lambda: self.replicas() == 0 and not self.pods(), timeout=120,
              what="KEDA scaling the idle session to 0", interval=0.2)

    def _chat(self) -> float:
        self.count += 1
        began = time.monotonic()
        response = self.client.post(f"/session/{self.id}/chat", headers={"X-API-Key": API_KEY},
                                    json={"message": "wake up", "message_id": f"w-{self.count}"})
        assert response.status_code in (200, 202), response.json
        return began

    def _replied(self) -> bool:
        messages, _ = self.stack.store.messages.list_messages(
            self.id, after=self.count - 1, limit=1, max_kept=1000)
        return bool(messages) and messages[0].get("state") == "delivered"

    def chat_to_reply(self) -> float:
        began = self._chat()
        wait_until(self._replied, timeout=120, what="the reply", interval=0.01)
        return time.monotonic() - began

    def chat_to_scaled(self) -> float:
        """Chat admitted -> KEDA set the Deployment to 1 (activation alone); then the reply
        is awaited too (unmeasured), so the session can go idle again."""
        began = self._chat()
        wait_until(lambda: self.replicas() == 1, timeout=120, what="KEDA scaling to 1",
                   interval=0.01)
        took = time.monotonic() - began
        wait_until(self._replied, timeout=120, what="the reply")
        return took


class BareDeployment:
    """The session pod's Deployment from the same template, no ScaledObject: `scale 0 -> 1`
    and wait for Ready, the floor any wake stands on."""

    NAME = "bare-agent"

    def __init__(self, stack: Stack) -> None:
        self.kube = stack.kube
        sample = names.new_session_id()
        rendered = bundle.render(sample, stack.settings, keda_keys(sample))
        deployment = copy.deepcopy(next(o for o in rendered.objects
                                        if o["kind"] == "Deployment"))
        labels = {"app": self.NAME}
        deployment["metadata"] = {"name": self.NAME, "namespace": stack.settings.namespace,
                                  "labels": labels}
        deployment["spec"]["replicas"] = 0
        deployment["spec"]["selector"] = {"matchLabels": labels}
        deployment["spec"]["template"]["metadata"] = {"labels": labels}
        stack.cluster.apply([deployment])
        from kubernetes import client as k8s

        self.apps = k8s.AppsV1Api(self.kube.api_client)
        self.core = k8s.CoreV1Api(self.kube.api_client)
        self.namespace = stack.settings.namespace

    def _ready(self) -> int:
        status = self.apps.read_namespaced_deployment_status(self.NAME, self.namespace).status
        return status.ready_replicas or 0

    def _scale(self, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(self.NAME, self.namespace,
                                                    {"spec": {"replicas": replicas}})

    def to_zero(self) -> None:
        self._scale(0)
        wait_until(lambda: not self.core.list_namespaced_pod(
            self.namespace, label_selector=f"app={self.NAME}").items, timeout=120,
            what="the bare pod gone", interval=0.2)

    def scale_to_ready(self) -> float:
        began = time.monotonic()
        self._scale(1)
        wait_until(lambda: self._ready() == 1, timeout=120, what="the bare pod Ready",
                   interval=0.01)
        return time.monotonic() - began


def wake(ctx: Context) -> Figure:
    figure = Figure("wake", "Chat-to-reply on a session at 0: push scaler vs redis triggers "
                    "vs a bare scale-up (local cluster, real KEDA)")
    stack = Stack(ctx)
    try:
        bare = BareDeployment(stack)
        sessions = {mode: Session(stack, stack.settings_for(mode)) for mode in ("push", "redis")}
        turns = (2 if ctx.quick else 4) * ctx.rounds
        samples: dict[str, list[float]] = {"bare": [], "push": [], "redis": []}
        for turn in range(turns):
            bare.to_zero()
            samples["bare"].append(bare.scale_to_ready())
            for mode, session in sessions.items():
                session.to_zero()
                samples[mode].append(session.chat_to_reply())
            print(f"    turn {turn + 1}/{turns}: " + ", ".join(
                f"{k} {v[-1]:.2f}s" for k, v in samples.items()), flush=True)
        bare.to_zero()
        base = samples["bare"]
        figure.rows.append(Row("bare scale 0->1 -> Ready", "s", base, p95s=[percentile(base, 95)]))
        for mode, title, target in (
                ("push", "chat -> reply, push scaler", Target("<=", PUSH_WAKE_TARGET, on="ratio")),
                ("redis", "chat -> reply, redis triggers", None)):
            values = samples[mode]
            figure.rows.append(Row(
                title, "s", values, p95s=[percentile(values, 95)],
                ratios=[v / b for v, b in zip(values, base, strict=True)],
                baseline="bare scale-up", target=target))
        figure.notes.append(
            f"{turns} wakes per mode, interleaved; pollingInterval {POLLING_SECONDS} s, the "
            "production default. A wake from 0 waits for KEDA to learn of the chat (push: at "
            "once; redis: at its next poll, up to pollingInterval) and for the pod to start.")
        figure.data = samples
    finally:
        stack.close()
    return figure


SIZES = (100, 300, 1000)


def _apply_sleeping_bundles(stack: Stack, kube: Kube, settings: Settings, count: int) -> None:
    """`count` more sessions' bundles at 0 replicas (sleeping sessions), no records: KEDA's
    view of a cluster full of idle sessions."""
    def one(_: int) -> None:
        session_id = names.new_session_id()
        rendered = bundle.render(session_id, settings, keda_keys(session_id))
        for obj in rendered.objects:
            if obj["kind"] == "Deployment":
                obj["spec"]["replicas"] = 0
        kube.apply(rendered)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))


def _hpas(stack: Stack, namespace: str) -> int:
    out = stack.cluster.kubectl("-n", namespace, "get", "hpa", "-o", "name", check=False).stdout
    return len(out.split())


def scalers(ctx: Context) -> Figure:
    figure = Figure("scalers", "KEDA's cost per mode at 100 / 300 / 1,000 ScaledObjects "
                    "(local cluster, real KEDA)")
    sizes = (50, 150) if ctx.quick else SIZES
    stack = Stack(ctx)
    try:
        latency: dict[str, dict[int, float]] = {}
        for mode in ("push", "redis"):
            namespace = f"bench-scale-{mode}"
            stack.namespace(namespace)
            settings = stack.settings_for(mode, namespace)
            kube = stack.client(namespace)
            # The probe lives where the worker delivers (the load's namespace has none).
            probe = Session(stack, stack.settings_for(mode))
            wait_until(lambda p=probe: p.replicas() == 1, timeout=120, what="the probe running")
            created = 0
            latency[mode] = {}
            for size in sizes:
                _apply_sleeping_bundles(stack, kube, settings, size - created)
                created = size
                wait_until(lambda n=namespace, s=size: _hpas(stack, n) >= s, timeout=900,
                      what=f"KEDA's HPAs for {size} ScaledObjects", interval=2)
                time.sleep(POLLING_SECONDS * 2)  # every scaler has polled at least once
                keda_redis = _established(stack.redis.port, pid=stack.keda_pid(), remote=True)
                grpc_conns = _established(stack.port)
                cpu0, t0 = _cpu_seconds(stack.keda_pid()), time.monotonic()
                time.sleep(20)
                cpu = (_cpu_seconds(stack.keda_pid()) - cpu0) / (time.monotonic() - t0)
                wakes = []
                for _ in range(2):
                    probe.to_zero()
                    wakes.append(probe.chat_to_scaled())
                latency[mode][size] = statistics.median(wakes)
                figure.rows.append(Row(
                    f"{mode} @{size}: Redis connections from KEDA", "", [keda_redis],
                    target=Target("<=", 2) if mode == "push" else None))
                figure.rows.append(Row(f"{mode} @{size}: gRPC connections to the scaler", "",
                                       [grpc_conns]))
                figure.rows.append(Row(f"{mode} @{size}: KEDA operator CPU", "%", [cpu * 100]))
                figure.rows.append(Row(f"{mode} @{size}: chat -> KEDA scaled to 1", "s", wakes,
                                       p95s=[max(wakes)]))
                print(f"    {mode} @{size}: redis conns {keda_redis}, grpc {grpc_conns}, "
                      f"KEDA CPU {cpu:.0%}, activation {latency[mode][size]:.2f}s", flush=True)
            stack.cluster.kubectl("delete", "namespace", namespace, "--wait=true",
                                  "--timeout=600s", check=False)
        for mode, by_size in latency.items():
            first = by_size[sizes[0]]
            doubled = next((size for size in sizes if by_size[size] >= 2 * first), None)
            figure.notes.append(
                f"{mode}: activation latency " + ", ".join(
                    f"{v:.2f}s @{k}" for k, v in by_size.items())
                + (f"; doubled by {doubled} ScaledObjects" if doubled else
                   f"; not doubled up to {sizes[-1]} ScaledObjects"))
        figure.data = {"latency": {m: {str(k): v for k, v in d.items()}
                                   for m, d in latency.items()}}
    finally:
        stack.close()
    return figure
