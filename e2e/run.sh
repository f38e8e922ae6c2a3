#!/usr/bin/env bash
# End-to-end test on a throwaway kind cluster: real KEDA, real images, real Redis.
#
#   bash e2e/run.sh
#
# Without kind, on a machine that can run the local cluster (`python -m devcluster check`), the
# same suite runs on it instead: `python -m devcluster e2e` deploys k8s-manifests there.
#
# Needs a reachable Docker engine, kind, kubectl and a Python with requirements-dev.txt
# installed (the repo's .venv is used when there is one). Without Docker or kind it prints one
# "skipped" line and exits 0. Each run: a uniquely named cluster with its own kubeconfig (your
# ~/.kube/config is not touched); on exit, whatever happened, logs go to e2e/logs/<cluster>/
# and the cluster is deleted.
#
# Env: KEEP_CLUSTER=1 (keep the cluster for debugging; the kubeconfig path is printed),
#      KIND_NODE_IMAGE (override e2e/kind-config.yaml), PYTHON, PYTEST_ARGS (extra arguments).
set -o errexit -o nounset -o pipefail

# The KEDA release the manifests are pinned to (k8s-manifests/kustomization.yaml, README).
KEDA_VERSION=2.20.2
# Short timings so the lifecycle runs in minutes; KEDA_COOLDOWN_PERIOD < IDLE_TIMEOUT.
IDLE_TIMEOUT=40
KEDA_COOLDOWN_PERIOD=10
KEDA_POLLING_INTERVAL=2
KEDA_INITIAL_COOLDOWN_PERIOD=30

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# -- prerequisites: skip (exit 0) without Docker or kind, fail without the rest ------------
missing=()
if ! command -v docker >/dev/null 2>&1; then
  missing+=("docker not installed")
elif ! docker info >/dev/null 2>&1; then
  missing+=("docker engine not reachable")
fi
command -v kind >/dev/null 2>&1 || missing+=("kind not installed")
if [ "${#missing[@]}" -gt 0 ]; then
  reasons="$(printf '%s; ' "${missing[@]}")"
  # No kind here: the local single-node cluster (devcluster) where this machine can run it.
  if [ -z "${PYTHON:-}" ] && [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; fi
  if (cd "$root" && "${PYTHON:-python3}" -m devcluster check >/dev/null 2>&1); then
    echo "e2e: no kind (${reasons%; }): running on the local cluster (python -m devcluster e2e)"
    cd "$root"
    # shellcheck disable=SC2086 # PYTEST_ARGS is a list of arguments on purpose
    exec "${PYTHON:-python3}" -m devcluster e2e ${PYTEST_ARGS:-}
  fi
  echo "e2e: skipped — needs Docker and kind, or a machine that can run the local cluster" \
    "(${reasons%; }; $(cd "$root" && "${PYTHON:-python3}" -m devcluster check 2>&1 | tail -n 1))"
  exit 0
fi
command -v kubectl >/dev/null 2>&1 || { echo "e2e: kubectl is required" >&2; exit 1; }
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
"$PYTHON" -c 'import pytest, requests' 2>/dev/null || {
  echo "e2e: $PYTHON lacks pytest/requests: pip install -r requirements-dev.txt" >&2
  exit 1
}

# -- cluster, with a trap that always collects logs and deletes it -------------------------
cluster="sm-e2e-$(date +%s)-$RANDOM"
work="$here/.work/$cluster"
logs="$here/logs/$cluster"
mkdir -p "$work" "$logs"
export KUBECONFIG="$work/kubeconfig"
cluster_created=""
port_forward_pid=""

cleanup() {
  local status=$?
  set +o errexit
  if [ -n "$port_forward_pid" ]; then
    kill "$port_forward_pid" 2>/dev/null
    wait "$port_forward_pid" 2>/dev/null
  fi
  if [ -n "$cluster_created" ]; then
    log "collecting logs into ${logs#"$root"/}"
    kubectl get all,scaledobjects.keda.sh,triggerauthentications.keda.sh,networkpolicies -A \
      -o wide >"$logs/objects.txt" 2>&1
    kubectl get events -A --sort-by=.lastTimestamp >"$logs/events.txt" 2>&1
    kind export logs "$logs/kind" --name "$cluster" >/dev/null 2>&1
    if [ "${KEEP_CLUSTER:-}" = "1" ]; then
      log "KEEP_CLUSTER=1: cluster $cluster kept; KUBECONFIG=$KUBECONFIG"
      log "delete it with: kind delete cluster --name $cluster"
    else
      kind delete cluster --name "$cluster" >/dev/null 2>&1
      rm -rf "$work"
    fi
  else
    rm -rf "$work"
  fi
  if [ "$status" -eq 0 ]; then log "passed"; else log "FAILED (exit $status); logs in $logs"; fi
  exit "$status"
}
trap cleanup EXIT

log "creating kind cluster $cluster"
node_image=()
if [ -n "${KIND_NODE_IMAGE:-}" ]; then node_image=(--image "$KIND_NODE_IMAGE"); fi
cluster_created=1
kind create cluster --name "$cluster" --config "$here/kind-config.yaml" \
  --kubeconfig "$KUBECONFIG" --wait 120s ${node_image[@]+"${node_image[@]}"}

# -- KEDA ------------------------------------------------------------------------------------
log "installing KEDA $KEDA_VERSION"
kubectl apply --server-side \
  -f "https://github.com/kedacore/keda/releases/download/v${KEDA_VERSION}/keda-${KEDA_VERSION}.yaml" \
  >/dev/null
kubectl wait --for=condition=Established --timeout=120s \
  crd/scaledobjects.keda.sh crd/triggerauthentications.keda.sh
kubectl -n keda wait --for=condition=Available deployment --all --timeout=300s

# -- images: non-latest tags, so the kubelet never tries to pull them ------------------------
tag="e2e-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo local)"
if [ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ]; then tag="$tag-dirty"; fi
log "building images :$tag"
docker build --quiet -t "session-manager:$tag" "$root" >/dev/null
docker build --quiet -t "session-manager-demo-agent:$tag" "$root/demo_agent" >/dev/null
kind load docker-image --name "$cluster" "session-manager:$tag" "session-manager-demo-agent:$tag"

# -- secrets: random, created directly in the cluster, never written to the repo -------------
kubectl apply -f "$root/k8s-manifests/namespaces.yaml" >/dev/null
random_hex() { "$PYTHON" -c "import secrets, sys; print(secrets.token_hex(int(sys.argv[1])))" "$1"; }
redis_password="$(random_hex 24)"
api_key="$(random_hex 32)"
for namespace in session-manager sessions; do
  kubectl -n "$namespace" create secret generic redis-credentials \
    --from-literal=password="$redis_password" >/dev/null
done
kubectl -n session-manager create secret generic api-keys --from-literal=keys="$api_key" \
  >/dev/null
# The push scaler's mutual TLS: the worker's serving certificate, KEDA's client certificate.
"$root/scripts/scaler-certs.sh" "$work/scaler-certs" \
  session-manager-scaler.session-manager.svc.cluster.local session-manager-scaler.session-manager.svc
kubectl -n session-manager create secret generic session-manager-scaler-tls \
  --from-file="$work/scaler-certs/server" >/dev/null
kubectl -n sessions create secret generic session-manager-scaler-client \
  --from-file="$work/scaler-certs/client" >/dev/null

# -- the manifests, through an overlay that sets the image tags and the short timings --------
manifests_from_work="$("$PYTHON" -c 'import os, sys; print(os.path.relpath(*sys.argv[1:]))' \
  "$root/k8s-manifests" "$work")"
cat >"$work/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $manifests_from_work
images:
  - name: session-manager
    newTag: "$tag"
patches:
  - target:
      kind: ConfigMap
      name: session-manager-config
    patch: |-
      - {op: add, path: /data/USER_POD_IMAGE, value: "session-manager-demo-agent:$tag"}
      - {op: add, path: /data/IDLE_TIMEOUT, value: "$IDLE_TIMEOUT"}
      - {op: add, path: /data/KEDA_COOLDOWN_PERIOD, value: "$KEDA_COOLDOWN_PERIOD"}
      - {op: add, path: /data/KEDA_POLLING_INTERVAL, value: "$KEDA_POLLING_INTERVAL"}
      - {op: add, path: /data/KEDA_INITIAL_COOLDOWN_PERIOD, value: "$KEDA_INITIAL_COOLDOWN_PERIOD"}
      - {op: add, path: /data/LOG_LEVEL, value: "DEBUG"}
YAML
log "applying k8s-manifests (overlay: images :$tag, IDLE_TIMEOUT=$IDLE_TIMEOUT)"
kubectl apply -k "$work" >/dev/null
for deployment in redis session-manager session-manager-worker; do
  kubectl -n session-manager rollout status "deployment/$deployment" --timeout=300s
done

# -- port-forward the API and run the suite --------------------------------------------------
port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
kubectl -n session-manager port-forward svc/session-manager "$port:80" \
  >"$logs/port-forward.log" 2>&1 &
port_forward_pid=$!
base_url="http://127.0.0.1:$port"
forwarding=""
for _ in $(seq 60); do
  if "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "$base_url/livez" 2>/dev/null; then
    forwarding=1
    break
  fi
  sleep 1
done
[ -n "$forwarding" ] || { log "port-forward to svc/session-manager never answered /livez"; exit 1; }

log "running pytest e2e/ against $base_url"
cd "$root"
# shellcheck disable=SC2086 # PYTEST_ARGS is a list of arguments on purpose
E2E_BASE_URL="$base_url" \
E2E_API_KEY="$api_key" \
E2E_NAMESPACE=sessions \
E2E_CONTROL_NAMESPACE=session-manager \
E2E_IDLE_TIMEOUT="$IDLE_TIMEOUT" \
E2E_KEDA_COOLDOWN_PERIOD="$KEDA_COOLDOWN_PERIOD" \
E2E_KEDA_POLLING_INTERVAL="$KEDA_POLLING_INTERVAL" \
  "$PYTHON" -m pytest e2e/ -v -p no:cacheprovider ${PYTEST_ARGS:-}
