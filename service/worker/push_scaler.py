"""KEDA's external-push scaler, served by every worker replica (KEDA_SCALER=push).

KEDA keeps one gRPC connection per replica for all ScaledObjects and one StreamIsActive stream
per session (`../templates/scaledobject.yaml`). A session is active while its work set in Redis
is non-empty and it is not slept (`Store.work`). When a chat or a wake lands — on any API
process — its session id is published on Redis; every replica hears it and wakes the streams
it holds for that session, so activation does not depend on where KEDA's stream landed.
Pub/sub can miss a message (a reconnect): each stream also re-checks every RECHECK_SECONDS,
after a resubscribe at once, and KEDA polls IsActive every pollingInterval besides.

Served with grpc.aio on its own event loop thread: a stream is a coroutine, not a thread, so
thousands of sleeping sessions cost a few kilobytes each. Concurrent lookups are coalesced
into one Redis pipeline. Mutual TLS: only a client with a certificate signed by the CA in
SCALER_TLS_DIR (KEDA, through the TriggerAuthentication's Secret) gets an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from pathlib import Path

# gRPC's C core logs every refused TLS handshake at INFO otherwise (a client without our CA's
# certificate is refused, which is the point, not news).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
import grpc

from service.core import names
from service.core.errors import SessionManagerError
from service.store import Store
from service.worker.health import Heartbeats

log = logging.getLogger(__name__)

# grpc resolves the .proto against sys.path entries: make sure the package's parent is one
# (it is whenever `service` was imported from a checkout or the image's /app).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)
protos, services = grpc.protos_and_services("service/worker/proto/externalscaler.proto")

METRIC_NAME = "work"
RECHECK_SECONDS = 10.0
UNAVAILABLE_RETRY_SECONDS = 1.0


def session_of(ref) -> str | None:
    """The session a ScaledObjectRef is about: its trigger's `sessionId` metadata."""
    session_id = ref.scalerMetadata.get("sessionId", "")
    return session_id if names.is_session_id(session_id) else None


class WorkLookup:
    """`Store.work` for many concurrent callers: one pipeline per event-loop turn."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiting: dict[str, list[asyncio.Future]] = {}
        self._flush: asyncio.Task | None = None

    async def get(self, session_id: str) -> int:
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(session_id, []).append(future)
        if self._flush is None:
            self._flush = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        await asyncio.sleep(0)  # let the callers of this turn join the batch
        batch, self._waiting, self._flush = self._waiting, {}, None
        try:
            work = await asyncio.to_thread(self.store.records.work, list(batch))
        except Exception as err:  # noqa: BLE001 - every waiter gets the error
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(err)
            return
        for session_id, futures in batch.items():
            for future in futures:
                if not future.done():
                    future.set_result(work[session_id])


class WorkScaler(services.ExternalScalerServicer):
    def __init__(self, store: Store, *, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.lookup = WorkLookup(store)
        self.recheck_seconds = recheck_seconds
        self._streams: dict[str, set[asyncio.Event]] = {}

    # -- notifications (called on the loop) ----------------------------------------------

    def notify(self, session_id: str | None) -> None:
        """Wake the streams of one session, or of every session (None: something may have
        been missed)."""
        if session_id is None:
            events = [e for group in self._streams.values() for e in group]
        else:
            events = list(self._streams.get(session_id, ()))
        for event in events:
            event.set()

    @property
    def open_streams(self) -> int:
        return sum(len(group) for group in self._streams.values())

    # -- the four RPCs ---------------------------------------------------------------------

    async def _session(self, ref, context) -> str:
        session_id = session_of(ref)
        if session_id is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "scalerMetadata.sessionId is not a session id")
        return session_id  # type: ignore[return-value]

    async def _work(self, session_id: str, context) -> int:
        try:
            return await self.lookup.get(session_id)
        except SessionManagerError as err:
            # KEDA keeps the current replica count while its scaler errs.
            await context.abort(grpc.StatusCode.UNAVAILABLE, err.message)
            raise

    async def IsActive(self, request, context):  # noqa: N802 - gRPC method name
        session_id = await self._session(request, context)
        return protos.IsActiveResponse(result=await self._work(session_id, context) > 0)

    async def StreamIsActive(self, request, context):  # noqa: N802
        session_id = await self._session(request, context)
        wake = asyncio.Event()
        self._streams.setdefault(session_id, set()).add(wake)
        try:
            while True:
                wake.clear()
                try:
                    active = await self.lookup.get(session_id) > 0
                except SessionManagerError as err:
                    # Keep the stream: ending it makes KEDA back off for up to a minute.
                    log.warning("push scaler cannot read work: %s", err.message)
                    await asyncio.sleep(UNAVAILABLE_RETRY_SECONDS)
                    continue
                if active:  # KEDA ignores "inactive" pushes; it polls IsActive to scale down
                    yield protos.IsActiveResponse(result=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.recheck_seconds)
        finally:
            group = self._streams.get(session_id, set())
            group.discard(wake)
            if not group:
                self._streams.pop(session_id, None)

    async def GetMetricSpec(self, request, context):  # noqa: N802
        await self._session(request, context)
        return protos.GetMetricSpecResponse(
            metricSpecs=[protos.MetricSpec(metricName=METRIC_NAME, targetSize=1,
                                           targetSizeFloat=1.0)])

    async def GetMetrics(self, request, context):  # noqa: N802
        session_id = await self._session(request.scaledObjectRef, context)
        value = max(0, await self._work(session_id, context))
        return protos.GetMetricsResponse(metricValues=[
            protos.MetricValue(metricName=request.metricName or METRIC_NAME, metricValue=value,
                               metricValueFloat=float(value))])


def server_credentials(tls_dir: Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [((tls_dir / "tls.key").read_bytes(), (tls_dir / "tls.crt").read_bytes())],
        root_certificates=(tls_dir / "ca.crt").read_bytes(), require_client_auth=True)


class ScalerServer:
    """The scaler on its own thread and event loop, plus the thread that hears work
    notifications from Redis. `start()` returns once the port is bound."""

    def __init__(self, store: Store, *, port: int, tls_dir: Path | None,
                 heartbeats: Heartbeats | None = None,
                 recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.store = store
        self.port = port
        self.tls_dir = tls_dir
        self.heartbeats = heartbeats or Heartbeats()
        self.scaler = WorkScaler(store, recheck_seconds=recheck_seconds)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self.bound_port = 0

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._serve, name="scaler", daemon=True),
                         threading.Thread(target=self._listen, name="scaler-notify",
                                          daemon=True)]
        self._threads[0].start()
        self._ready.wait(30)
        if self._failed is not None:
            raise self._failed
        self._threads[1].start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:
            if not self._ready.is_set():
                self._failed = err
                self._ready.set()
            else:
                log.exception("push scaler stopped")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        server = grpc.aio.server(options=[
            # KEDA holds its connection for as long as it runs: let keepalives through.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10000),
        ])
        services.add_ExternalScalerServicer_to_server(self.scaler, server)
        address = f"[::]:{self.port}"
        if self.tls_dir is None:
            self.bound_port = server.add_insecure_port(address)
        else:
            self.bound_port = server.add_secure_port(address, server_credentials(self.tls_dir))
        await server.start()
        log.info("push scaler serving", extra={"port": self.bound_port,
                                               "tls": self.tls_dir is not None})
        self._ready.set()
        while not self._stop.is_set():
            self.heartbeats.beat("scaler")
            await asyncio.sleep(1)
        await server.stop(grace=2)

    def _notify(self, session_id: str | None) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.scaler.notify, session_id)

    def _listen(self) -> None:
        """Relay work notifications from Redis to the loop, resubscribing after errors."""
        while not self._stop.is_set():
            try:
                for session_id in self.store.coordination.work_notifications(
                        self._stop, on_tick=lambda: self.heartbeats.beat("scaler-notify")):
                    self._notify(session_id)
            except SessionManagerError as err:
                log.warning("work notifications interrupted: %s", err.message)
                self.heartbeats.beat("scaler-notify")
                self._stop.wait(1)

