"""Closed-loop load: N keep-alive connections sending requests back to back for a fixed time.

`wrk` (Debian package `wrk`) when it is installed: it is C and does not compete with the server
for the two cores. Otherwise a separate Python process (`python -m bench.load`) with one thread
and one `http.client` connection per client; it uses more CPU than wrk, so absolute numbers
come out lower, but every ratio is measured with the same generator on both sides.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .harness import percentile

_ASCII = re.compile(r"^[\x20-\x7e]*$")


@dataclasses.dataclass
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int  # HTTP >= 400, connection errors, timeouts
    tool: str
    cpu_ms: list[float] = dataclasses.field(default_factory=list)  # filled in by callers

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def tool() -> str:
    forced = os.environ.get("BENCH_LOAD_TOOL")
    if forced in ("wrk", "python"):
        return forced
    return "wrk" if shutil.which("wrk") else "python"


def run(port: int, method: str, paths: list[str], *, body: Any = None,
        headers: dict[str, str] | None = None, connections: int = 8,
        seconds: int = 5) -> LoadResult:
    """Requests rotate over `paths` (e.g. one per session)."""
    data = None if body is None else json.dumps(body)
    all_headers = dict(headers or {})
    if data is not None:
        all_headers["Content-Type"] = "application/json"
    if tool() == "wrk":
        return _wrk(port, method, paths, data, all_headers, connections, seconds)
    spec = {"port": port, "method": method, "paths": paths, "body": data,
            "headers": all_headers, "connections": connections, "seconds": seconds}
    done = subprocess.run([sys.executable, "-m", "bench.load"], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=seconds + 60, check=True)
    return LoadResult(**json.loads(done.stdout.strip().splitlines()[-1]))


# -- wrk ----------------------------------------------------------------------------------


def _lua(text: str) -> str:
    if not _ASCII.match(text):
        raise ValueError(f"only printable ASCII goes into the wrk script: {text[:40]!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":%d,' ..
    '"p50_us":%d,"p95_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def _wrk(port: int, method: str, paths: list[str], data: str | None,
         headers: dict[str, str], connections: int, seconds: int) -> LoadResult:
    lines = [f"local paths = {{{', '.join(_lua(p) for p in paths)}}}",
             f"local body = {_lua(data) if data is not None else 'nil'}",
             f"wrk.method = {_lua(method)}"]
    lines += [f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in headers.items()]
    lines += [
        "local i = 0",
        "request = function()",
        "  i = i + 1",
        "  return wrk.format(nil, paths[(i % #paths) + 1], nil, body)",
        "end",
        _DONE,
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines))
    try:
        done = subprocess.run(
            ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d",
             f"{seconds}s", "--timeout", "10s", "-s", script.name, f"http://127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=seconds + 60, check=True)
    finally:
        Path(script.name).unlink(missing_ok=True)
    found = re.search(r"^BENCH_JSON (\{.*\})$", done.stdout, re.MULTILINE)
    if not found:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(found.group(1))
    return LoadResult(requests=raw["requests"], seconds=raw["duration_us"] / 1e6,
                      p50_ms=raw["p50_us"] / 1000, p95_ms=raw["p95_us"] / 1000,
                      p99_ms=raw["p99_us"] / 1000, errors=raw["errors"], tool="wrk")


# -- the Python generator (a separate process) --------------------------------------------


def _python_load(spec: dict[str, Any]) -> dict[str, Any]:
    paths = spec["paths"]
    body = spec["body"].encode() if spec["body"] is not None else None
    connections = spec["connections"]
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    start = threading.Barrier(connections + 1)
    state = {"deadline": 0.0}

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", spec["port"], timeout=10)
        mine = latencies[index]
        count = index
        start.wait()
        deadline = state["deadline"]
        while True:
            began = time.perf_counter()
            if began >= deadline:
                break
            count += 1
            try:
                conn.request(spec["method"], paths[count % len(paths)], body=body,
                             headers=spec["headers"])
                response = conn.getresponse()
                response.read()
                if response.status >= 400:
                    errors[index] += 1
            except (OSError, http.client.HTTPException):
                errors[index] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", spec["port"], timeout=10)
                continue
            mine.append(time.perf_counter() - began)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(connections)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    state["deadline"] = began + spec["seconds"]
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    every = [x * 1000 for series in latencies for x in series]
    return {"requests": len(every), "seconds": elapsed, "p50_ms": percentile(every, 50),
            "p95_ms": percentile(every, 95), "p99_ms": percentile(every, 99),
            "errors": sum(errors), "tool": "python"}


if __name__ == "__main__":
    print(json.dumps(_python_load(json.loads(sys.stdin.read()))))
