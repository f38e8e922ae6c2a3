"""The egress guard for kind: nothing the cluster runs reaches an address off this machine.

Two parts, both counted, both asserted 0 at the end of e2e:
  - our own containerd and dockerd (and what they start outside the node containers, such as
    docker-proxy) run in the cgroup v2 group `session-manager-kind`: OUTPUT rejects their
    packets unless they go to loopback or the kind network (network.EgressGuard, OUT chain);
  - everything the node containers send arrives on the kind network's bridge: raw PREROUTING
    drops what is not for the kind network, multicast/broadcast or an address of this machine
    (SMKIND-EGRESS-FWD). Raw PREROUTING comes before routing, so it counts even with
    forwarding off, which is how our engine leaves the host.
On an engine that is not ours (GitHub's runners) only the bridge part applies: that engine's
own pulls are not the cluster's traffic.
"""

from __future__ import annotations

from ..network import EgressGuard, GuardCounts
from ..paths import LocalServiceError
from ..processes import run

CGROUP = "session-manager-kind"
OUT_CHAIN = "SMKIND-EGRESS-OUT"
FWD_CHAIN = "SMKIND-EGRESS-FWD"
_RETURNS = {
    "iptables": ("224.0.0.0/4", "255.255.255.255"),
    "ip6tables": ("fe80::/10", "ff00::/8"),
}


class KindGuard:
    def __init__(self, *, bridge: str, subnet: str, own_engine: bool) -> None:
        self.bridge = bridge
        self.subnet = subnet
        self.out = EgressGuard(CGROUP, out_chain=OUT_CHAIN, fwd_chain=None,
                               allowed_v4=(subnet,)) if own_engine else None

    @property
    def cgroup_procs(self):
        return None if self.out is None else self.out.cgroup_procs

    def install(self) -> None:
        if self.out is not None:
            self.out.install()
        self._remove_bridge_rules()
        for table_cmd, returns in _RETURNS.items():
            raw = [table_cmd, "-w", "-t", "raw"]
            run([*raw, "-N", FWD_CHAIN])
            if table_cmd == "iptables":
                run([*raw, "-A", FWD_CHAIN, "-d", self.subnet, "-j", "RETURN"])
            for cidr in returns:
                run([*raw, "-A", FWD_CHAIN, "-d", cidr, "-j", "RETURN"])
            run([*raw, "-A", FWD_CHAIN, "-m", "addrtype", "--dst-type", "LOCAL", "-j", "RETURN"])
            run([*raw, "-A", FWD_CHAIN, "-m", "limit", "--limit", "20/min", "-j", "LOG",
                 "--log-prefix", f"{FWD_CHAIN}: "])
            run([*raw, "-A", FWD_CHAIN, "-j", "DROP"])
            run([*raw, "-I", "PREROUTING", "1", "-i", self.bridge, "-j", FWD_CHAIN])

    def counts(self) -> GuardCounts:
        rejected = self.out.counts().output_rejected if self.out is not None else 0
        dropped = 0
        for table_cmd in _RETURNS:
            result = run([table_cmd, "-w", "-t", "raw", "-L", FWD_CHAIN, "-v", "-x", "-n"],
                         check=False)
            rows = [line.split() for line in result.stdout.splitlines()[2:] if line.strip()]
            if result.returncode != 0 or not rows or rows[-1][2] != "DROP":
                raise LocalServiceError(f"the kind egress guard chain {FWD_CHAIN} is missing "
                                        f"or changed ({table_cmd})")
            dropped += int(rows[-1][0])
        return GuardCounts(rejected, dropped)

    def remove(self) -> None:
        self._remove_bridge_rules()
        if self.out is not None:
            self.out.remove()

    def member_pids(self) -> list[int]:
        return [] if self.out is None else self.out.member_pids()

    def _remove_bridge_rules(self) -> None:
        for table_cmd in _RETURNS:
            raw = [table_cmd, "-w", "-t", "raw"]
            while run([*raw, "-D", "PREROUTING", "-i", self.bridge, "-j", FWD_CHAIN],
                      check=False).returncode == 0:
                pass
            run([*raw, "-F", FWD_CHAIN], check=False)
            run([*raw, "-X", FWD_CHAIN], check=False)
