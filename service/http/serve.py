"""Production serving: gunicorn with gevent workers, the app built by the factory in each.

Why gevent: a chat forwarded to a running pod waits on the agent (an LLM: 10-30 s), and so
will held and streamed replies. With a thread per request, a few dozen slow chats would
fill every thread and the probes would queue behind them until the kubelet restarts the
container mid-forward. Under gevent a waiting request is a greenlet (kilobytes) and every
client this code uses (redis-py, urllib3 for pods and the Kubernetes API) yields while it
waits, so `/health` answers at once whatever the agents do. `MAX_FORWARDS` still bounds the
chats waiting on pods per process; beyond it a chat is answered 202 and the worker delivers
it, so a burst of slow agents cannot take every connection (`WEB_CONNECTIONS`).

gunicorn answers some bad requests itself, before the app sees them (an over-long request
line, too many or too large headers, a malformed request): those answers are JSON in the
API's one error shape too.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

import gevent
from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.workers.ggevent import GeventWorker

from service.core.config import Settings
from service.sessions import notices

# What gunicorn's own refusals become: (status, code, message). Fixed messages: gunicorn's
# own quote the request, which must not be echoed back.
_GUNICORN_ERRORS = {
    400: (400, "bad_request", "Malformed HTTP request"),
    403: (403, "forbidden", "Request forbidden"),
    414: (414, "request_line_too_long", "Request line too long"),
    417: (417, "expectation_failed", "Expectation not supported"),
    431: (431, "headers_too_large", "Too many or too large request headers"),
    # An unsupported Transfer-Encoding is the client's input, not our failure.
    501: (400, "unsupported_transfer_coding", "Unsupported Transfer-Encoding"),
}
_REASONS = {400: "Bad Request", 403: "Forbidden", 414: "URI Too Long",
            417: "Expectation Failed", 431: "Request Header Fields Too Large",
            500: "Internal Server Error"}


def json_error_response(status: int) -> bytes:
    """The bytes gunicorn sends for one of its own refusals."""
    status, code, message = _GUNICORN_ERRORS.get(status, (500, "internal_error", "Internal error"))
    body = json.dumps({"error": message, "code": code}).encode()
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def _write_json_error(sock: Any, status_int: int, _reason: str, _mesg: str) -> None:
    gunicorn_util.write_nonblock(sock, json_error_response(status_int))


class ApiWorker(GeventWorker):
    """gunicorn's gevent worker, its own error pages JSON, held chats answered (202) and event
    streams ended (their clients resume elsewhere) when it is told to stop, instead of being
    cut at the graceful timeout."""

    def init_process(self) -> None:
        # Worker.handle_error writes every refusal through gunicorn.util.write_error.
        gunicorn_util.write_error = _write_json_error
        super().init_process()

    def handle_exit(self, sig: int, frame: Any) -> None:
        gevent.spawn(notices.release_all)  # not in the signal handler itself
        super().handle_exit(sig, frame)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    workers = settings.web_concurrency or min(4, multiprocessing.cpu_count() + 1)
    return {
        "bind": f"{settings.bind_address}:{settings.port}",
        "workers": workers,
        "worker_class": ApiWorker,
        "worker_connections": settings.web_connections,
        # gevent workers tick every second whatever the requests do: a worker silent this
        # long is stuck in CPU (or a C call), not waiting on a pod.
        "timeout": 30,
        "graceful_timeout": 30,
        "keepalive": 5,
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,  # noqa: S108
        "accesslog": None,  # the app logs one JSON line per request itself
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
    }


class Server(BaseApplication):
    """gunicorn with our options around the WSGI app `load()` builds (in each worker)."""

    def __init__(self, settings: Settings, load: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self._load = load
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        if self._load is not None:
            return self._load()
        from service.http.app import create_app

        return create_app(self.settings)


def serve(settings: Settings) -> None:
    Server(settings).run()
