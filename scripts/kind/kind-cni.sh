#!/bin/sh
# kind-cni: the part of kindnetd a single-host kind cluster needs (kind images/kindnetd/cmd/kindnetd
# cni.go and routes.go): write this node's CNI config (ptp + host-local on the node's podCIDR +
# portmap) once the node has a podCIDR, and keep routes to the other nodes' pod ranges via their
# InternalIP. No masquerade: nothing a pod sends is meant to leave the machine.
set -eu
: "${NODE_NAME:?NODE_NAME must be set (downward API spec.nodeName)}"
if [ -n "${CONTROL_PLANE_ENDPOINT:-}" ]; then
  # kind patches this in (installcni: "would you kindly patch this file"): talk to the API server
  # directly, without waiting for kube-proxy's Service rules.
  export KUBERNETES_SERVICE_HOST="${CONTROL_PLANE_ENDPOINT%:*}"
  export KUBERNETES_SERVICE_PORT="${CONTROL_PLANE_ENDPOINT##*:}"
fi
conf_dir="${CNI_CONF_DIR:-/etc/cni/net.d}"
conf="$conf_dir/10-kind-ptp.conflist"
mtu=$(cat /sys/class/net/eth0/mtu 2>/dev/null || echo 1500)
written=""

write_conf() {
  cat >"$conf.tmp" <<EOF
{
  "cniVersion": "0.3.1",
  "name": "kind",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "mtu": $mtu,
      "ipam": {
        "type": "host-local",
        "dataDir": "/run/cni-ipam-state",
        "routes": [ { "dst": "0.0.0.0/0" } ],
        "ranges": [ [ { "subnet": "$1" } ] ]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  mv "$conf.tmp" "$conf"
  echo "kind-cni: wrote $conf for podCIDR $1"
}

while true; do
  cidr=$(kubectl get node "$NODE_NAME" -o 'jsonpath={.spec.podCIDR}' 2>/dev/null || true)
  if [ -n "$cidr" ] && [ "$cidr" != "$written" ]; then
    write_conf "$cidr"
    written="$cidr"
  fi
  kubectl get nodes -o 'jsonpath={range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}' 2>/dev/null \
    | while read -r name pod_cidr node_ip; do
        [ "$name" != "$NODE_NAME" ] && [ -n "$pod_cidr" ] && [ -n "$node_ip" ] || continue
        ip route replace "$pod_cidr" via "$node_ip" || true
      done
  sleep "${RESYNC_SECONDS:-10}"
done
