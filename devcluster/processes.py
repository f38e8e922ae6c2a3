"""Starting, waiting for and stopping processes: the one process runner (`Spawner` starts a
`Daemon`) and the one wait (`wait_until`) of the local stack, the tests, e2e and the benchmarks.

Daemons of the full stack start inside the stack's cgroup (see network.EgressGuard), joined
by a one-line shell wrapper before `exec`, so not one packet leaves before the guard applies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .paths import LocalServiceError

T = TypeVar("T")

# Every process of the stack gets this: no cloud SDK inside any of them looks up a metadata
# service (kubelet's old in-tree AWS provider probed 169.254.169.254 at start).
NO_CLOUD_ENV = {"AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "*", "no_proxy": "*"}


class DaemonExited(LocalServiceError):
    """A daemon exited while something waited on it; the message holds its log's tail."""


class PortInUse(DaemonExited):
    """A daemon exited because a port it was given was taken before it bound it."""


class WaitTimedOut(LocalServiceError):
    """What `wait_until` waited for did not come within its timeout."""


@dataclass
class Daemon:
    """A process we started. Its output is in `log` from `log_offset` on (logs are appended
    to, so the file may hold an earlier run's); `stop` sends `stop_signal` — to the whole
    process group with `stop_group`, for a gunicorn master and its workers — and kills it
    after `stop_timeout_seconds`. No `log`: it writes where we write (a terminal)."""

    name: str
    process: subprocess.Popen
    log: Path | None
    log_offset: int = 0
    port: int | None = None  # the loopback port it serves on, when its starter chose one
    stop_signal: int = signal.SIGTERM
    stop_timeout_seconds: float = 15
    stop_group: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        """Everything this process wrote to its log."""
        if self.log is None or not self.log.exists():
            return ""
        with self.log.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def log_tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    def check_running(self) -> None:
        """Raise DaemonExited with the log's tail (PortInUse when that says so) if it exited."""
        if self.running():
            return
        tail = self.log_tail()
        error = PortInUse if "address already in use" in tail.lower() else DaemonExited
        raise error(f"{self.name} exited with {self.process.returncode} (log: {self.log}):\n"
                    f"{tail}")

    def stop(self) -> int:
        """Its exit code, after the stop signal (and SIGKILL when that is not enough)."""
        if not self.running():
            return self.process.wait()
        self._send(self.stop_signal)
        try:
            return self.process.wait(self.stop_timeout_seconds)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        if self.running():
            self._send(signal.SIGKILL)
        return self.process.wait()

    def _send(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.stop_group:
                os.killpg(self.process.pid, signum)  # it leads its own group: see Spawner
            else:
                self.process.send_signal(signum)


@dataclass
class Spawner:
    """Starts daemons: output appended to `log_dir/<name>.log` (no `log_dir`: to ours), the
    environment ours + `env` + the spawn's own (a None value unsets a variable), in `cwd`,
    optionally inside a cgroup v2 group. Each leads a session of its own, so a terminal's
    Ctrl-C reaches only us and we stop them in order; `own_session=False` leaves them in
    ours, for foreground children a closed terminal must end too."""

    log_dir: Path | None
    cgroup_procs: Path | None = None
    env: Mapping[str, str | None] = field(default_factory=dict)
    cwd: Path | None = None
    own_session: bool = True
    on_spawn: Callable[[int], None] | None = None  # e.g. record the pid for crash cleanup
    started: list[Daemon] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], *, env: Mapping[str, str | None] | None = None,
              cwd: Path | None = None, **daemon_options) -> Daemon:
        command = list(args)
        if self.cgroup_procs is not None:
            # Join the guarded cgroup first, then become the daemon: nothing runs outside it.
            command = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.cgroup_procs),
                       *command]
        full_env = dict(os.environ)
        for variable, value in {**self.env, **(env or {})}.items():
            if value is None:
                full_env.pop(variable, None)
            else:
                full_env[variable] = value
        log = None if self.log_dir is None else self.log_dir / f"{name}.log"
        with contextlib.ExitStack() as files:
            out, offset = None, 0
            if log is not None:
                log.parent.mkdir(parents=True, exist_ok=True)
                out = files.enter_context(log.open("ab"))
                offset = out.tell()  # before it starts: it moves the offset we share with it
            process = subprocess.Popen(command, stdout=out,
                                       stderr=None if out is None else subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=full_env,
                                       cwd=cwd or self.cwd, start_new_session=self.own_session)
        daemon = Daemon(name, process, log, offset, **daemon_options)
        self.started.append(daemon)
        if self.on_spawn is not None:
            self.on_spawn(process.pid)
        return daemon

    def stop_all(self) -> None:
        for daemon in reversed(self.started):
            daemon.stop()
        self.started.clear()


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05,
               daemon: Daemon | Iterable[Daemon] | None = None) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return
    that; after `timeout` seconds raise WaitTimedOut naming `what`. The daemon(s) given are
    checked before each call: one that exited raises DaemonExited with its log at once,
    instead of the wait running out its timeout."""
    daemons = (daemon,) if isinstance(daemon, Daemon) else tuple(daemon or ())
    deadline = time.monotonic() + timeout
    while True:
        for each in daemons:
            each.check_running()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            last = "" if value is None or isinstance(value, bool) else f" (last: {value!r:.500})"
            logs = "".join(f"\n{each.name}'s log ({each.log}):\n{each.log_tail(1500)}"
                           for each in daemons)
            raise WaitTimedOut(f"timed out after {timeout}s waiting for {what}{last}{logs}")
        time.sleep(interval)


def http_ok(url: str, *, context=None, headers: Mapping[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310 - http(s)
    try:
        with urllib.request.urlopen(  # noqa: S310 - our own loopback/node URLs
                request, timeout=2, context=context) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


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

    def all_gone() -> bool:
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        return not any(pid_alive(pid) for pid in pids)

    with contextlib.suppress(WaitTimedOut):
        wait_until(all_gone, timeout=timeout, interval=0.1, what="the processes to end")
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
