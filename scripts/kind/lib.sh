# Settings and helpers of scripts/build-kind.sh (sourced). Same cache directory and Go
# environment as scripts/build-cluster-binaries.sh, so module downloads and the build cache are
# shared. Versions are those kind's images/base/Dockerfile pins, unless a comment says otherwise.

KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"              # the repo's Kubernetes (build-cluster-binaries.sh)
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.3.4}"
RUNC_VERSION="${RUNC_VERSION:-v1.4.3}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.36.0}"
CNI_PLUGINS_VERSION="${CNI_PLUGINS_VERSION:-v1.9.1}"
KNP_VERSION="${KNP_VERSION:-v0.8.0}"                 # sigs.k8s.io/kube-network-policies
PAUSE_IMAGE_TAG="${PAUSE_IMAGE_TAG:-3.10.1}"         # kubeadm 1.35 constants.PauseVersion
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"             # systemd 252 boots on cgroup v1 (trixie's 257 refuses)
# kind's clean-install list, minus network storage and rootless (nfs-common, open-iscsi,
# fuse-overlayfs): a local single-node cluster never uses them.
NODE_PACKAGES=(systemd conntrack iptables nftables iproute2 ethtool util-linux mount kmod
  libseccomp2 pigz e2fsprogs bash ca-certificates curl jq procps)
PROXY_PACKAGES=(iptables nftables conntrack iproute2)  # kube-proxy's image

cache_dir="${SESSION_MANAGER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/session-manager}"
bin_dir="$cache_dir/bin"          # the repo's binaries, and kind
kind_dir="$cache_dir/kind"        # everything of the node image
kbin="$kind_dir/bin"
kbuild="$kind_dir/build"
krootfs="$kind_dir/rootfs"
kimages="$kind_dir/images"
node_archive="$kind_dir/node/kind-node-$KUBE_VERSION.tar"
NODE_IMAGE="session-manager/kind-node:$KUBE_VERSION"
# Our images' names as containerd's CRI plugin normalises them (fully qualified).
IMG_PREFIX="docker.io/session-manager"
KIND_CNI_IMAGE="$IMG_PREFIX/kind-cni:$KUBE_VERSION"
KNP_IMAGE="$IMG_PREFIX/kube-network-policies:$KNP_VERSION-xtqueue"
HELPER_IMAGE="$IMG_PREFIX/kind-busybox:$DEBIAN_SUITE"
mkdir -p "$bin_dir" "$kbin" "$kbuild" "$krootfs" "$kimages" "$kind_dir/node"

command -v go >/dev/null 2>&1 || { echo "[build-kind] no go on PATH" >&2; exit 1; }
export GOMODCACHE="$cache_dir/gomod" GOCACHE="$cache_dir/gocache" GOFLAGS="-modcacherw -mod=mod"
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi

log() { printf '[build-kind] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# run_logged LOG CMD...: output in LOG, its tail shown when CMD fails.
run_logged() {
  local logfile="$1"; shift
  if ! "$@" >"$logfile" 2>&1; then
    tail -n 40 "$logfile" >&2
    die "failed; full log: $logfile"
  fi
}

# FILE exists and FILE.version holds KEY / record KEY for FILE.
stamp_ok() { [ -e "$1" ] && [ "$(cat "$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" >"$1.version"; }
# A short hash of files' contents: part of a cache key.
file_key() { cat "$@" | sha256sum | cut -c1-12; }

module_dir() { go mod download -json "$1@$2" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'; }

# module_copy MODULE VERSION DEST: a writable copy of a downloaded module.
module_copy() {
  local dir; dir=$(module_dir "$1" "$2")
  [ -n "$dir" ] && [ -d "$dir" ] || die "go mod download $1@$2 gave no directory"
  rm -rf "$3"; cp -r "$dir" "$3"; chmod -R u+w "$3"
}

# go_install_to NAME DEST VERSION [GO FLAGS...] -- PACKAGE@VERSION...: `go install` into DEST,
# skipped when DEST/NAME is cached at VERSION.
go_install_to() {
  local name="$1" dest="$2" version="$3" flags=() start; shift 3
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do flags+=("$1"); shift; done
  shift
  if stamp_ok "$dest/$name" "$version"; then log "cached: $name $version"; return; fi
  start=$(date +%s)
  log "building $name $version"
  GOBIN="$dest" run_logged "$kbuild/${name//\//-}.log" go install -trimpath "${flags[@]}" "$@"
  stamp "$dest/$name" "$version"
  log "built $name $version in $(( $(date +%s) - start ))s"
}

# apt_candidate PACKAGE: the version apt would download, after `apt-get update` when the
# machine has no package lists yet (a fresh machine).
apt_candidate() {
  local version
  version=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/{print $2}')
  if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    apt-get update -qq >&2 || die "apt-get update failed"
    version=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/{print $2}')
  fi
  [ -n "$version" ] && [ "$version" != "(none)" ] || die "apt knows no package $1"
  echo "$version"
}

# The Debian mirror this machine's apt uses (its first non-security deb URI), never hard-coded.
debian_mirror() {
  local uri=""
  if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
    uri=$(awk '/^URIs:/{for(i=2;i<=NF;i++) print $i}' /etc/apt/sources.list.d/*.sources \
      | grep -v -- '-security' | head -n1 || true)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb"{for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
      /etc/apt/sources.list | grep -v -- '-security' | head -n1 || true)
  fi
  [ -n "$uri" ] || die "no Debian mirror in /etc/apt/sources.list(.d)"
  echo "$uri"
}

# rootfs NAME PACKAGES...: a debootstrapped Debian rootfs as a tar in kind/rootfs, cached.
# "node-base" also gets kind's post-install steps (images/base/Dockerfile, its first RUN).
rootfs() {
  local name="$1"; shift
  local out="$krootfs/$name-$DEBIAN_SUITE.tar" key="$DEBIAN_SUITE:$*" dir="$kbuild/rootfs-$name"
  if stamp_ok "$out" "$key"; then log "cached: $name rootfs"; return; fi
  command -v debootstrap >/dev/null 2>&1 || die "no debootstrap (apt-get install debootstrap)"
  local mirror start; mirror=$(debian_mirror); start=$(date +%s)
  log "debootstrap $DEBIAN_SUITE from $mirror: minbase + $*"
  rm -rf "$dir"; mkdir -p "$dir" "$kbuild/debootstrap-cache"
  run_logged "$kbuild/debootstrap-$name.log" debootstrap --variant=minbase \
    --include="$(IFS=,; echo "$*")" --cache-dir="$kbuild/debootstrap-cache" "$DEBIAN_SUITE" "$dir" "$mirror"
  if [ "$name" = node-base ]; then
    # No tmpfiles-setup at boot, no default wants, journald does not read kmsg, systemd as init.
    find "$dir/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
    rm -f "$dir"/lib/systemd/system/multi-user.target.wants/* "$dir"/etc/systemd/system/*.wants/* \
      "$dir"/lib/systemd/system/local-fs.target.wants/* \
      "$dir"/lib/systemd/system/sockets.target.wants/*udev* \
      "$dir"/lib/systemd/system/sockets.target.wants/*initctl* \
      "$dir"/lib/systemd/system/basic.target.wants/*
    echo "ReadKMsg=no" >>"$dir/etc/systemd/journald.conf"
    ln -sf /usr/lib/systemd/systemd "$dir/sbin/init"
    : >"$dir/etc/machine-id"
  else
    rm -rf "$dir/var/lib/apt" "$dir/etc/apt"
  fi
  # What no container needs: docs, man pages, apt lists and caches, locales.
  rm -rf "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
    "$dir"/var/cache/apt/* "$dir"/var/lib/apt/lists/* "$dir"/var/log/*.log \
    "$dir"/var/cache/debconf/*-old "$dir"/var/lib/dpkg/*-old
  find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  find "$dir/dev" "$dir/proc" "$dir/sys" -mindepth 1 -delete 2>/dev/null || true
  tar -C "$dir" --numeric-owner --xattrs -cf "$out.tmp" .
  mv "$out.tmp" "$out"
  stamp "$out" "$key"
  log "$name rootfs: $(du -h "$out" | cut -f1) in $(( $(date +%s) - start ))s"
  rm -rf "$dir"
}
