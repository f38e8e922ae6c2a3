"""The local stack's daemons start every time: ports are chosen where no client connection
takes its source port, and a daemon that finds its port taken anyway is started again on a
new one (a `make run` right after another stack stopped once failed with keda-adapter's
`bind: address already in use`). Real redis-server processes."""

from __future__ import annotations

import socket
from pathlib import Path

from devcluster import apiserver as apiserver_module
from devcluster import ports
from devcluster.apiserver import RedisServer


def test_ports_are_chosen_below_the_ephemeral_range():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    chosen = {ports.free_port() for _ in range(50)}
    assert all(port < low for port in chosen)
    assert len(chosen) == 50  # none handed out twice while its daemon may not have bound it


def test_a_daemon_whose_port_was_taken_starts_again_on_another(tmp_path, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        handed = iter([port])  # the race: a port free when chosen, taken before the bind
        monkeypatch.setattr(apiserver_module, "free_port",
                            lambda: next(handed, None) or ports.free_port())
        server = RedisServer(tmp_path).start()
        try:
            assert server.port != port
            assert server._answers()
        finally:
            server.stop()
