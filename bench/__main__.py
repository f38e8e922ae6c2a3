"""`python -m bench [--only chat202,metrics] [--rounds N] [--quick]`: run, print, write results."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from . import (
    chat,
    delivery,
    history,
    kubeops,
    listing,
    load,
    memory,
    pool,
    ratelimits,
    replies,
    report,
    serving,
    streams,
    tiers,
    wake,
    workspace,
)
from .harness import Context

FIGURES: dict[str, Callable[[Context], report.Figure]] = {
    "chat202": chat.chat202,
    "chat200": chat.chat200,
    "metrics": listing.metrics,
    "kube": kubeops.kube_ops,
    "memory": memory.memory,
    "ratelimit": ratelimits.ratelimit,
    "delivery": delivery.delivery,
    # The conversation in every delivery: its cost, history on vs off.
    "history": history.history,
    # On the local cluster with real KEDA (needs what the real-cluster test layer needs).
    "wake": wake.wake,
    "scalers": wake.scalers,
    # The serving model: gevent (production) against gthread, slow agents.
    "serving": serving.serving,
    # Replies without polling (/events, Prefer: wait) and the streams one process holds.
    "replies": replies.replies,
    "streams": streams.streams,
    # Archived vs sleeping sessions on the local cluster: objects, etcd, wake, memory.
    "tiers": tiers.tiers,
    # The warm pool (hit vs cold create, a burst, refill) and wakes by probe period.
    "pool": pool.pool,
    # Objects an archived session keeps with the workspace template set.
    "workspace": workspace.workspace,
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default="",
                        help=f"comma-separated figures among: {', '.join(FIGURES)}")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per figure (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="shorter runs and fewer samples per round (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--profile", action="store_true",
                        help="after measuring, profile the server with py-spy (one extra run "
                             "per figure; summaries in <out>/profiles/)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (process logs) and print its path")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(FIGURES)
    unknown = [name for name in chosen if name not in FIGURES]
    if unknown or args.rounds < 1:
        parser.error(f"unknown figure(s) {unknown}; choose among {', '.join(FIGURES)}"
                     if unknown else "--rounds must be at least 1")

    header = [
        f"session-manager benchmarks, {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"host: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load tool: {load.tool()}; rounds: {args.rounds}{', quick' if args.quick else ''}",
        f"code: {_revision()}",
    ]
    print("\n".join(header), flush=True)
    # A stop (timeout, kill) unwinds like ^C, so the stack and the processes started for the
    # figures are torn down by the finally below, not left running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ctx = Context(rounds=args.rounds, quick=args.quick, keep=args.keep,
                  profile_dir=args.out / "profiles" if args.profile else None)
    figures: list[report.Figure] = []
    started = time.perf_counter()
    try:
        for name in chosen:
            print(f"\n... {name}", flush=True)
            began = time.perf_counter()
            settled_before = len(ctx.settled)
            try:
                figure = FIGURES[name](ctx)
            except Exception as err:  # noqa: BLE001 - one broken figure must not hide the rest
                traceback.print_exc()
                figure = report.Figure(name, name, error=f"{type(err).__name__}: {err}"[:2000])
            figure.seconds = time.perf_counter() - began
            busy = ctx.settled[settled_before:]
            if busy:
                figure.notes.append("Machine CPU busy before measuring (other processes): "
                                    + ", ".join(f"{b:.0%}" for b in busy) + ".")
            figures.append(figure)
            print(report.text_table(figure), flush=True)
    finally:
        ctx.close()
    header.append(f"total time: {time.perf_counter() - started:.0f} s")
    written = report.write_results(args.out, figures, header)
    print("\nSummary")
    print("\n".join(report.summary_lines(figures)))
    print(f"\n{header[-1]}; written: {', '.join(str(p) for p in written)}")
    if args.keep:
        print(f"work directory kept: {ctx.workdir}")
    return 1 if any(f.error for f in figures) else 0


def _revision() -> str:
    """The commit measured, and whether service/ had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "service", "templates"],
                               cwd=root, text=True, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes in service/ or templates/" if dirty.strip() else "")


if __name__ == "__main__":
    sys.exit(main())
