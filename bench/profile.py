"""`--profile`: one extra, unmeasured run per figure with py-spy attached to the server.

py-spy (PyPI, not in the requirements: `pip install py-spy` into the venv) samples the
gunicorn master and its workers (--subprocesses), only threads holding the GIL (--gil: where
the CPU goes). The raw collapsed stacks and a summary of the frames with the largest inclusive
share land in bench/results/profiles/.
"""

from __future__ import annotations

import collections
import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
_SKIP = ("threading.py", "concurrent/futures", "<frozen runpy>", "gunicorn/arbiter.py",
         "gunicorn/app/base.py", "service/__main__.py", "service/serve.py")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiled(out_dir: Path | None, name: str, pid: int, seconds: float) -> Iterator[None]:
    """Record while the body runs (at most `seconds` + 1); no-op without out_dir/py-spy."""
    binary = py_spy()
    if out_dir is None or binary is None:
        if out_dir is not None:
            print("    (py-spy not found: pip install py-spy to profile)", flush=True)
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{name}.txt"
    recorder = subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--subprocesses", "--gil", "--nonblocking",
         "--rate", "200", "--duration", str(int(seconds) + 1), "--format", "raw",
         "--output", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # py-spy attaches
    try:
        yield
    finally:
        try:
            recorder.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()
    if raw.exists():
        (out_dir / f"{name}-summary.txt").write_text(summarize(raw))
        print(f"    (profile: {out_dir / (name + '-summary.txt')})", flush=True)


def summarize(raw: Path, top: int = 45) -> str:
    """Inclusive and self share of each function in py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_LINE.sub(")", f) for f in stack.split(";")
                  if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += int(count)
        for frame in dict.fromkeys(frames):
            inclusive[frame] += int(count)
        own[frames[-1]] += int(count)
    lines = [f"{raw.name}: {total} samples (GIL held)", "", "inclusive:"]
    shown = [(f, n) for f, n in inclusive.most_common() if not any(s in f for s in _SKIP)]
    lines += [f"{100 * n / max(1, total):5.1f}%  {f}" for f, n in shown[:top]]
    lines += ["", "self:"]
    lines += [f"{100 * n / max(1, total):5.1f}%  {f}" for f, n in own.most_common(20)]
    return "\n".join(lines) + "\n"
