#!/bin/sh
# Routes this cluster's Service and pod ranges to a port-less bridge inside the node
# (session-manager), so a packet for a ClusterIP that kube-proxy has not DNATed yet (or that has no
# endpoint), or for a pod that is gone, dies here instead of following the node's default route
# out to the docker network and beyond. More specific routes still win: each live pod's /32 (ptp),
# other nodes' podCIDRs (kind-cni); and DNAT re-routes what kube-proxy rewrites (OUTPUT re-routes
# after NAT, PREROUTING DNAT happens before routing). kubelet's ExecStartPre: /kind/kubeadm.conf
# exists by then.
set -eu
conf=/kind/kubeadm.conf
[ -f "$conf" ] || exit 0
bridge=clustersink0
ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge
ip link set "$bridge" up
for key in serviceSubnet podSubnet; do
  for cidr in $(sed -n "s/^[[:space:]]*$key:[[:space:]]*\"\{0,1\}\([^\"]*\)\"\{0,1\}[[:space:]]*\$/\1/p" "$conf" | head -n1 | tr ',' ' '); do
    case "$cidr" in
      *:*) ip -6 route replace "$cidr" dev "$bridge" ;;
      *) ip route replace "$cidr" dev "$bridge" ;;
    esac
  done
done
