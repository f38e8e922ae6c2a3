"""A Worker's loops in threads of the test's process, for the length of a `with` block: what
the `running_worker` and `status_watch` fixtures hand a test."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from service.worker import Worker


@contextlib.contextmanager
def running(worker: Worker) -> Iterator[None]:
    """`worker.run`: the delivery loop and the leader roles."""
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive(), "the worker did not stop"


@contextlib.contextmanager
def watching_status(worker: Worker) -> Iterator[None]:
    """The worker's real Deployment + Pod watch (the status tracker)."""
    term_over = threading.Event()
    thread = threading.Thread(target=worker.status_watch.run, args=(term_over,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        term_over.set()
        thread.join(10)
        assert not thread.is_alive(), "the status watch did not stop"
