#!/usr/bin/env bash
# Build what `make e2e` needs to run on kind, into the cache directory outside the repo, with the
# machine's Go from the Go module proxy and Debian packages from the machine's own apt sources:
#   kind  the kind CLI, from its Go module (sigs.k8s.io/kind) -> bin/kind
#   node  a kind node image for our Kubernetes version, for where kindest/node cannot be pulled
#         (no registry here). `kind build node-image` cannot run offline (every mode downloads
#         release tarballs or images), so this does what its builder does
#         (pkg/build/nodeimage/buildcontext.go in the kind module) from parts built here:
#           - binaries kind's base image ships, from their Go modules (containerd, runc with
#             seccomp, crictl, CNI plugins) plus kubeadm and the repo's own Kubernetes, etcd,
#             CoreDNS, local-path-provisioner and pause (scripts/build-cluster-binaries.sh);
#           - a Debian rootfs with kind's package list (bookworm: its systemd still boots on
#             cgroup v1) and kind's images/base/files from the module zip;
#           - the images kubeadm runs, plus the CNI (kind-cni: kindnetd's CNI part) and
#             NetworkPolicy enforcement (kube-network-policies, patched: this kernel has no
#             nft `queue` expression) and local-path storage, as docker-archives written by
#             devcluster/archive.py, imported into the rootfs's containerd store;
#         -> kind/node/kind-node-<version>.tar (`docker load` it; the last stdout line is its path)
#   all   both
# Each part is skipped when cached for its inputs (versions, the files in scripts/kind/).
#
#   scripts/build-kind.sh [kind|node|all]      # default all; run as root (chroot, unshare)
#
# Env: SESSION_MANAGER_CACHE, KUBE_VERSION, KIND_VERSION, PYTHON (a Python for devcluster).
set -o errexit -o nounset -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=scripts/kind/lib.sh
source "$here/kind/lib.sh"
what="${1:-all}"

build_kind() {
  go_install_to kind "$bin_dir" "$KIND_VERSION" -ldflags "-s -w" -- "sigs.k8s.io/kind@$KIND_VERSION"
}

# containerd, ctr and the runc shim, with the build tags kind's base image uses.
build_containerd() {
  local m=github.com/containerd/containerd/v2 v="$CONTAINERD_VERSION"
  go_install_to containerd "$kbin" "$v" -tags "no_aufs no_zfs no_btrfs no_devmapper" \
    -ldflags "-s -w -X $m/version.Version=$v -X $m/version.Revision=module -X $m/version.Package=$m" \
    -- "$m/cmd/containerd@$v" "$m/cmd/ctr@$v" "$m/cmd/containerd-shim-runc-v2@$v"
}

# runc with seccomp (kubeadm's static pods ask for RuntimeDefault; a runc without it refuses
# them): cgo, linked statically against libseccomp from Debian's libseccomp-dev, unpacked into
# a sysroot (nothing installed on the host).
build_runc() {
  if stamp_ok "$kbin/runc" "$RUNC_VERSION"; then log "cached: runc $RUNC_VERSION"; return; fi
  local sysroot="$kbuild/seccomp-sysroot" deb
  if [ ! -f "$sysroot/usr/include/seccomp.h" ]; then
    rm -rf "$sysroot" "$kbuild/debs-seccomp"; mkdir -p "$sysroot" "$kbuild/debs-seccomp"
    apt_candidate libseccomp-dev >/dev/null
    (cd "$kbuild/debs-seccomp" && apt-get download libseccomp-dev libseccomp2 >/dev/null 2>&1) \
      || die "apt-get download libseccomp-dev failed"
    for deb in "$kbuild"/debs-seccomp/*.deb; do dpkg-deb -x "$deb" "$sysroot"; done
  fi
  local lib="$sysroot/usr/lib/x86_64-linux-gnu"
  CGO_ENABLED=1 CGO_CFLAGS="-I$sysroot/usr/include" CGO_LDFLAGS="-L$lib" \
    PKG_CONFIG_PATH="$lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$sysroot" \
    go_install_to runc "$kbin" "$RUNC_VERSION" -buildmode=pie \
      -tags "seccomp urfave_cli_no_docs netgo osusergo" \
      -ldflags "-s -w -X main.gitCommit=module-$RUNC_VERSION -linkmode external -extldflags -static-pie" \
      -- "github.com/opencontainers/runc@$RUNC_VERSION"
  "$kbin/runc" --version | grep -q seccomp || die "runc built without seccomp"
}

build_crictl() {
  go_install_to crictl "$kbin" "$CRICTL_VERSION" \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION#v}" \
    -- "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
}

# The CNI plugins kind's base image ships, in their own directory.
build_cni() {
  local m=github.com/containernetworking/plugins p pkgs=()
  for p in ipam/host-local main/loopback main/ptp meta/portmap main/bridge; do
    pkgs+=("$m/plugins/$p@$CNI_PLUGINS_VERSION")
  done
  mkdir -p "$kbin/cni"
  go_install_to ptp "$kbin/cni" "$CNI_PLUGINS_VERSION" \
    -ldflags "-s -w -X $m/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" -- "${pkgs[@]}"
}

# kube-network-policies with its nft queue expressions swapped for the xt NFQUEUE target
# (scripts/kind/knp-xtqueue.go says why).
build_knp() {
  local version="$KNP_VERSION-xtqueue-$(file_key "$here/kind/knp-xtqueue.go" "$here/kind/knp-xtqueue.py")"
  if stamp_ok "$kbin/netpol" "$version"; then log "cached: kube-network-policies $version"; return; fi
  local src="$kbuild/kube-network-policies" start
  start=$(date +%s)
  log "building kube-network-policies $KNP_VERSION (patched: xt NFQUEUE)"
  module_copy sigs.k8s.io/kube-network-policies "$KNP_VERSION" "$src"
  "${PYTHON:-python3}" "$here/kind/knp-xtqueue.py" "$src" >&2
  cp "$here/kind/knp-xtqueue.go" "$src/pkg/networkpolicy/xtqueue.go"
  (cd "$src" && run_logged "$kbuild/knp.log" go build -trimpath -ldflags "-s -w" -o "$kbin/netpol" ./cmd)
  stamp "$kbin/netpol" "$version"
  log "built kube-network-policies in $(( $(date +%s) - start ))s"
  rm -rf "$src"
}

# busybox-static from Debian: the shell of the CNI installer and of local-path's helper pods.
build_busybox() {
  local version
  version=$(apt_candidate busybox-static)
  if stamp_ok "$kbin/busybox" "$version"; then log "cached: busybox $version"; return; fi
  rm -rf "$kbuild/busybox"; mkdir -p "$kbuild/busybox"
  (cd "$kbuild/busybox" && apt-get download busybox-static >/dev/null 2>&1 && dpkg-deb -x ./*.deb root) \
    || die "apt-get download busybox-static failed"
  install -m 0755 "$kbuild/busybox/root/bin/busybox" "$kbin/busybox"
  stamp "$kbin/busybox" "$version"
  rm -rf "$kbuild/busybox"
}

build_node() {
  # The repo's own binaries (cached there): Kubernetes with kubeadm, etcd, CoreDNS, pause,
  # local-path-provisioner.
  local part
  for part in kube kubeadm etcd coredns pause local-path; do
    bash "$repo/scripts/build-cluster-binaries.sh" "$part" >/dev/null
  done
  build_containerd; build_runc; build_crictl; build_cni; build_knp; build_busybox
  rootfs node-base "${NODE_PACKAGES[@]}"
  rootfs proxy "${PROXY_PACKAGES[@]}"
  # shellcheck source=scripts/kind/node-image.sh
  source "$here/kind/node-image.sh"
  node_image
}

case "$what" in
  kind) build_kind ;;
  node) build_node ;;
  all) build_kind; build_node ;;
  *) log "usage: $0 [kind|node|all]"; exit 2 ;;
esac
[ "$what" = kind ] && echo "$bin_dir/kind" || echo "$node_archive"
