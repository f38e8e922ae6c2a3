"""`python -m devcluster COMMAND`: the local stack for development and tests.

    run     the service + worker on the full local stack (`make run`), or API-only mode
    up      bring the cluster up and keep it up until Ctrl-C (prints its kubeconfig)
    down    tear down a stack or a kind run left behind (processes, mounts, links, rules,
            cgroups, routes, sysctls)
    e2e     the chart installed on kind (or the local cluster), then pytest e2e/ (make e2e)
    check   say whether this machine can run the full stack, and what is missing
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="service + worker on the local stack (make run)")
    up = commands.add_parser("up", help="bring the cluster up until Ctrl-C")
    up.add_argument("--addons", action="store_true",
                    help="CoreDNS, storage and KEDA in-cluster (what k8s-manifests needs)")
    commands.add_parser("down", help="tear down what a stack left behind")
    commands.add_parser("check", help="can this machine run the full stack?")
    e2e = commands.add_parser("e2e", help="install the chart on kind or the local cluster, "
                                          "run e2e/ (further arguments go to pytest)")
    e2e.add_argument("pytest_args", nargs="*", help="e.g. -k isolation -x")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["e2e"] and argv[1:2] not in (["-h"], ["--help"]):
        # Everything after `e2e` is pytest's, options included (argparse would claim them).
        from .e2e import run_e2e

        return run_e2e(argv[1:])
    args = parser.parse_args(argv)

    if args.command == "run":
        from .dev import run_dev

        return run_dev()
    if args.command == "e2e":
        from .e2e import run_e2e

        return run_e2e(args.pytest_args)
    if args.command == "check":
        from .cluster import missing_requirements

        missing = missing_requirements()
        print("full stack: can run here" if not missing else
              "full stack: cannot run here: " + "; ".join(missing))
        return 0 if not missing else 1
    if args.command == "down":
        from .cluster import down
        from .kind import down as kind_down

        down()
        kind_down()
        print("local stack and kind leftovers torn down")
        return 0
    from .cluster import LocalCluster

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cluster = LocalCluster(addons=args.addons).start()
    try:
        print(f"KUBECONFIG={cluster.kubeconfig}", flush=True)
        stop.wait()
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
