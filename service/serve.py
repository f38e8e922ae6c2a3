"""Production serving: gunicorn with threaded workers, the app built by the factory.

Threads, because a chat forwarded to a pod waits on the pod; workers, for the CPU.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

from .config import Settings


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    workers = int(os.environ.get("WEB_CONCURRENCY") or min(4, multiprocessing.cpu_count() + 1))
    return {
        "bind": f"{os.environ.get('BIND_ADDRESS', '0.0.0.0')}:{settings.port}",  # noqa: S104
        "workers": workers,
        "worker_class": "gthread",
        "threads": int(os.environ.get("WEB_THREADS") or 8),
        "timeout": int(settings.pod_timeout_seconds) + 30,
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
        from .api import create_app

        return create_app(self.settings)


def serve(settings: Settings) -> None:
    Server(settings).run()
