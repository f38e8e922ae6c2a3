"""What a kind run changes on the host, recorded before it is changed and put back after,
also after a crash (the next run, or `python -m devcluster down`, reads the state file).

- sysctls: kubelet in the node writes host-global ones (kernel.panic=10,
  kernel.panic_on_oops=1, vm.overcommit_memory=1); saved first, written back once the cluster
  is up and at the end (network.SYSCTLS, the same list as the local cluster's);
- /lib/modules: kind bind-mounts it into the node; created (empty) when the host has none;
- routes to the cluster's Service and pod ranges through the node, so the host reaches a
  ClusterIP (through the node's kube-proxy) and pod IPs, as the local cluster lets it: the
  suite then talks to the cluster the same way on both;
- our engine's processes, mounts under its run dir, the kind network's bridge and the guard.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .. import cleanup, network, paths
from ..processes import kill_pids, run
from .engine import DATA_ROOT, RUN_DIR
from .guard import KindGuard

STATE_FILE = paths.CACHE_DIR / "kind-state.json"
LIB_MODULES = Path("/lib/modules")


class HostChanges:
    def __init__(self) -> None:
        self.state = cleanup.StateFile(STATE_FILE)

    def save(self) -> None:
        """Record the host as it is, before anything changes it."""
        self.state.update(sysctls=network.read_sysctls(), routes=[], lib_modules=False,
                          owner=os.getpid())
        if not LIB_MODULES.exists():
            LIB_MODULES.mkdir()
            self.state.update(lib_modules=True)

    def restore_sysctls(self) -> None:
        saved = self.state.read().get("sysctls") or {}
        changed = {name: value for name, value in saved.items()
                   if network.read_sysctls().get(name) not in (None, value)}
        network.write_sysctls(changed)

    def add_routes(self, cidrs: list[str], via: str) -> None:
        for cidr in cidrs:
            self.state.update(routes=[*self.state.read().get("routes", []), cidr])
            run(["ip", "route", "replace", cidr, "via", via])

    def restore(self, guard: KindGuard, bridge: str) -> None:
        """Put everything back; safe to run twice and after a crash."""
        state = self.state.read()
        for cidr in state.get("routes", []):
            run(["ip", "route", "del", cidr], check=False)
        kill_pids(guard.member_pids(), timeout=20)  # our engine's leftovers, if it crashed
        kill_pids(_container_pids(), timeout=20)  # and its containers' (they have own cgroups)
        cleanup.unmount_under(RUN_DIR, DATA_ROOT)
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        if Path("/sys/class/net", bridge).exists():
            run(["ip", "link", "del", bridge], check=False)
        guard.remove()
        if state.get("sysctls"):
            network.write_sysctls(state["sysctls"])
        if state.get("lib_modules"):
            with contextlib.suppress(OSError):
                LIB_MODULES.rmdir()
        self.state.remove()


def _container_pids() -> list[int]:
    """Processes still running in the cgroups of containers of our engine (its data root names
    their ids): a kind node outlives its engine's crash, and runc gives each container cgroups
    of its own, outside the guard's."""
    containers = DATA_ROOT / "data" / "containers"
    if not containers.is_dir():
        return []
    pids: set[int] = set()
    for container in containers.iterdir():
        top = network.CGROUP2_ROOT / "docker" / container.name
        for procs in top.rglob("cgroup.procs") if top.is_dir() else ():
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(pid) for pid in procs.read_text().split())
    return sorted(pids)
