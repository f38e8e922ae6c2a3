# The kind node image, assembled without a registry and without a Docker daemon (sourced by
# scripts/build-kind.sh, after the binaries and root filesystems are built):
#   1. image archives of everything the node runs, under the names kubeadm and our manifests
#      use (devcluster/archive.py writes them);
#   2. the base (kind's images/base/Dockerfile): the Debian rootfs + kind's images/base/files
#      from the module zip + containerd, runc, crictl and the CNI plugins where kind puts them;
#   3. the node-image steps (kind's pkg/build/nodeimage/buildcontext.go): kubeadm, kubelet and
#      kubectl in /usr/bin, /kind/version, /kind/manifests/default-{cni,storage}.yaml, and every
#      image imported into the rootfs's containerd store the way kind's importer does it; here
#      the node's own containerd runs on the host, in a private mount namespace;
#   4. a docker-archive with the entrypoint kind's builder commits.

kind_src=""     # the sigs.k8s.io/kind module (its images/base/files and storage manifest)
layers_key=""   # the shared layers' contents: part of the key of every image built on them

# archive OUT KEY ARGS...: `python -m devcluster.archive OUT ARGS`, unless OUT is cached at KEY.
archive() {
  local out="$1" key="$2-$layers_key-$(file_key "$repo/devcluster/archive.py")"; shift 2
  if stamp_ok "$out" "$key"; then return; fi
  log "image archive $(basename "$out" .tar)"
  PYTHONPATH="$repo" "$PYTHON" -m devcluster.archive "$out" "$@" >/dev/null
  stamp "$out" "$key"
}

version_of() { cat "$1.version"; }

image_archives() {
  local layers="$kimages/layers" base bb k="$KUBE_VERSION" c
  mkdir -p "$layers" "$kbuild/base-files/etc"
  # A small static layer under the single-binary images: users, groups, nsswitch, /tmp.
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' \
    >"$kbuild/base-files/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$kbuild/base-files/etc/group"
  printf 'hosts: files dns\n' >"$kbuild/base-files/etc/nsswitch.conf"
  base="$layers/static-base.tar"
  archive "$kimages/static-base.tar" "v1" --tag scratch/static-base:v1 \
    --file "$kbuild/base-files/etc/passwd:/etc/passwd:644" --file "$kbuild/base-files/etc/group:/etc/group:644" \
    --file "$kbuild/base-files/etc/nsswitch.conf:/etc/nsswitch.conf:644" \
    --dir /tmp:1777 --dir /root:700 --dir /var:755 --extract-last-layer "$base"
  # busybox with one symlink per applet (what `busybox --install -s` makes), as its own layer.
  bb="$layers/busybox.tar"
  local applets=() a
  while read -r a; do [ "$a" = busybox ] || applets+=(--symlink "/bin/$a:/bin/busybox"); done \
    < <("$kbin/busybox" --list)
  archive "$kimages/busybox-layer.tar" "$(version_of "$kbin/busybox")" --tag scratch/busybox:layer \
    --file "$kbin/busybox:/bin/busybox" "${applets[@]}" --extract-last-layer "$bb"
  [ -s "$base" ] && [ -s "$bb" ] || { rm -f "$kimages"/static-base.tar* "$kimages"/busybox-layer.tar*; die "layer tars missing: run again"; }
  # Every image below is rebuilt when a shared layer changes.
  layers_key=$(file_key "$base" "$bb")

  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    archive "$kimages/$c.tar" "$(version_of "$bin_dir/$c")" --tag "registry.k8s.io/$c:$k" \
      --layer "$base" --file "$bin_dir/$c:/usr/local/bin/$c" --entrypoint "[\"/usr/local/bin/$c\"]"
  done
  # kube-proxy runs iptables(-restore/-save) and conntrack: a Debian rootfs with them, and a
  # wrapper that picks the backend the node uses (nft or legacy).
  local wrapped=()
  for c in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    wrapped+=(--symlink "/usr/sbin/$c:/usr/sbin/iptables-wrapper")
  done
  archive "$kimages/kube-proxy.tar" "$(version_of "$bin_dir/kube-proxy")-$(version_of "$krootfs/proxy-$DEBIAN_SUITE.tar" | sha256sum | cut -c1-8)-$(file_key "$here/kind/iptables-wrapper")" \
    --tag "registry.k8s.io/kube-proxy:$k" --layer "$krootfs/proxy-$DEBIAN_SUITE.tar" \
    --file "$bin_dir/kube-proxy:/usr/local/bin/kube-proxy" \
    --file "$here/kind/iptables-wrapper:/usr/sbin/iptables-wrapper" "${wrapped[@]}" \
    --entrypoint '["/usr/local/bin/kube-proxy"]'
  # etcd and CoreDNS are the repo's builds, under their true versions; the cluster config
  # names these tags to kubeadm (the node image's labels say which).
  archive "$kimages/etcd.tar" "$ETCD_TAG" --tag "registry.k8s.io/etcd:$ETCD_TAG" --layer "$base" \
    --file "$bin_dir/etcd:/usr/local/bin/etcd" --dir /var/lib/etcd:700 --entrypoint '["/usr/local/bin/etcd"]'
  archive "$kimages/coredns.tar" "$COREDNS_TAG" --tag "registry.k8s.io/coredns/coredns:$COREDNS_TAG" \
    --layer "$base" --file "$bin_dir/coredns:/coredns" --entrypoint '["/coredns"]'
  archive "$kimages/pause.tar" "$PAUSE_IMAGE_TAG-$(version_of "$bin_dir/pause")" \
    --tag "registry.k8s.io/pause:$PAUSE_IMAGE_TAG" --file "$bin_dir/pause:/pause" \
    --entrypoint '["/pause"]' --user 65535:65535
  archive "$kimages/kube-network-policies.tar" "$(version_of "$kbin/netpol")" --tag "$KNP_IMAGE" \
    --layer "$base" --file "$kbin/netpol:/bin/netpol" --cmd '["/bin/netpol"]'
  archive "$kimages/local-path-provisioner.tar" "$LOCAL_PATH_TAG" --tag "$LOCAL_PATH_IMAGE" \
    --layer "$base" --file "$bin_dir/local-path-provisioner:/usr/local/bin/local-path-provisioner" \
    --entrypoint '["/usr/local/bin/local-path-provisioner"]'
  archive "$kimages/kind-busybox.tar" "$(version_of "$kbin/busybox")" --tag "$HELPER_IMAGE" \
    --layer "$base" --layer "$bb" --cmd '["/bin/sh"]'
  archive "$kimages/kind-cni.tar" "$(version_of "$bin_dir/kubectl")-$(file_key "$here/kind/kind-cni.sh")" \
    --tag "$KIND_CNI_IMAGE" --layer "$base" --layer "$bb" \
    --file "$bin_dir/kubectl:/usr/local/bin/kubectl" --file "$here/kind/kind-cni.sh:/kind-cni.sh:644" \
    --cmd '["/bin/sh", "/kind-cni.sh"]'
}

# kind's own default-storage manifest (pkg/build/nodeimage/const_storage.go), our images.
storage_manifest() {
  "$PYTHON" - "$kind_src/pkg/build/nodeimage/const_storage.go" "$LOCAL_PATH_IMAGE" "$HELPER_IMAGE" <<'EOF'
import re, sys
source, provisioner, helper = sys.argv[1:4]
body = re.search(r"const defaultStorageManifest = `(.*?\n)`", open(source).read(), re.S).group(1)
body = body.replace("` + storageProvisionerImage + `", provisioner)
body = body.replace("` + storageHelperImage + `", helper)
if "` +" in body:
    sys.exit("unexpected concatenation left in kind's storage manifest")
sys.stdout.write("# kind's const_storage.go, with images built here\n" + body)
EOF
}

# The rootfs's containerd store gets every image archive, as kind's containerdImporter does.
import_images() {
  local root="$1" run="$kbuild/import-containerd"
  rm -rf "$run"; mkdir -p "$run"
  cat >"$run/config.toml" <<EOF
version = 3
root = "$root/var/lib/containerd"
state = "$run/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images",
  "io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt", "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.restart",
  "io.containerd.monitor.container.v1.restart", "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.sandbox.controller.v1.shim", "io.containerd.grpc.v1.sandbox-controllers"]
[grpc]
  address = "$run/containerd.sock"
[ttrpc]
  address = "$run/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
  # A private mount namespace: what containerd mounts is seen nowhere else, and dies with it.
  unshare --mount --propagation private bash -c '
    set -e
    bin="$1" run="$2"; shift 2
    "$bin/containerd" --config "$run/config.toml" --log-level warn >"$run/containerd.log" 2>&1 &
    pid=$!
    trap "kill $pid 2>/dev/null; wait $pid 2>/dev/null || true" EXIT
    for _ in $(seq 1 50); do [ -S "$run/containerd.sock" ] && break; sleep 0.2; done
    for img in "$@"; do
      "$bin/ctr" --address "$run/containerd.sock" --namespace k8s.io images import \
        --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests "$img" \
        >/dev/null 2> >(grep -v "support for cgroup v1 is deprecated" >&2)
    done
    "$bin/ctr" --address "$run/containerd.sock" --namespace k8s.io images ls -q >"$run/imported.txt" \
      2> >(grep -v "support for cgroup v1 is deprecated" >&2)
  ' _ "$kbin" "$run" "${IMAGE_ARCHIVES[@]}" || die "importing images into the node's store failed"
  local want
  for want in "registry.k8s.io/kube-apiserver:$KUBE_VERSION" "registry.k8s.io/kube-proxy:$KUBE_VERSION" \
      "registry.k8s.io/etcd:$ETCD_TAG" "registry.k8s.io/coredns/coredns:$COREDNS_TAG" \
      "registry.k8s.io/pause:$PAUSE_IMAGE_TAG" "$KIND_CNI_IMAGE" "$KNP_IMAGE" "$LOCAL_PATH_IMAGE" "$HELPER_IMAGE"; do
    grep -qxF "$want" "$run/imported.txt" || die "image $want missing after the import"
  done
  rm -rf "$root/var/lib/containerd/tmpmounts" "$run"
}

node_image() {
  kind_src=$(module_dir sigs.k8s.io/kind "$KIND_VERSION")
  local files="$kind_src/images/base/files"
  [ -d "$files" ] || die "no images/base/files in sigs.k8s.io/kind $KIND_VERSION"
  ETCD_TAG="$(version_of "$bin_dir/etcd")"; ETCD_TAG="${ETCD_TAG#v}-0"
  COREDNS_TAG="$(version_of "$bin_dir/coredns")"
  LOCAL_PATH_TAG="$(version_of "$bin_dir/local-path-provisioner")"
  LOCAL_PATH_IMAGE="$IMG_PREFIX/local-path-provisioner:$LOCAL_PATH_TAG"
  image_archives
  IMAGE_ARCHIVES=()
  local name
  for name in kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd coredns pause \
      kube-network-policies local-path-provisioner kind-busybox kind-cni; do
    IMAGE_ARCHIVES+=("$kimages/$name.tar")
  done
  local key
  key=$({
    cat "$krootfs/node-base-$DEBIAN_SUITE.tar.version"
    for name in containerd runc crictl cni/ptp; do cat "$kbin/$name.version"; done
    for name in kubeadm kubelet kubectl; do cat "$bin_dir/$name.version"; done
    for name in "${IMAGE_ARCHIVES[@]}"; do cat "$name.version"; done
    echo "$KIND_VERSION"
    cat "$here"/kind/* "$repo/scripts/build-kind.sh"
  } | sha256sum | cut -c1-16)
  if stamp_ok "$node_archive" "$key"; then log "cached: node image $NODE_IMAGE"; return; fi
  local start root="$kbuild/node-rootfs"; start=$(date +%s)
  log "assembling the node image $NODE_IMAGE"
  rm -rf "$root"; mkdir -p "$root"
  tar -C "$root" --numeric-owner -xf "$krootfs/node-base-$DEBIAN_SUITE.tar"

  # --- the base image: kind's files (the COPY lines of its Dockerfile) ---
  install -d -m 0755 "$root/kind/bin" "$root/kind/manifests" "$root/LICENSES" "$root/etc/containerd" \
    "$root/etc/systemd/system/kubelet.service.d" "$root/opt/cni/bin" "$root/usr/local/sbin" \
    "$root/etc/kubernetes/manifests"
  install -m 0755 "$files"/usr/local/bin/* "$root/usr/local/bin/"
  install -m 0644 "$files/kind/README.txt" "$root/kind/"
  install -m 0755 "$files"/kind/bin/* "$root/kind/bin/"
  install -m 0644 "$files"/LICENSES/* "$root/LICENSES/"
  install -m 0644 "$files/etc/crictl.yaml" "$root/etc/"
  install -m 0644 "$files"/etc/sysctl.d/* "$root/etc/sysctl.d/"
  install -m 0644 "$files"/etc/systemd/system/{containerd,kubelet,undo-mount-hacks}.service \
    "$files/etc/systemd/system/kubelet.slice" "$root/etc/systemd/system/"
  install -m 0644 "$files"/etc/systemd/system/kubelet.service.d/* "$root/etc/systemd/system/kubelet.service.d/"
  # Ours: the Service and pod ranges routed to a port-less bridge in the node, so a packet for
  # them that nothing rewrote dies in the node instead of leaving by its default route.
  install -m 0755 "$here/kind/cluster-ranges-route.sh" "$root/kind/bin/"
  install -m 0644 "$here/kind/12-cluster-ranges-route.conf" "$root/etc/systemd/system/kubelet.service.d/"
  # containerd: restrict_oom_score_adj (no CAP_SYS_RESOURCE in this machine's bounding set: runc
  # cannot lower oom_score_adj and every sandbox would fail), kubeadm 1.35's sandbox image, no
  # fuse-overlayfs snapshotter (rootless only; not built).
  sed -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' \
      -e "s#sandbox_image = \"registry.k8s.io/pause:[^\"]*\"#sandbox_image = \"registry.k8s.io/pause:$PAUSE_IMAGE_TAG\"#" \
      -e '/^\[proxy_plugins\]/,/^  address = /d' -e '/fuse-overlayfs is used for rootless/d' \
      "$files/etc/containerd/config.toml" >"$root/etc/containerd/config.toml"
  grep -q 'restrict_oom_score_adj = true' "$root/etc/containerd/config.toml" || die "containerd config edit failed"
  ! grep -q fuse-overlayfs "$root/etc/containerd/config.toml" || die "fuse-overlayfs left in containerd config"
  # kubelet 1.35 refuses cgroup v1 unless told (the flag is not deprecated: kubelet's
  # options.go notDeprecated), so a plain `kind create cluster --image` works on v1 hosts too.
  printf 'KUBELET_EXTRA_ARGS=--runtime-cgroups=/system.slice/containerd.service --fail-cgroupv1=false\n' \
    >"$root/etc/default/kubelet"

  # --- the base image: binaries where kind's Dockerfile puts them ---
  install -m 0755 "$kbin/containerd" "$kbin/ctr" "$kbin/containerd-shim-runc-v2" "$kbin/crictl" "$root/usr/local/bin/"
  install -m 0755 "$kbin/runc" "$root/usr/local/sbin/runc"
  install -m 0755 "$kbin"/cni/{host-local,loopback,ptp,portmap,bridge} "$root/opt/cni/bin/"
  # cri-base.json: `ctr oci spec` + the product-files hook, without rlimits (as kind's Dockerfile).
  "$kbin/ctr" oci spec \
    | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
    | jq 'del(.process.rlimits)' >"$root/etc/containerd/cri-base.json"
  chmod 0644 "$root/etc/containerd/cri-base.json"
  chroot "$root" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
  chroot "$root" systemctl mask systemd-binfmt.service >/dev/null 2>&1
  [ -L "$root/etc/systemd/system/multi-user.target.wants/kubelet.service" ] || die "systemctl enable failed"

  # --- the node image (buildcontext.go buildImage) ---
  install -m 0755 "$bin_dir/kubeadm" "$bin_dir/kubelet" "$bin_dir/kubectl" "$root/usr/bin/"
  printf '%s' "$KUBE_VERSION" >"$root/kind/version"
  sed -e "s#@KIND_CNI_IMAGE@#$KIND_CNI_IMAGE#" -e "s#@KNP_IMAGE@#$KNP_IMAGE#" \
    "$here/kind/default-cni.yaml.in" >"$root/kind/manifests/default-cni.yaml"
  storage_manifest >"$root/kind/manifests/default-storage.yaml"
  log "importing ${#IMAGE_ARCHIVES[@]} images into the node's containerd store"
  import_images "$root"

  log "packing the node image"
  find "$root/dev" "$root/proc" "$root/sys" "$root/run" "$root/tmp" -mindepth 1 -delete 2>/dev/null || true
  tar -C "$root" --numeric-owner --xattrs -cf "$kind_dir/node/rootfs.tar" .
  PYTHONPATH="$repo" "$PYTHON" -m devcluster.archive "$node_archive" --tag "docker.io/$NODE_IMAGE" \
    --layer "$kind_dir/node/rootfs.tar" --entrypoint '["/usr/local/bin/entrypoint", "/sbin/init"]' \
    --env container=docker --stop-signal 'SIGRTMIN+3' \
    --label "session-manager.kind/etcd-image-tag=$ETCD_TAG" \
    --label "session-manager.kind/coredns-image-tag=$COREDNS_TAG" >/dev/null
  stamp "$node_archive" "$key"
  rm -rf "$root" "$kind_dir/node/rootfs.tar"
  log "node image $NODE_IMAGE: $(du -h "$node_archive" | cut -f1) in $(( $(date +%s) - start ))s"
}
