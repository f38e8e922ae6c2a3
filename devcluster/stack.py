"""What the local stack and the kind cluster share as clusters of this machine: the lock that
keeps them to one per machine (both use fixed bridge, chain and cgroup names), and kubectl
against a kubeconfig."""

from __future__ import annotations

import fcntl
import json
import subprocess
from pathlib import Path
from typing import IO

from . import paths
from .paths import LocalServiceError


class StackLock:
    """~/.cache/session-manager/stack.lock, held (flock) while a cluster runs."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self, busy: str) -> None:
        """Take it, or raise LocalServiceError(busy) at once if another cluster holds it."""
        path = paths.CACHE_DIR / "stack.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a+")  # noqa: SIM115 - held while the cluster runs
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            self._file = None
            raise LocalServiceError(f"{busy} ({path} is held)") from None

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def kubectl(kubeconfig: Path, *args: str, check: bool = True,
            input_text: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([paths.binary("kubectl"), f"--kubeconfig={kubeconfig}", *args],
                            capture_output=True, text=True, input=input_text, check=False)
    if check and result.returncode != 0:
        raise LocalServiceError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result


def apply(kubeconfig: Path, objects: list[dict]) -> None:
    """Server-side apply of objects as one List."""
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", "-",
            input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
