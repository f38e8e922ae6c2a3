"""Undo everything a stack did to the host, whether it stopped cleanly or crashed.

Each step works from what is on the machine (fixed names, the run dir's mounts, the stack's
cgroup), plus the state file for pids and saved sysctls, so it is safe to run at any time and
twice. Order matters: processes before mounts, mounts before directories, netns before links.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import time
from pathlib import Path

from . import network, node, paths
from .processes import kill_pids, pid_alive, run

CGROUP_V1_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/var/run/netns")
CNI_CACHE = Path("/var/lib/cni/results")
CONTAINER_LOG_LINKS = Path("/var/log/containers")


class StateFile:
    """pids of the stack's daemons and the sysctls as they were before it started."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict:
        with contextlib.suppress(OSError, ValueError):
            return json.loads(self.path.read_text())
        return {}

    def update(self, **changes: object) -> None:
        state = self.read()
        state.update(changes)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)

    def add_pid(self, pid: int) -> None:
        self.update(pids=[*self.read().get("pids", []), pid])

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def kill_processes(state: dict, guard: network.EgressGuard) -> None:
    """The daemons by pid, whatever is still in the stack's cgroup (containerd shims, children
    of a crashed daemon), then containers that outlived their shim."""
    kill_pids([pid for pid in state.get("pids", []) if pid_alive(pid)])
    for _ in range(3):
        members = guard.member_pids()
        if not members:
            break
        kill_pids(members, timeout=3)
    kill_pids(_pod_pids(), timeout=2)


def _kubepods_dirs() -> list[Path]:
    found = []
    for hierarchy in CGROUP_V1_ROOT.iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir():
            found.append(top)
    return found


def _pod_pids() -> list[int]:
    """Every process left in kubelet's pod cgroups."""
    pids: set[int] = set()
    for top in _kubepods_dirs():
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(pid) for pid in procs.read_text().split())
    return sorted(pids)


def remove_pod_cgroups() -> None:
    for top in _kubepods_dirs():
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()),
                                key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def unmount_under(*roots: Path) -> None:
    """Unmount every mount point below the given directories, deepest first."""
    prefixes = [str(root.resolve()) + "/" for root in roots]
    for _ in range(3):
        points = []
        with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
            for line in mountinfo:
                point = line.split()[4].replace("\\040", " ")
                if any(point.startswith(prefix) for prefix in prefixes):
                    points.append(point)
        if not points:
            return
        for point in sorted(set(points), key=len, reverse=True):
            if run(["umount", point], check=False).returncode != 0:
                run(["umount", "-l", point], check=False)
        time.sleep(0.2)


def remove_pod_netns() -> None:
    if not NETNS_DIR.is_dir():
        return
    for entry in NETNS_DIR.glob("cni-*"):
        run(["umount", str(entry)], check=False)
        with contextlib.suppress(OSError):
            entry.unlink()


def remove_host_files(run_dir: Path) -> None:
    if CNI_CACHE.is_dir():
        for entry in CNI_CACHE.glob(f"{node.CNI_NETWORK}-*"):
            with contextlib.suppress(OSError):
                entry.unlink()
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(run_dir)):
                    link.unlink()


def remove_kube_chains() -> None:
    """Every KUBE-* chain and every jump to one: kube-proxy's (its --cleanup misses none of
    its own) and kubelet's (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT)."""
    for command in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            saved = run([f"{command}-save", "-t", table], check=False).stdout
            chains = [line[1:].split()[0] for line in saved.splitlines()
                      if line.startswith(":KUBE-")]
            for line in saved.splitlines():
                parts = shlex.split(line)
                if line.startswith("-A ") and "-j" in parts and \
                        parts[parts.index("-j") + 1].startswith("KUBE-") and \
                        not parts[1].startswith("KUBE-"):
                    run([command, "-w", "-t", table, "-D", *parts[1:]], check=False)
            for chain in chains:
                run([command, "-w", "-t", table, "-F", chain], check=False)
            for chain in chains:
                run([command, "-w", "-t", table, "-X", chain], check=False)


def clean_host(run_dir: Path, state_file: StateFile, guard: network.EgressGuard) -> None:
    state = state_file.read()
    kill_processes(state, guard)
    unmount_under(run_dir, paths.CONTAINERD_ROOT, paths.DOCKER_ROOT)
    remove_pod_netns()
    remove_pod_cgroups()
    remove_kube_chains()
    guard.remove()
    network.teardown_node_network()
    if state.get("sysctls"):
        network.write_sysctls(state["sysctls"])
    remove_host_files(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    state_file.remove()
