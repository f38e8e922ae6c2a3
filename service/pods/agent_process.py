"""An agent as a process, for `check-agent --run`: started with PORT set and waited for, and
stopped with SIGTERM while it answers (what a scale to 0 does to a pod)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import requests

SIGTERM_GRACE_SECONDS = 10.0


@dataclasses.dataclass
class StartedAgent:
    process: subprocess.Popen
    url: str


def start_agent(command: str, port: int, *, ready_seconds: float = 30) -> StartedAgent:
    """Start an agent with `command` (PORT set in its environment) and wait until it listens."""
    process = subprocess.Popen(shlex.split(command), env={**os.environ, "PORT": str(port)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_seconds
    for _ in _until(deadline):
        if process.poll() is not None:
            raise RuntimeError(f"the agent exited at once ({process.returncode})")
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return StartedAgent(process, url)
        except requests.RequestException:
            pass
    process.kill()
    raise RuntimeError(f"the agent did not answer /healthz within {ready_seconds:g} s")


def _until(deadline: float) -> Iterator[None]:
    while time.monotonic() < deadline:
        yield
        time.sleep(0.1)


def stop_while_answering(process: subprocess.Popen, url: str, *, session_id: str,
                     timeout: float) -> str:
    """A stop while an answer is on its way: the answer is finished, then the process
    exits within SIGTERM_GRACE_SECONDS (a container that ignores SIGTERM holds its node's
    resources for its whole grace period, and cuts answers when it is finally killed).
    The request is sent whole before the signal, so it is the agent's to finish."""
    host, _, port = urlsplit(url).netloc.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    body = json.dumps({"message": "slow:2 finish me before you go",
                       "message_id": secrets.token_hex(8), "session_id": session_id,
                       "user_id": "check-agent", "history": []})
    try:
        connection.request("POST", "/chat", body=body,
                           headers={"Content-Type": "application/json"})
        time.sleep(0.5)  # accepted and being answered
        process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        try:
            answer = connection.getresponse()
            status, _ = answer.status, answer.read()
        except (OSError, http.client.HTTPException) as err:
            raise AssertionError(
                f"the answer in progress was cut by the stop: {type(err).__name__}") \
                from None
    finally:
        connection.close()
    assert status == 200, f"the answer in progress was answered HTTP {status}"
    try:
        process.wait(max(0.0, SIGTERM_GRACE_SECONDS - (time.monotonic() - stopped_at)))
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"still running {SIGTERM_GRACE_SECONDS:g} s after SIGTERM") \
            from None
    return f"finished the answer in progress, exited in {time.monotonic() - stopped_at:.1f} s"
