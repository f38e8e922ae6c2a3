"""The node's network and the egress guard: a node address, the pod bridge, the service route.

Layout (fixed names, so a start after a crash finds and removes what the last one left):
  smnode0  a port-less bridge holding the node's /32 (kubelet rejects loopback node IPs and the
           kernel has no dummy driver); the service CIDR routes here, so a ClusterIP packet
           that kube-proxy did not DNAT dies locally instead of leaving by the default route.
  smpods0  the pod bridge, made by the CNI bridge plugin from the config written in node.py.

The egress guard (hard rule: nothing of the stack talks to an address off this machine):
  - every daemon runs in the cgroup v2 group `session-manager-stack`; OUTPUT rejects its
    packets unless they go to loopback, the node, pods or services (SM-EGRESS-OUT, counted);
  - FORWARD drops pod packets that would leave the pod bridge for anything but the node,
    pod and service ranges (SM-EGRESS-FWD, counted);
  - the same for IPv6, where the stack has no address at all.
`EgressGuard.counts()` reads the counters of the reject/drop rules; tests assert they stay 0.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from .paths import LocalServiceError
from .processes import run

NODE_BRIDGE = "smnode0"
POD_BRIDGE = "smpods0"
NODE_IP = "10.213.0.1"
NODE_CIDR = "10.213.0.0/24"
POD_CIDR = "10.214.0.0/24"
SERVICE_CIDR = "10.215.0.0/19"  # 8,190 Services: room for a thousand sessions and more
# The first address of the service range is the `kubernetes` Service's ClusterIP.
KUBERNETES_SERVICE_IP = "10.215.0.1"

CGROUP2_ROOT = Path("/sys/fs/cgroup/unified")
STACK_CGROUP = "session-manager-stack"
OUT_CHAIN = "SM-EGRESS-OUT"
FWD_CHAIN = "SM-EGRESS-FWD"

# Host settings kubelet, kube-proxy and the bridge plugin change: saved before the stack starts
# and written back when it stops (kernel.panic* right after kubelet starts, too).
SYSCTLS = (
    "kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory", "vm.panic_on_oom",
    "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet", "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
)
PANIC_SYSCTLS = ("kernel.panic", "kernel.panic_on_oops")


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    values = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = _sysctl_path(name).read_text().strip()
    return values


def write_sysctls(values: dict[str, str], only: tuple[str, ...] | None = None) -> None:
    for name, value in values.items():
        if only is None or name in only:
            with contextlib.suppress(OSError):
                _sysctl_path(name).write_text(value + "\n")


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def setup_node_network() -> None:
    if not _link_exists(NODE_BRIDGE):
        run(["ip", "link", "add", NODE_BRIDGE, "type", "bridge"])
    run(["ip", "addr", "replace", f"{NODE_IP}/32", "dev", NODE_BRIDGE])
    run(["ip", "link", "set", NODE_BRIDGE, "up"])
    run(["ip", "route", "replace", SERVICE_CIDR, "dev", NODE_BRIDGE])
    # Pods reach the node's address and services through the bridge; br_netfilter must see
    # bridged traffic for kube-proxy's rules (hairpin to a pod's own ClusterIP).
    write_sysctls({"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"})


def teardown_node_network() -> None:
    run(["ip", "route", "del", SERVICE_CIDR], check=False)
    for link in (POD_BRIDGE, NODE_BRIDGE):
        if _link_exists(link):
            run(["ip", "link", "del", link], check=False)


def default_uplinks() -> list[str]:
    """Interfaces of the machine's default routes (v4 and v6): where egress would leave."""
    links = set()
    for family in ("-4", "-6"):
        out = run(["ip", family, "route", "show", "default"], check=False).stdout
        links.update(re.findall(r"\bdev (\S+)", out))
    return sorted(links)


@dataclass
class GuardCounts:
    output_rejected: int
    forward_dropped: int

    @property
    def total(self) -> int:
        return self.output_rejected + self.forward_dropped


class EgressGuard:
    """The stack's cgroup and the iptables rules that keep its traffic on this machine.

    Also, with its own cgroup and chain and no forwarding, for a process that is not part of
    the stack but must reach nothing off the machine either (the browser tests' Chromium:
    `browser_guard()`)."""

    def __init__(self, cgroup: str = STACK_CGROUP, *, out_chain: str = OUT_CHAIN,
                 fwd_chain: str | None = FWD_CHAIN,
                 allowed_v4: tuple[str, ...] = (NODE_CIDR, POD_CIDR, SERVICE_CIDR)) -> None:
        self.cgroup = cgroup
        self.cgroup_dir = CGROUP2_ROOT / cgroup
        self.out_chain = out_chain
        self.fwd_chain = fwd_chain
        self.allowed_v4 = list(allowed_v4)

    @property
    def cgroup_procs(self) -> Path:
        return self.cgroup_dir / "cgroup.procs"

    @staticmethod
    def available() -> str | None:
        """None when the guard can be set up here, else what is missing."""
        if not (CGROUP2_ROOT / "cgroup.procs").exists():
            return f"no cgroup v2 hierarchy at {CGROUP2_ROOT} (the guard matches by cgroup)"
        if run(["iptables", "-m", "cgroup", "--help"], check=False).returncode != 0:
            return "iptables has no cgroup match"
        return None

    def install(self) -> None:
        self.cgroup_dir.mkdir(exist_ok=True)
        self.remove_rules()
        out, fwd = self.out_chain, self.fwd_chain
        for table_cmd, allowed in (("iptables", self.allowed_v4), ("ip6tables", [])):
            run([table_cmd, "-w", "-N", out])
            run([table_cmd, "-w", "-A", out, "-o", "lo", "-j", "RETURN"])
            for cidr in allowed:
                run([table_cmd, "-w", "-A", out, "-d", cidr, "-j", "RETURN"])
            reject = ("icmp-port-unreachable" if table_cmd == "iptables"
                      else "icmp6-port-unreachable")
            _log_rule(table_cmd, out)
            run([table_cmd, "-w", "-A", out, "-j", "REJECT", "--reject-with", reject])
            run([table_cmd, "-w", "-I", "OUTPUT", "1", "-m", "cgroup", "--path", self.cgroup,
                 "-j", out])
            if fwd is None:
                continue
            run([table_cmd, "-w", "-N", fwd])
            run([table_cmd, "-w", "-A", fwd, "-o", POD_BRIDGE, "-j", "RETURN"])
            # A ClusterIP with no endpoint is not DNATed: it is routed to the port-less node
            # bridge and dies there, on this machine; not egress.
            for cidr in allowed:
                run([table_cmd, "-w", "-A", fwd, "-d", cidr, "-j", "RETURN"])
            _log_rule(table_cmd, fwd)
            run([table_cmd, "-w", "-A", fwd, "-j", "DROP"])
        if fwd is not None:
            self.ensure_first()

    def ensure_first(self) -> None:
        """Put the FORWARD jump first again (kube-proxy and CNI prepend their own)."""
        for table_cmd in ("iptables", "ip6tables"):
            while run([table_cmd, "-w", "-D", "FORWARD", "-i", POD_BRIDGE, "-j",
                       self.fwd_chain], check=False).returncode == 0:
                pass
            run([table_cmd, "-w", "-I", "FORWARD", "1", "-i", POD_BRIDGE, "-j", self.fwd_chain])

    def remove_rules(self) -> None:
        for table_cmd in ("iptables", "ip6tables"):
            while run([table_cmd, "-w", "-D", "OUTPUT", "-m", "cgroup", "--path", self.cgroup,
                       "-j", self.out_chain], check=False).returncode == 0:
                pass
            if self.fwd_chain is not None:
                while run([table_cmd, "-w", "-D", "FORWARD", "-i", POD_BRIDGE, "-j",
                           self.fwd_chain], check=False).returncode == 0:
                    pass
            for chain in filter(None, (self.out_chain, self.fwd_chain)):
                run([table_cmd, "-w", "-F", chain], check=False)
                run([table_cmd, "-w", "-X", chain], check=False)

    def counts(self) -> GuardCounts:
        rejected = dropped = 0
        for table_cmd in ("iptables", "ip6tables"):
            rejected += _last_rule_packets(table_cmd, self.out_chain)
            if self.fwd_chain is not None:
                dropped += _last_rule_packets(table_cmd, self.fwd_chain)
        return GuardCounts(rejected, dropped)

    def remove(self) -> None:
        self.remove_rules()
        if self.cgroup_dir.is_dir():
            leftover = self.cgroup_procs.read_text().split()
            if not leftover:
                with contextlib.suppress(OSError):
                    self.cgroup_dir.rmdir()

    def member_pids(self) -> list[int]:
        if not self.cgroup_procs.exists():
            return []
        return [int(pid) for pid in self.cgroup_procs.read_text().split()]


def browser_guard() -> EgressGuard:
    """Loopback only, for the browser the page tests drive."""
    return EgressGuard("session-manager-browser", out_chain="SM-BROWSER-OUT", fwd_chain=None,
                       allowed_v4=())


def _log_rule(table_cmd: str, chain: str) -> None:
    """What the guard stops goes to the kernel log too (dmesg), a few a minute."""
    run([table_cmd, "-w", "-A", chain, "-m", "limit", "--limit", "10/min", "-j", "LOG",
         "--log-prefix", f"{chain}: "], check=False)


def _last_rule_packets(table_cmd: str, chain: str) -> int:
    result = run([table_cmd, "-w", "-L", chain, "-v", "-x", "-n"], check=False)
    if result.returncode != 0:
        raise LocalServiceError(f"egress guard chain {chain} is missing ({table_cmd})")
    rows = [line.split() for line in result.stdout.splitlines()[2:] if line.strip()]
    if not rows or rows[-1][2] not in ("REJECT", "DROP"):
        raise LocalServiceError(f"egress guard chain {chain} does not end in REJECT/DROP")
    return int(rows[-1][0])
