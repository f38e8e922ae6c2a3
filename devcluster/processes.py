"""Starting and stopping the stack's daemons: logs in files, readiness polls, clean stops.

Daemons of the full stack start inside the stack's cgroup (see network.EgressGuard), joined
by a one-line shell wrapper before `exec`, so not one packet leaves before the guard applies.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .paths import LocalServiceError

T = TypeVar("T")

# Every process of the stack gets this: no cloud SDK inside any of them looks up a metadata
# service (kubelet's old in-tree AWS provider probed 169.254.169.254 at start).
NO_CLOUD_ENV = {"AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "*", "no_proxy": "*"}


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


class PortInUse(LocalServiceError):
    """A daemon exited because a port it was given was taken before it bound it."""


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


def http_ok(url: str, *, context=None, headers: Mapping[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310 - http(s)
    try:
        with urllib.request.urlopen(  # noqa: S310 - our own loopback/node URLs
                request, timeout=2, context=context) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen
    log: Path
    stop_signal: int = signal.SIGTERM
    stop_timeout_seconds: float = 15

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def wait_until(self, predicate: Callable[[], bool], *, timeout: float, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                tail = self.log_tail()
                error = PortInUse if "address already in use" in tail.lower() else \
                    LocalServiceError
                raise error(f"{self.name} exited with {self.process.returncode}:\n{tail}")
            if predicate():
                return
            time.sleep(0.1)
        raise LocalServiceError(
            f"{what or self.name} not ready after {timeout}s (log: {self.log}):\n"
            f"{self.log_tail(1500)}")

    def stop(self) -> None:
        if not self.running():
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(self.stop_timeout_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Spawner:
    """Starts daemons with their output in `log_dir`, optionally inside a cgroup v2 group."""

    log_dir: Path
    cgroup_procs: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    on_spawn: Callable[[int], None] | None = None  # e.g. record the pid for crash cleanup
    started: list[Daemon] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None, **daemon_options) -> Daemon:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        command = list(args)
        if self.cgroup_procs is not None:
            # Join the guarded cgroup first, then become the daemon: nothing runs outside it.
            command = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.cgroup_procs),
                       *command]
        full_env = {**os.environ, **NO_CLOUD_ENV, **self.env, **(env or {})}
        with log.open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=full_env, cwd=cwd,
                                       start_new_session=True)
        daemon = Daemon(name, process, log, **daemon_options)
        self.started.append(daemon)
        if self.on_spawn is not None:
            self.on_spawn(process.pid)
        return daemon

    def stop_all(self) -> None:
        for daemon in reversed(self.started):
            daemon.stop()
        self.started.clear()


def pid_alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_pids(pids: list[int], *, timeout: float = 10) -> None:
    """SIGTERM all at once, then SIGKILL what is left after `timeout`: for leftovers of a
    stack that crashed (not our children, so nothing to reap)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_pid(pid: int, *, timeout: float = 10) -> None:
    kill_pids([pid], timeout=timeout)


def run(args: list[str], *, check: bool = True, input_text: str | None = None,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """A short command's result, text out; with `check`, a failure raises with its stderr."""
    result = subprocess.run(args, capture_output=True, text=True, input=input_text, check=False,
                            env=None if env is None else dict(env))
    if check and result.returncode != 0:
        raise LocalServiceError(
            f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result
