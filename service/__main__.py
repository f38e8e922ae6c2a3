"""`python -m service COMMAND`: render, validate, serve, worker, reapply, check-agent.

The local development stack (`make run`) is `python -m devcluster`, outside the service."""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    # The API serves under gevent (service.http.serve says why), whose patching of the standard
    # library must come before anything imports ssl: urllib3 binds ssl's classes at import,
    # and patched later its TLS contexts recurse forever (gevent issue 1016). So in the
    # gunicorn master too, before the start-up checks import the clients.
    from gevent import monkey

    monkey.patch_all()

import argparse
import signal
import threading
from pathlib import Path

from service.core import config
from service.core.config import ConfigError, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="print a session's bundle as YAML")
    render.add_argument("session_id")
    validate = commands.add_parser("validate", help="render a sample bundle and validate it")
    validate.add_argument("--keda-crds", type=Path, required=True, metavar="FILE",
                          help="KEDA's CRDs as YAML (its release's keda-<v>-crds.yaml; "
                               "`python -m devcluster keda-crds` prints the dev stack's)")
    commands.add_parser("serve", help="serve the API with gunicorn")
    commands.add_parser("worker", help="deliver messages, watch status, reconcile")
    reapply = commands.add_parser(
        "reapply", help="bring every awake session's bundle to the templates' version now")
    reapply.add_argument("--concurrency", type=int, default=None,
                         help="bundles applied at once (default: BUNDLE_CONCURRENCY)")
    reapply.add_argument("--force", action="store_true",
                         help="also re-apply sessions already on the current version")
    check = commands.add_parser(
        "check-agent", help="check an agent against the pod contract, one line per rule")
    check.add_argument("url", nargs="?", help="the agent's address, e.g. http://127.0.0.1:1111")
    check.add_argument("--run", metavar="COMMAND",
                       help="start the agent with COMMAND (PORT set) and also check how it "
                            "stops on SIGTERM")
    args = parser.parse_args(argv)

    try:
        settings = config.from_env()
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    if args.command == "render":
        return _render(settings, args.session_id)
    if args.command == "check-agent":
        return _check_agent(settings, args.url, args.run, parser)
    if args.command == "validate":
        # Dev dependencies (kubernetes-validate): only this command needs them.
        from service.bundle.validate import load_crds, run
        from service.store import keda_keys

        if not args.keda_crds.is_file():
            print(f"error: --keda-crds {args.keda_crds}: no such file", file=sys.stderr)
            return 2
        return run(settings, keda_keys, load_crds(args.keda_crds))
    if args.command in ("serve", "worker", "reapply"):
        problem = _start_checks(settings, args.command)
        if problem:
            print(f"configuration error: {problem}", file=sys.stderr)
            return 2
    if args.command == "reapply":
        return _reapply(settings, args.concurrency or settings.bundle_concurrency, args.force)
    if args.command == "serve":
        from service.http.serve import serve

        serve(settings)
        return 0
    return _worker(settings)


def _start_checks(settings: Settings, command: str) -> str | None:
    """What must hold before a process acts on sessions: its settings, the templates (they
    render, their KEDA triggers match KEDA_SCALER) and, for the worker, the push scaler's
    TLS. None when all do, else what is wrong."""
    from service.bundle import check_templates
    from service.core.errors import BundleError
    from service.store import keda_keys

    try:
        if command == "reapply":
            settings.check()
        else:
            settings.check_serving()
        check_templates(settings, keda_keys)
        if command == "worker" and settings.keda_scaler == "push" \
                and settings.scaler_tls_dir is None:
            raise ConfigError(
                "KEDA_SCALER=push: the worker serves KEDA's scaler with mutual TLS; set "
                "SCALER_TLS_DIR to a directory with tls.crt, tls.key and ca.crt")
    except BundleError as err:
        return err.message
    except ConfigError as err:
        return str(err)
    return None


def _check_agent(settings: Settings, url: str | None, command: str | None,
                 parser: argparse.ArgumentParser) -> int:
    """One PASS/FAIL/SKIP line per rule of the pod contract; exit 1 when one fails."""
    import socket

    from service.pods.agent_process import start_agent
    from service.pods.conformance import AgentCheck

    if (url is None) == (command is None):
        parser.error("check-agent takes a URL or --run COMMAND")
    started = None
    verdicts = None
    if command is not None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    check = AgentCheck(url, timeout_seconds=settings.pod_timeout_seconds,
                       max_message_chars=settings.max_message_chars,
                       history_max_bytes=settings.history_max_bytes)
    if command is not None:
        try:
            started = start_agent(command, int(url.rsplit(":", 1)[1]))
        except RuntimeError as err:
            verdicts = check.not_ready(str(err))
    try:
        if verdicts is None:
            verdicts = check.run(started_process=started.process if started else None)
    finally:
        if started is not None and started.process.poll() is None:
            started.process.kill()
    for verdict in verdicts:
        print(verdict.line())
    failed = [v for v in verdicts if v.outcome == "FAIL"]
    print(f"{len(verdicts) - len(failed)} of {len(verdicts)} rules met"
          + (f"; failed: {', '.join(v.rule for v in failed)}" if failed else ""))
    return 1 if failed else 0


def _render(settings: Settings, session_id: str) -> int:
    from service import bundle, store
    from service.core.errors import BundleError

    try:
        rendered = bundle.render(session_id, settings, store.keda_keys(session_id))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BundleError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 1
    sys.stdout.write(bundle.to_yaml(rendered))
    return 0


def _store(settings: Settings):
    from service.store import Store

    return Store.from_url(
        settings.redis_url, socket_timeout_seconds=settings.redis_socket_timeout_seconds,
        session_ttl_seconds=settings.session_ttl_seconds,
        activity_ttl_seconds=settings.activity_ttl_seconds,
        events_kept=settings.max_events_kept, max_connections=settings.redis_max_connections)


def _reapply(settings: Settings, concurrency: int, force: bool) -> int:
    """Re-apply awake sessions' bundles; prints the figures as JSON. Exit 1 if any failed, 2
    if this database serves another installation (the check every worker makes)."""
    import json

    from service.core import logs
    from service.core.errors import BundleError, SessionManagerError
    from service.kube import Kube
    from service.sessions import Tiers

    logs.configure(settings.log_level)
    if not 1 <= concurrency <= 64:
        print("error: --concurrency must be 1 to 64", file=sys.stderr)
        return 2
    try:
        store = _store(settings)
        conflict = store.coordination.installation_conflict(settings.namespace)
        if conflict:
            print(f"configuration error: {conflict}", file=sys.stderr)
            return 2
        tiers = Tiers(settings, store, Kube.from_environment(settings.namespace))
        figures = tiers.reapply(concurrency=concurrency, force=force)
    except (BundleError, SessionManagerError) as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 1
    print(json.dumps({"version": tiers.version(), **figures}))
    return 1 if figures["failed"] else 0


def _worker(settings: Settings) -> int:
    from service.core import logs
    from service.core.errors import SessionManagerError
    from service.kube import Kube
    from service.worker import Worker

    logs.configure(settings.log_level)
    store = _store(settings)
    try:
        conflict = store.coordination.installation_conflict(settings.namespace)
    except SessionManagerError:
        conflict = None  # Redis is away: each leader's term checks again
    if conflict:
        print(f"configuration error: {conflict}", file=sys.stderr)
        return 2
    worker = Worker(settings, store, Kube.from_environment(settings.namespace))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return worker.run(stop, health_port=settings.worker_health_port)


if __name__ == "__main__":
    sys.exit(main())
