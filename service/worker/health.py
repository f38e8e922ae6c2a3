"""The worker's liveness: each loop beats; /healthz fails when one has not beaten in time.

A worker whose delivery loop, leader loops, status watch or push scaler is wedged (a hung
socket, a deadlock) still looks alive to Kubernetes as a process. Its loops beat here on every
turn; the liveness probe (`k8s-manifests/worker.yaml`) restarts the container when a loop's
last beat is older than its allowance. A loop that never beat is not judged (it may not run
in this replica's role yet).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

DEFAULT_ALLOWANCE_SECONDS = 60.0


class Heartbeats:
    def __init__(self, allowances: dict[str, float] | None = None) -> None:
        self.allowances = dict(allowances or {})
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def beat(self, loop: str) -> None:
        with self._lock:
            self._last[loop] = time.monotonic()

    def forget(self, loop: str) -> None:
        """The loop stopped on purpose (a leader term ended): stop judging it."""
        with self._lock:
            self._last.pop(loop, None)

    def stalled(self) -> dict[str, float]:
        """Loop -> seconds since its last beat, for every loop past its allowance."""
        now = time.monotonic()
        with self._lock:
            ages = {loop: now - at for loop, at in self._last.items()}
        return {loop: round(age, 1) for loop, age in ages.items()
                if age > self.allowances.get(loop, DEFAULT_ALLOWANCE_SECONDS)}


class HealthServer:
    """GET /healthz: 200 {"status": "ok"} or 503 {"status": "stalled", "stalled": {...}}."""

    def __init__(self, heartbeats: Heartbeats, *, host: str = "0.0.0.0", port: int) -> None:  # noqa: S104 - probed by the kubelet
        beats = heartbeats

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # the kubelet probes every few seconds

            def do_GET(self) -> None:
                if self.path != "/healthz":
                    self._send(404, {"error": "not_found"})
                    return
                stalled = beats.stalled()
                if stalled:
                    self._send(503, {"status": "stalled", "stalled": stalled})
                else:
                    self._send(200, {"status": "ok"})

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="health",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
