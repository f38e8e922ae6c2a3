#!/usr/bin/env bash
# Build kube-apiserver from Debian bookworm's `kubernetes` source package (1.20.2) into a cache
# directory outside the repo. No API server binary is downloadable here; Debian's source builds
# one offline. Skips everything when the binary is already cached.
#
#   scripts/build-kube-apiserver.sh          # prints the binary's path on the last line
#
# Env: SESSION_MANAGER_CACHE (default ~/.cache/session-manager).
set -o errexit -o nounset -o pipefail

cache_dir="${SESSION_MANAGER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/session-manager}"
binary="$cache_dir/bin/kube-apiserver"
log() { printf '[build-kube-apiserver] %s\n' "$*" >&2; }

if [ -x "$binary" ]; then
  log "cached: $binary"
  echo "$binary"
  exit 0
fi

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

work="$cache_dir/build"
rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/apt/archives/partial" "$work/src" "$cache_dir/bin"

# Source packages: a private sources file made from the machine's own Debian sources with
# deb-src added, and a private apt state dir, so the machine's apt configuration is untouched.
machine_sources=/etc/apt/sources.list.d/debian.sources
if [ ! -f "$machine_sources" ]; then
  log "no $machine_sources: cannot derive a deb-src entry from this machine's apt configuration"
  exit 1
fi
sed -E 's/^Types:.*/Types: deb deb-src/' "$machine_sources" >"$work/apt/sources.sources"
apt_private=(
  -o "Dir::Etc::SourceList=/dev/null"
  -o "Dir::Etc::SourceParts=$work/apt/parts"
  -o "Dir::State::Lists=$work/apt/lists"
  -o "Dir::Cache::Archives=$work/apt/archives"
)
mkdir -p "$work/apt/parts"
mv "$work/apt/sources.sources" "$work/apt/parts/debian-src.sources"

log "installing build dependencies from Debian (golang-go, rsync, dpkg-dev, reflect2)"
"${sudo_cmd[@]}" apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
  golang-go rsync dpkg-dev golang-github-modern-go-reflect2-dev ca-certificates >/dev/null

log "fetching the kubernetes source package"
apt-get "${apt_private[@]}" update -qq >/dev/null
(cd "$work/src" && apt-get "${apt_private[@]}" source -qq kubernetes >/dev/null 2>&1)
src=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)
[ -n "$src" ] || { log "apt-get source kubernetes produced no source tree"; exit 1; }
log "source tree: $src"

# Go 1.19 crashes in the vendored reflect2 (1.0.1) on the first custom-resource write;
# Debian's packaged 1.0.2 works.
reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
rm -rf "$src/vendor/github.com/modern-go/reflect2"
cp -r "$reflect2" "$src/vendor/github.com/modern-go/reflect2"

log "building cmd/kube-apiserver (about 8 minutes cold on 2 cores)"
start=$(date +%s)
(
  cd "$src"
  export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=debian
  export GOFLAGS=-mod=vendor GOCACHE="$cache_dir/gocache"
  make WHAT=cmd/kube-apiserver
) >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; log "build failed; full log: $work/build.log"; exit 1; }
built=$(find "$src/_output" -type f -name kube-apiserver -perm -u+x | head -n 1)
[ -n "$built" ] || { log "build finished but no kube-apiserver binary found"; exit 1; }
install -m 0755 "$built" "$binary"
log "built in $(( $(date +%s) - start ))s: $binary"
rm -rf "$work" "$cache_dir/gocache"
echo "$binary"
