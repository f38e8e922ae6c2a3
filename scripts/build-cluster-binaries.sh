#!/usr/bin/env bash
# Build the binaries of the local cluster into a cache directory outside the repo, with the
# machine's Go from the Go module proxy:
#   - Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
#     kubectl) from the k8s.io/kubernetes module; its `replace k8s.io/X => ./staging/...` lines
#     point at directories the module zip does not carry, so each is pointed at the published
#     k8s.io/X module of the same release (v0.<minor>.<patch>).
#   - KEDA (operator, metrics API server, admission webhooks) from github.com/kedacore/keda/v2, built inside a copy of
#     the module (its go.mod has replace lines, so `go install …@version` refuses it), plus its
#     CRDs (config/crd) for the API server to validate what we send exactly as KEDA does.
#   - etcd from go.etcd.io/etcd/server/v3, whose `replace go.etcd.io/etcd/X => ../X` lines are
#     pointed at the published modules of the same release. Debian's etcd-server (3.4.23) lacks
#     what kube-apiserver 1.35 needs to serve lists from its watch cache (RequestWatchProgress,
#     etcd >= 3.4.31 / 3.5.13): every list, and every label-selector deletecollection, then
#     reads all objects of the kind from etcd, 5 s a call at 5,000 sessions.
#   - pause, the pod sandbox binary, from the Kubernetes module's build/pause (gcc -static).
#   - actionlint, for the GitHub Actions workflows (`make test` lints them).
#   - cert-manager's CRDs (deploy/crds of github.com/cert-manager/cert-manager, a download, no
#     build): the chart's cert-manager variant renders Certificates, validated against them.
#   - helm, from helm.sh/helm/v4 (no replace lines: a plain `go install`), for the chart in
#     charts/session-manager (`make test` lints and renders it; k8s-manifests/ is its rendering).
# Each part is skipped when its outputs are cached. Prints progress on stderr and the bin
# directory on the last line of stdout.
#
#   scripts/build-cluster-binaries.sh [kube|kubeadm|etcd|keda-crds|cert-manager-crds|keda|pause|lint|helm|coredns|local-path|all]   # default all
#   (all = what make test needs; coredns only for make e2e; kubeadm only for kind's node image,
#   scripts/build-kind.sh)
#
# Env: SESSION_MANAGER_CACHE (default ~/.cache/session-manager), KUBE_VERSION, ETCD_VERSION,
# KEDA_VERSION, CERT_MANAGER_VERSION, HELM_VERSION.
set -o errexit -o nounset -o pipefail

kube_version="${KUBE_VERSION:-v1.35.4}"
keda_version="${KEDA_VERSION:-v2.20.2}"
cert_manager_version="${CERT_MANAGER_VERSION:-v1.21.2}"
# The 3.6 line is what Kubernetes 1.35 is released and tested with (its client is 3.6 too).
etcd_version="${ETCD_VERSION:-v3.6.16}"
cache_dir="${SESSION_MANAGER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/session-manager}"
bin_dir="$cache_dir/bin"
what="${1:-all}"
kube_binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

log() { printf '[build-cluster-binaries] %s\n' "$*" >&2; }

command -v go >/dev/null 2>&1 || { log "no go on PATH: the cluster binaries are built with the machine's Go"; exit 1; }
# Module downloads and build cache live in the cache dir: nothing lands in the repo or in $HOME/go.
export GOMODCACHE="$cache_dir/gomod" GOCACHE="$cache_dir/gocache" GOFLAGS="-modcacherw -mod=mod"
export GOWORK=off CGO_ENABLED=0 GOTOOLCHAIN=local
mkdir -p "$bin_dir" "$cache_dir/build"

# Copies a downloaded module into a writable build directory and prints its path.
module_copy() {
  local module="$1" version="$2" dest="$3" dir
  dir=$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] && [ -d "$dir" ] || { log "go mod download $module@$version gave no directory"; exit 1; }
  rm -rf "$dest"
  cp -r "$dir" "$dest"
  chmod -R u+w "$dest"
}

# Points a module's `replace M => <local dir>` lines at the published module M of `version`
# (the module zip lacks those directories) and fails if one is left.
#   publish_replaces GO_MOD MODULE_REGEX LOCAL_DIR_REGEX VERSION
publish_replaces() {
  local go_mod="$1" module="$2" local_dir="$3" version="$4"
  sed -i -E "s#^([[:space:]]*)($module) => $local_dir\$#\1\2 => \2 $version#" "$go_mod"
  if grep -qE "=> $local_dir" "$go_mod"; then
    log "$go_mod still has local replace lines after rewriting:"
    grep -E "=> $local_dir" "$go_mod" >&2; exit 1
  fi
}

# Runs a build step with its output in a log, shown (tail) only when it fails.
run_logged() {
  local logfile="$1"; shift
  if ! "$@" >"$logfile" 2>&1; then
    tail -n 40 "$logfile" >&2
    log "failed; full log: $logfile"
    exit 1
  fi
}

build_kube() {
  local missing=() b
  for b in "${kube_binaries[@]}"; do
    [ -x "$bin_dir/$b" ] && [ "$(cat "$bin_dir/$b.version" 2>/dev/null)" = "$kube_version" ] || missing+=("$b")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "cached: Kubernetes $kube_version (${kube_binaries[*]})"
    return
  fi
  local src="$cache_dir/build/kubernetes" start minor_version
  start=$(date +%s)
  minor_version="v0.${kube_version#v1.}"
  log "downloading k8s.io/kubernetes@$kube_version"
  module_copy k8s.io/kubernetes "$kube_version" "$src"
  # The module's go.work names the staging directories too; we build the module alone.
  rm -f "$src/go.work" "$src/go.work.sum"
  publish_replaces "$src/go.mod" 'k8s\.io/[a-z0-9-]+' '\./staging/src/k8s\.io/[a-z0-9-]+' "$minor_version"
  local major="${kube_version#v}"; major="${major%%.*}"
  local minor="${kube_version#v*.}"; minor="${minor%%.*}"
  local ldflags="-s -w" key val
  for pair in "gitVersion=$kube_version" "gitMajor=$major" "gitMinor=$minor" "gitTreeState=clean" \
      "gitCommit=module-$kube_version" "buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; do
    key="${pair%%=*}"; val="${pair#*=}"
    ldflags+=" -X k8s.io/component-base/version.$key=$val -X k8s.io/client-go/pkg/version.$key=$val"
  done
  log "downloading dependencies of Kubernetes $kube_version (published staging modules $minor_version)"
  (cd "$src" && run_logged "$cache_dir/build/kube-download.log" go mod download)
  local pkgs=()
  for b in "${missing[@]}"; do pkgs+=("./cmd/$b"); done
  log "building ${missing[*]} with $(go env GOVERSION) (about 5 minutes cold on 2 cores)"
  mkdir -p "$cache_dir/build/kube-out"
  (cd "$src" && run_logged "$cache_dir/build/kube-build.log" \
    go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$cache_dir/build/kube-out/" "${pkgs[@]}")
  for b in "${missing[@]}"; do
    install -m 0755 "$cache_dir/build/kube-out/$b" "$bin_dir/$b"
    echo "$kube_version" >"$bin_dir/$b.version"
  done
  log "built Kubernetes $kube_version in $(( $(date +%s) - start ))s"
  rm -rf "$src" "$cache_dir/build/kube-out"
}

build_etcd() {
  if [ -x "$bin_dir/etcd" ] && [ "$(cat "$bin_dir/etcd.version" 2>/dev/null)" = "$etcd_version" ]; then
    log "cached: etcd $etcd_version"
    return
  fi
  local src="$cache_dir/build/etcd" start
  start=$(date +%s)
  log "downloading go.etcd.io/etcd/server/v3@$etcd_version"
  module_copy go.etcd.io/etcd/server/v3 "$etcd_version" "$src"
  publish_replaces "$src/go.mod" 'go\.etcd\.io/etcd/[a-z0-9/]+' '\.\./[a-z0-9/]+' "$etcd_version"
  log "building etcd $etcd_version (about a minute cold on 2 cores)"
  (cd "$src" && run_logged "$cache_dir/build/etcd-build.log" \
    go build -trimpath -ldflags "-s -w" -o "$cache_dir/build/etcd-out/etcd" .)
  install -m 0755 "$cache_dir/build/etcd-out/etcd" "$bin_dir/etcd"
  echo "$etcd_version" >"$bin_dir/etcd.version"
  log "built etcd $etcd_version in $(( $(date +%s) - start ))s"
  rm -rf "$src" "$cache_dir/build/etcd-out"
}

# A module's CRD files (DIR/*.yaml) as one multi-document file in the cache, by version.
#   module_crds NAME MODULE VERSION DIR_IN_MODULE
module_crds() {
  local name="$1" module="$2" version="$3" sub="$4" crds="$cache_dir/$1-crds.yaml"
  if [ -s "$crds" ] && [ "$(cat "$crds.version" 2>/dev/null)" = "$version" ]; then
    log "cached: $name $version CRDs"
    return
  fi
  local dir f first=1
  dir=$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] && [ -d "$dir/$sub" ] || { log "$module@$version has no $sub"; exit 1; }
  : >"$crds.tmp"
  for f in "$dir/$sub"/*.yaml; do
    [ "$first" -eq 1 ] || echo '---' >>"$crds.tmp"
    first=0
    cat "$f" >>"$crds.tmp"
  done
  mv "$crds.tmp" "$crds"
  echo "$version" >"$crds.version"
  log "$name $version CRDs: $crds"
}

# KEDA's own CRDs (config/crd/bases, what its kustomization lists) as one multi-document file.
# Only a download: the API-server-only test layers need these without building KEDA.
extract_keda_crds() {
  module_crds keda "github.com/kedacore/keda/v2" "$keda_version" config/crd/bases
}

# cert-manager's CRDs: the chart's Certificates (scaler.tls.source=certManager) are validated
# against them.
extract_cert_manager_crds() {
  module_crds cert-manager "github.com/cert-manager/cert-manager" "$cert_manager_version" deploy/crds
}

build_keda() {
  extract_keda_crds
  if [ -x "$bin_dir/keda" ] && [ -x "$bin_dir/keda-adapter" ] && [ -x "$bin_dir/keda-admission-webhooks" ] \
      && [ "$(cat "$bin_dir/keda.version" 2>/dev/null)" = "$keda_version" ]; then
    log "cached: KEDA $keda_version (keda, keda-adapter, keda-admission-webhooks)"
    return
  fi
  local src="$cache_dir/build/keda" start
  start=$(date +%s)
  log "downloading github.com/kedacore/keda/v2@$keda_version"
  module_copy github.com/kedacore/keda/v2 "$keda_version" "$src"
  local want have
  want=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$src/go.mod")
  have=$(go env GOVERSION); have="${have#go}"
  if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n 1)" != "$want" ]; then
    log "KEDA $keda_version needs Go $want; this machine has $have"; exit 1
  fi
  local ldflags="-s -w -X github.com/kedacore/keda/v2/version.GitCommit=module-$keda_version -X github.com/kedacore/keda/v2/version.Version=${keda_version#v}"
  log "downloading dependencies of KEDA $keda_version"
  (cd "$src" && run_logged "$cache_dir/build/keda-download.log" go mod download)
  log "building KEDA operator, metrics API server and admission webhooks (about 6 minutes cold on 2 cores)"
  mkdir -p "$cache_dir/build/keda-out"
  (cd "$src" && run_logged "$cache_dir/build/keda-build.log" \
    go build -trimpath -ldflags "$ldflags" -o "$cache_dir/build/keda-out/" ./cmd/operator ./cmd/adapter ./cmd/webhooks)
  install -m 0755 "$cache_dir/build/keda-out/operator" "$bin_dir/keda"
  install -m 0755 "$cache_dir/build/keda-out/adapter" "$bin_dir/keda-adapter"
  install -m 0755 "$cache_dir/build/keda-out/webhooks" "$bin_dir/keda-admission-webhooks"
  echo "$keda_version" >"$bin_dir/keda.version"
  log "built KEDA $keda_version in $(( $(date +%s) - start ))s"
  rm -rf "$src" "$cache_dir/build/keda-out"
}

# The pod sandbox ("pause") image's binary, from the Kubernetes module's build/pause, static.
build_pause() {
  if [ -x "$bin_dir/pause" ] && [ "$(cat "$bin_dir/pause.version" 2>/dev/null)" = "$kube_version" ]; then
    log "cached: pause ($kube_version)"
    return
  fi
  command -v gcc >/dev/null 2>&1 || { log "no gcc: the pause binary is built with gcc -static"; exit 1; }
  local dir
  dir=$(go mod download -json "k8s.io/kubernetes@$kube_version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  gcc -Os -static -DVERSION="$kube_version" -o "$bin_dir/pause" "$dir/build/pause/linux/pause.c"
  echo "$kube_version" >"$bin_dir/pause.version"
  log "built pause: $bin_dir/pause"
}

# `go install` of a module with no replace lines into the bin dir, cached by version.
#   go_install_tool NAME MODULE/PKG VERSION "what it is" [EXTRA LDFLAGS]
go_install_tool() {
  local name="$1" package="$2" version="$3" what="$4" ldflags="-s -w ${5:-}" start
  if [ -x "$bin_dir/$name" ] && [ "$(cat "$bin_dir/$name.version" 2>/dev/null)" = "$version" ]; then
    log "cached: $name $version"
    return
  fi
  start=$(date +%s)
  log "building $name $version ($what)"
  (GOBIN="$bin_dir" run_logged "$cache_dir/build/$name.log" \
    go install -trimpath -ldflags "$ldflags" "$package@$version")
  echo "$version" >"$bin_dir/$name.version"
  log "built $name $version in $(( $(date +%s) - start ))s"
}

# CoreDNS: the cluster DNS of the e2e stack (about 2 minutes cold on 2 cores).
build_coredns() {
  go_install_tool coredns github.com/coredns/coredns "${COREDNS_VERSION:-v1.14.7}" "cluster DNS"
}

# local-path-provisioner: dynamic PersistentVolumes on the node's disk, the StorageClass of the
# local cluster (and kind's default storage). v0.0.30 is the newest the module proxy serves.
build_local_path() {
  go_install_tool local-path-provisioner github.com/rancher/local-path-provisioner \
    "${LOCAL_PATH_PROVISIONER_VERSION:-v0.0.30}" "dynamic volumes on the node's disk"
}

# actionlint: make test lints .github/workflows with it.
build_lint() {
  go_install_tool actionlint github.com/rhysd/actionlint/cmd/actionlint \
    "${ACTIONLINT_VERSION:-v1.7.12}" "GitHub workflow linter"
}

# helm: make test lints and renders charts/session-manager with it, and k8s-manifests/ is
# rendered from the chart (scripts/render-manifests.sh). About 4 minutes cold on 2 cores.
build_helm() {
  local version="${HELM_VERSION:-v4.3.2}" pkg=helm.sh/helm/v4/internal/version
  go_install_tool helm helm.sh/helm/v4/cmd/helm "$version" "Kubernetes package manager" \
    "-X $pkg.version=$version -X $pkg.gitCommit=module-$version -X $pkg.gitTreeState=clean"
}

case "$what" in
  kube) build_kube ;;
  kubeadm) kube_binaries=(kubeadm); build_kube ;;
  etcd) build_etcd ;;
  keda-crds) extract_keda_crds ;;
  cert-manager-crds) extract_cert_manager_crds ;;
  keda) build_keda ;;
  pause) build_pause ;;
  lint) build_lint ;;
  helm) build_helm ;;
  coredns) build_coredns ;;
  local-path) build_local_path ;;
  all) build_kube; build_etcd; build_keda; build_pause; build_lint; build_helm; build_local_path; extract_cert_manager_crds ;;
  *) log "usage: $0 [kube|kubeadm|etcd|keda-crds|cert-manager-crds|keda|pause|lint|helm|coredns|local-path|all]"; exit 2 ;;
esac
echo "$bin_dir"
