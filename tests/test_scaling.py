"""Scaling that sees everything: the work set every scaler reads, the push scaler KEDA dials,
sleep that cannot drift, a status watch with a deadline, a delivery deadline, and a worker
whose /healthz tells when a loop stalls. Real Redis, the real API server, the demo agent and
the worker's own servers; KEDA itself dials the push scaler in tests/cluster."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests
import yaml

from devcluster.processes import wait_until
from service import kube as kube_module
from service import store as store_module
from service.bundle import KindRef
from service.core import names
from service.core.transitions import Actor
from service.kube import Kube
from service.kube import watching as watching_module
from service.pods import PodClient, PodError
from service.store import keys as store_keys
from service.worker import Worker
from service.worker.push_scaler import ScalerServer, protos, services
from service.worker.reconciler import Reconciler

SCALED_OBJECT = KindRef("keda.sh/v1alpha1", "ScaledObject")


def ref(session_id: str):
    return protos.ScaledObjectRef(name=names.object_name(session_id), namespace="sessions",
                                  scalerMetadata={"sessionId": session_id})


def scaler_stub(port: int, certs: Path, *, client_certificate: bool = True):
    client = certs / "client"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(client / "ca.crt").read_bytes(),
        private_key=(client / "tls.key").read_bytes() if client_certificate else None,
        certificate_chain=(client / "tls.crt").read_bytes() if client_certificate else None)
    channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials)
    return services.ExternalScalerStub(channel), channel


@pytest.fixture
def scaler_servers(settings, scaler_certs):
    """Two worker replicas' push scalers on one Redis, as a Deployment of two would have."""
    servers = [ScalerServer(store_module.Store.from_url(
        settings.redis_url, socket_timeout_seconds=2, session_ttl_seconds=3600,
        activity_ttl_seconds=settings.activity_ttl_seconds), port=0,
        tls_dir=scaler_certs / "server") for _ in range(2)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


# -- one truth: the work set ---------------------------------------------------------------

def test_a_claimed_message_whose_pod_died_stays_work_until_it_is_delivered(
        settings, store, kube, make_agent, make_api, mark_ready, running_worker, status_watch):
    """The pod dies under a delivery: the message is in flight, not queued. It must keep the
    session active past IDLE_TIMEOUT (a queue-length trigger would let KEDA scale to 0 and
    strand it), and be delivered once a pod answers again."""
    agent = make_agent().start()
    settings = settings.replace(pod_url_template=agent.url, idle_timeout_seconds=3,
                                keda_cooldown_period_seconds=1, delivery_backoff_seconds=0.3)
    api = make_api(settings)
    session_id = api.create()
    worker = Worker(settings, store_module.Store.from_url(
        settings.redis_url, socket_timeout_seconds=2, session_ttl_seconds=3600,
        activity_ttl_seconds=settings.activity_ttl_seconds), kube, watch_timeout_seconds=1)
    with status_watch(worker):
        mark_ready(session_id)
        wait_until(lambda: api.status(session_id)["status"] == "running", timeout=10,
                   what="running")
        agent.kill()  # the pod dies
        code, body = api.chat(session_id, "are you still there?", "m-1")
        assert (code, body["status"]) == (202, "queued")  # the forward failed: kept in flight
        time.sleep(settings.activity_ttl_seconds + 1.5)  # past the idle window
        assert store.redis.lrange(store_keys.queue_key(session_id), 0, -1) == []
        assert store.records.work([session_id]) == {session_id: 2}  # the message and the activity
        assert store.redis.ttl(store_module.work_key(session_id)) == -1

        agent.start()  # a pod again (KEDA kept it at 1; the Deployment made a new one)
        with running_worker(worker):
            wait_until(lambda: store.records.work([session_id]) == {session_id: 1}, timeout=15,
                       what="the in-flight message settled")
            # Settled: the idle clock runs from the reply.
            assert store.redis.pttl(store_module.work_key(session_id)) > 0
    assert [m["state"] for m in api.messages(session_id)] == ["delivered"]


def test_a_slept_session_with_waiting_messages_is_not_polled(settings, store, make_api,
                                                             make_worker, mark_ready,
                                                             status_watch):
    api = make_api(settings)
    session_id = api.create()
    assert api.chat(session_id, "for later", "m-1")[0] == 202  # no pod yet: queued
    assert api.client.post(f"/session/{session_id}/sleep", headers=api.headers).status_code == 200
    worker = make_worker(settings)
    worker.deliver_due()
    worker.delivery_pool.submit(lambda: None).result(5)  # the drain it started has run
    wait_until(lambda: session_id not in store.messages.due_sessions(),
               timeout=10, what="out of the pending index")
    assert store.redis.zscore(store_keys.PENDING_INDEX, session_id) is None
    assert store.records.work([session_id]) == {session_id: -1}  # asleep: no scaler wakes it
    assert store.messages.queue_length(session_id) == 1  # kept

    # Woken and ready: due at once, no poll needed.
    assert api.client.post(f"/session/{session_id}/wake", headers=api.headers).status_code in (
        200, 202)
    with status_watch(worker):
        mark_ready(session_id)
        wait_until(lambda: session_id in store.messages.due_sessions(), timeout=10,
                   what="due once running")


# -- sleep that cannot drift -----------------------------------------------------------------

def test_a_pause_flag_that_drifted_from_the_cluster_neither_blocks_a_wake_nor_lasts(
        settings, store, kube, make_api):
    settings = settings.replace(reconcile_grace_seconds=0)
    api = make_api(settings)
    session_id = api.create()
    # A sleep that died between its two writes: the annotation set, the flag not.
    assert kube.set_paused(session_id, True)
    assert store.records.get_session(session_id)["paused"] == "0"
    # The wake sends the unpause anyway.
    assert api.client.post(f"/session/{session_id}/wake", headers=api.headers).status_code in (
        200, 202)
    assert not kube.is_paused(session_id)

    # The reconciler sets the flag back to what the cluster does, both ways.
    kube.set_paused(session_id, True)
    reconciler = Reconciler(settings, store, kube)
    assert reconciler.run_once()["pauses_repaired"] == 1
    assert store.records.get_session(session_id)["paused"] == "1"
    kube.set_paused(session_id, False)
    assert reconciler.run_once()["pauses_repaired"] == 1
    assert store.records.get_session(session_id)["paused"] == "0"
    assert reconciler.run_once()["pauses_repaired"] == 0


@pytest.mark.filterwarnings("ignore::ResourceWarning",
                            "ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_chat_whose_resume_fails_is_still_accepted_and_its_retry_resumes(
        settings, store, kube, apiserver_proxy, kube_through, make_api):
    proxy = apiserver_proxy
    api = make_api(settings, kube=kube_through(proxy))
    session_id = api.create()
    assert api.client.post(f"/session/{session_id}/sleep",
                           headers=api.headers).status_code == 200
    proxy.refuse()  # the ScaledObject cannot be unpaused: the API server is away
    code, body = api.chat(session_id, "kept anyway", "m-1")
    assert (code, body["status"]) == (202, "queued")  # accepted: never a 503 after it
    assert store.messages.queue_length(session_id) == 1
    assert store.records.get_session(session_id)["paused"] == "1"  # not resumed...
    assert kube.is_paused(session_id)
    proxy.forward()
    code, body = api.chat(session_id, "kept anyway", "m-1")  # ...until the retry
    assert (code, body["status"]) == (202, "queued")
    assert not kube.is_paused(session_id)
    assert store.records.get_session(session_id)["paused"] == "0"
    assert store.messages.queue_length(session_id) == 1  # the retry was not a second message


# -- the push scaler -------------------------------------------------------------------------

def test_the_push_scaler_answers_from_the_work_set_over_mutual_tls(
        settings, store, make_api, scaler_servers, scaler_certs):
    api = make_api(settings)
    session_id = api.create()
    stub, channel = scaler_stub(scaler_servers[0].bound_port, scaler_certs)
    with channel:
        assert stub.IsActive(ref(session_id), timeout=5).result  # new: active for a while
        store.records.clear_activity(session_id)
        assert not stub.IsActive(ref(session_id), timeout=5).result  # idle
        assert api.chat(session_id, "hello", "m-1")[0] == 202
        assert stub.IsActive(ref(session_id), timeout=5).result
        [spec] = stub.GetMetricSpec(ref(session_id), timeout=5).metricSpecs
        metrics = stub.GetMetrics(protos.GetMetricsRequest(
            scaledObjectRef=ref(session_id), metricName=spec.metricName), timeout=5)
        assert [m.metricValue for m in metrics.metricValues] == [2]  # the message + activity
        assert api.client.post(f"/session/{session_id}/sleep",
                               headers=api.headers).status_code == 200
        assert not stub.IsActive(ref(session_id), timeout=5).result  # slept: held at 0
        with pytest.raises(grpc.RpcError) as refused:
            stub.IsActive(protos.ScaledObjectRef(name="x", scalerMetadata={"sessionId": "../x"}),
                          timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Without a client certificate signed by the CA, nothing is answered.
    stub, channel = scaler_stub(scaler_servers[0].bound_port, scaler_certs,
                                client_certificate=False)
    with channel, pytest.raises(grpc.RpcError) as refused:
        stub.IsActive(ref(session_id), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_chat_is_pushed_at_once_to_a_stream_on_any_replica(
        settings, store, make_api, scaler_servers, scaler_certs):
    """KEDA's stream for the session may have landed on either replica; the chat is admitted
    by an API process that talks to neither. The stream still says "active" at once."""
    api = make_api(settings)
    session_id = api.create()
    store.records.clear_activity(session_id)
    for server in scaler_servers:
        stub, channel = scaler_stub(server.bound_port, scaler_certs)
        with channel:
            stream = stub.StreamIsActive(ref(session_id))
            received: list[float] = []

            def read(stream=stream, received=received) -> None:
                try:
                    for answer in stream:
                        if answer.result:
                            received.append(time.monotonic())
                except grpc.RpcError:
                    pass  # cancelled at the end of the check

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            wait_until(lambda srv=server: srv.scaler.open_streams == 1, timeout=10,
                       what="the stream open")
            time.sleep(0.3)
            assert received == []  # idle: nothing pushed
            admitted = time.monotonic()
            assert api.chat(session_id, "wake up", f"m-{server.bound_port}")[0] == 202
            wait_until(lambda got=received: got, timeout=2, interval=0.005, what="the push")
            assert received[0] - admitted < 0.5
            stream.cancel()
            reader.join(5)
        # Settle the message so the next replica starts from an idle session again.
        claim = store.messages.claim_delivery(session_id, lease_seconds=5, max_attempts=5)
        if claim is None:
            store.records.set_status(session_id, "running", actor=Actor.WATCH)
            claim = store.messages.claim_delivery(session_id, lease_seconds=5, max_attempts=5)
        store.messages.finish_delivery(session_id, envelope=claim["envelope"],
                              lease_token=claim["lease_token"], delivered=True,
                              reply_or_error="{}", max_attempts=5, retry_in_seconds=0)
        store.records.clear_activity(session_id)
        assert store.records.work([session_id]) == {session_id: 0}


# -- deadlines -------------------------------------------------------------------------------

class TricklingPod:
    """Answers /chat with headers at once, then one byte every `gap` seconds, forever."""

    def __init__(self, gap: float = 0.3) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.gap = gap
        self.connections: list[list[float]] = []  # [opened, closed]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        span = [time.monotonic(), 0.0]
        self.connections.append(span)
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n\r\n{")
            while True:
                time.sleep(self.gap)
                conn.sendall(b" ")
        except OSError:
            pass
        finally:
            span[1] = time.monotonic()
            conn.close()

    def close(self) -> None:
        self.listener.close()


def test_a_trickling_pod_gets_no_second_concurrent_delivery(
        settings, store, make_api, make_worker, mark_ready, running_worker, status_watch):
    pod = TricklingPod()
    settings = settings.replace(pod_url_template=f"http://127.0.0.1:{pod.port}",
                                pod_timeout_seconds=1.5, delivery_lease_seconds=3,
                                delivery_backoff_seconds=0.2, delivery_max_attempts=3)
    try:
        started = time.monotonic()
        with pytest.raises(PodError, match="within POD_TIMEOUT_SECONDS"):
            PodClient(settings).chat("s" + "a" * 16, "hi", "m-0")
        assert time.monotonic() - started < 2.0  # the deadline, not one read's timeout

        api = make_api(settings)
        session_id = api.create()
        worker = make_worker(settings)
        with status_watch(worker), running_worker(worker):
            mark_ready(session_id)
            wait_until(lambda: api.status(session_id)["status"] == "running", timeout=10,
                       what="running")
            api.chat(session_id, "take your time", "m-1")
            wait_until(lambda: [m["state"] for m in api.messages(session_id)] == ["failed"],
                       timeout=20, what="the message failed after its attempts")
    finally:
        pod.close()
    spans = sorted(pod.connections)[1:]  # the first one was the direct PodClient call
    assert len(spans) == 3  # the forward, then two retries: one attempt each, no more
    for earlier, later in itertools.pairwise(spans):
        assert earlier[1] <= later[0] + 0.05, spans  # each ended before the next began
    assert all(end - begin < settings.delivery_lease_seconds for begin, end in spans)


class FreezingProxy:
    """A TCP relay to the API server whose current connections can be frozen: bytes stop
    flowing both ways and nothing is closed, as over a half-open connection. Connections
    made after a freeze flow normally."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.generation = 0
        self.accepted = 0
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.generation += 1

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            self.accepted += 1
            born = self.generation
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, born), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, born: int) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                while self.generation != born:
                    time.sleep(3600)  # frozen: hold everything, close nothing
                sink.sendall(data)
        except OSError:
            pass
        finally:
            if self.generation == born:
                sink.close()

    def close(self) -> None:
        """Drop every connection, frozen ones included (their readers then see an EOF)."""
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def test_a_stalled_status_watch_is_detected_and_restarted(
        settings, store, kube, apiserver, make_api, monkeypatch, tmp_path, mark_ready,
        status_watch):
    monkeypatch.setattr(watching_module, "WATCH_READ_MARGIN_SECONDS", 2)
    kubeconfig = yaml.safe_load(Path(apiserver.kubeconfig).read_text())
    server = kubeconfig["clusters"][0]["cluster"]["server"]
    host, port = server.split("//")[1].rsplit(":", 1)
    proxy = FreezingProxy((host, int(port)))
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://{host}:{proxy.port}"
    proxied_config = tmp_path / "kubeconfig-via-proxy"
    proxied_config.write_text(yaml.safe_dump(kubeconfig))
    proxied = Kube(kube_module.load_api_client(str(proxied_config)), kube.namespace,
                   request_timeout_seconds=5)
    api = make_api(settings)
    session_id = api.create()
    worker = Worker(settings, store, proxied, watch_timeout_seconds=2)
    try:
        with status_watch(worker):
            wait_until(lambda: store.records.get_session(session_id)["status"] == "waking",
                       timeout=10, what="the watch's first view")
            assert proxy.accepted >= 2, "the watches do not go through the proxy"
            before = proxy.accepted
            proxy.freeze()  # the watch's connection goes silent; the server's end never comes
            mark_ready(session_id)
            # Seen through a new watch: the frozen one hit its read deadline (2 s + 2 s).
            wait_until(lambda: store.records.get_session(session_id)["status"] == "running",
                       timeout=15, interval=0.2, what="the status through a restarted watch")
            assert proxy.accepted > before  # over a new connection
            proxy.close()  # so the stop does not wait on the frozen sockets' deadlines
    finally:
        proxy.close()
        worker.delivery_pool.shutdown(wait=False)


# -- liveness --------------------------------------------------------------------------------

def test_the_worker_healthz_fails_when_a_loop_stalls(settings, store, kube, make_worker,
                                                      monkeypatch):
    worker = make_worker(settings)
    worker.heartbeats.allowances["delivery"] = 1.0
    stop, wedged = threading.Event(), threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"health_port": 0},
                              daemon=True)
    thread.start()
    try:
        wait_until(lambda: worker.health is not None, timeout=10, what="the health server")
        url = f"http://127.0.0.1:{worker.health.port}/healthz"
        wait_until(lambda: requests.get(url, timeout=2).status_code == 200, timeout=10,
                   what="healthy")
        assert requests.get(url, timeout=2).json() == {"status": "ok"}

        real_due = worker.store.messages.due_sessions

        def hang(**kwargs):
            if not stop.is_set():
                wedged.wait(30)  # a Redis read that never returns
            return real_due(**kwargs)

        monkeypatch.setattr(worker.store.messages, "due_sessions", hang)
        wait_until(lambda: requests.get(url, timeout=2).status_code == 503, timeout=10,
                   what="/healthz to report the stalled delivery loop")
        assert "delivery" in requests.get(url, timeout=2).json()["stalled"]
    finally:
        stop.set()
        wedged.set()
        thread.join(20)
