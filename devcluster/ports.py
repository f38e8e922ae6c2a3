"""Ports for daemons to bind: chosen where no client connection takes its source port, and a
start retried on new ones when a daemon finds its port taken all the same."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .processes import PortInUse

T = TypeVar("T")

# Ports handed out by this process lately: not handed out again before their daemon binds.
_handed_out: dict[int, float] = {}
_handed_out_lock = threading.Lock()
_HANDED_OUT_SECONDS = 120


def free_port() -> int:
    """A port nothing listens on, for a daemon to bind. Chosen below the kernel's ephemeral
    range: every outgoing connection takes its source port from that range, so a port picked
    there (as binding port 0 does) can be taken by some client's connection before the
    daemon binds it — a stack started right after another stopped once failed just so. A
    daemon that finds its port taken all the same exits with "address already in use"
    (`PortInUse`), and its starter retries with new ports (`retry_on_port_in_use`)."""
    ephemeral_low = 32768
    with contextlib.suppress(OSError, ValueError):
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    low = 10000 if ephemeral_low > 12000 else 1024
    while True:
        port = random.randrange(low, ephemeral_low)  # noqa: S311 - not a secret
        with _handed_out_lock:
            now = time.monotonic()
            for old in [p for p, at in _handed_out.items() if now - at > _HANDED_OUT_SECONDS]:
                del _handed_out[old]
            if port in _handed_out or not _bindable(port):
                continue
            _handed_out[port] = now
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - only asks whether the port is free
        except OSError:
            return False
    return True


def retry_on_port_in_use(start: Callable[[], T], *, attempts: int = 3) -> T:
    """Run `start` (which takes fresh ports from free_port each time) until no daemon of it
    finds its port taken."""
    for attempt in range(attempts):
        try:
            return start()
        except PortInUse:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
