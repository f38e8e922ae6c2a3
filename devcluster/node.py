"""The node: containerd (CRI) + runc + bridge CNI, kubelet and kube-proxy, as host processes.

Facts that shape this (../shared/LOCALCLUSTER.md): no CAP_SYS_RESOURCE, so containerd must not
try to lower oom_score_adj (`restrict_oom_score_adj`); cgroup v1 with cgroupfs on both kubelet
and runc (kubelet 1.35 refuses cgroup v1 unless `failCgroupV1: false`); no swap; the node IP
is the port-less bridge's /32. containerd's image store is kept in the cache between runs,
so imported images survive a restart; everything else of the node lives in the run dir.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import yaml

from . import network, paths
from .ports import free_port
from .processes import Daemon, Spawner, WaitTimedOut, http_ok, run, wait_until

NODE_NAME = "sm-node"
SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"
CNI_NETWORK = "smpods"


class Node:
    def __init__(self, run_dir: Path, spawner: Spawner, *, kubeconfig: Path) -> None:
        self.run_dir = run_dir
        self.spawner = spawner
        self.kubeconfig = kubeconfig
        self.containerd_root = paths.CONTAINERD_ROOT
        self.containerd_state = run_dir / "containerd-state"
        self.containerd_socket = run_dir / "containerd.sock"
        self.kubelet_root = run_dir / "kubelet"
        self.pod_logs = run_dir / "pod-logs"
        self.cni_conf_dir = run_dir / "cni" / "net.d"
        self.cni_ipam_dir = run_dir / "cni" / "ipam"
        self.kubelet_healthz_port = free_port()
        self.kubelet_port = free_port()
        self.proxy_healthz_port = free_port()
        self.proxy_metrics_port = free_port()

    # -- containerd ------------------------------------------------------------------------

    def start_containerd(self) -> Daemon:
        config = self.run_dir / "containerd.toml"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config.write_text("\n".join([
            "version = 2",
            f'root = "{self.containerd_root}"',
            f'state = "{self.containerd_state}"',
            "[grpc]",
            f'  address = "{self.containerd_socket}"',
            "[ttrpc]",
            f'  address = "{self.containerd_socket}.ttrpc"',
            "[metrics]",
            '  address = ""',
            f"[{cri}]",
            f'  sandbox_image = "{SANDBOX_IMAGE}"',
            "  restrict_oom_score_adj = true",
            "  enable_selinux = false",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"[{cri}.containerd.runtimes.runc.options]",
            "  SystemdCgroup = false",
            f"[{cri}.cni]",
            '  bin_dir = "/usr/lib/cni"',
            f'  conf_dir = "{self.cni_conf_dir}"',
            "",
        ]))
        self._write_cni_config()
        daemon = self.spawner.spawn(
            "containerd", [paths.system_binary("containerd", "containerd"), "--config",
                           str(config)])
        wait_until(lambda: self.ctr("version", check=False).returncode == 0, timeout=30,
                   interval=0.1, what="containerd", daemon=daemon)
        return daemon

    def ctr(self, *args: str, check: bool = True):
        return run([paths.system_binary("ctr", "containerd"), "--address",
                    str(self.containerd_socket), "--namespace", "k8s.io", *args],
                   check=check)

    def _write_cni_config(self) -> None:
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        self.cni_ipam_dir.mkdir(parents=True, exist_ok=True)
        # No ipMasq and no portmap: pods have no business off this machine, and neither adds
        # rules we would have to clean up. hairpinMode lets a pod reach its own ClusterIP.
        conflist = {
            "cniVersion": "0.4.0", "name": CNI_NETWORK,
            "plugins": [{
                "type": "bridge", "bridge": network.POD_BRIDGE, "isGateway": True,
                "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "dataDir": str(self.cni_ipam_dir),
                         "ranges": [[{"subnet": network.POD_CIDR}]],
                         "routes": [{"dst": "0.0.0.0/0"}]},
            }],
        }
        (self.cni_conf_dir / "10-smpods.conflist").write_text(json.dumps(conflist, indent=2))

    def image_present(self, ref: str) -> bool:
        out = self.ctr("images", "list", "-q", check=False).stdout.split()
        return ref in out or f"docker.io/library/{ref}" in out

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", "--all-platforms", str(archive))

    # -- kubelet ---------------------------------------------------------------------------

    def start_kubelet(self, saved_sysctls: dict[str, str], *,
                      cluster_dns: str | None = None) -> Daemon:
        self.kubelet_root.mkdir(parents=True, exist_ok=True)
        self.pod_logs.mkdir(parents=True, exist_ok=True)
        resolv = self.run_dir / "resolv.conf"
        # Pods never get the machine's resolver: with no cluster DNS an empty config, with
        # one (addons) only the cluster's CoreDNS, which asks nobody upstream.
        resolv.write_text("")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": network.NODE_IP, "port": self.kubelet_port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.kubelet_healthz_port,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs", "failSwapOn": False, "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "resolvConf": str(resolv), "clusterDomain": "cluster.local",
            "clusterDNS": [cluster_dns] if cluster_dns else [],
            "podLogsDir": str(self.pod_logs),
            "serializeImagePulls": False, "protectKernelDefaults": False,
            # No evictions or image GC on a shared dev disk; nothing here fills it.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "shutdownGracePeriod": "0s", "maxPods": 110,
            "nodeStatusUpdateFrequency": "4s", "syncFrequency": "10s",
            "fileCheckFrequency": "20s", "staticPodPath": "",
        }
        config_path = self.run_dir / "kubelet-config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        daemon = self.spawner.spawn("kubelet", [
            paths.binary("kubelet"), f"--config={config_path}",
            f"--kubeconfig={self.kubeconfig}", f"--root-dir={self.kubelet_root}",
            f"--cert-dir={self.kubelet_root / 'pki'}", f"--node-ip={network.NODE_IP}",
            f"--hostname-override={NODE_NAME}", "--v=1",
        ])
        healthz = f"http://127.0.0.1:{self.kubelet_healthz_port}/healthz"
        wait_until(lambda: http_ok(healthz), timeout=60, interval=0.1, what="kubelet healthz",
                   daemon=daemon)
        # kubelet sets kernel.panic=10 and panic_on_oops=1 at start: put them back now.
        time.sleep(1)
        network.write_sysctls(saved_sysctls, only=network.PANIC_SYSCTLS)
        return daemon

    # -- kube-proxy ------------------------------------------------------------------------

    def start_kube_proxy(self) -> Daemon:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "mode": "iptables", "clusterCIDR": network.POD_CIDR,
            "hostnameOverride": NODE_NAME, "bindAddress": network.NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{self.proxy_healthz_port}",
            "metricsBindAddress": f"127.0.0.1:{self.proxy_metrics_port}",
            # Leave the host's conntrack table alone, and no NodePorts on loopback
            # (that would need route_localnet=1).
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
            "nodePortAddresses": [f"{network.NODE_IP}/32"],
            "iptables": {"localhostNodePorts": False, "syncPeriod": "30s",
                         "minSyncPeriod": "0s"},
        }
        path = self.run_dir / "kube-proxy-config.yaml"
        path.write_text(yaml.safe_dump(config))
        daemon = self.spawner.spawn("kube-proxy", [paths.binary("kube-proxy"),
                                                   f"--config={path}", "--v=1"])
        healthz = f"http://127.0.0.1:{self.proxy_healthz_port}/healthz"
        wait_until(lambda: http_ok(healthz), timeout=60, interval=0.1, what="kube-proxy healthz",
                   daemon=daemon)
        return daemon

    # -- teardown --------------------------------------------------------------------------

    def remove_pods(self) -> None:
        """SIGKILL every pod container while containerd still runs (kubelet is already gone);
        cleanup.clean_host then removes shims, mounts and cgroups."""
        with contextlib.suppress(paths.LocalServiceError):
            for task in self.ctr("tasks", "list", "-q", check=False).stdout.split():
                self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, check=False)
            with contextlib.suppress(WaitTimedOut):  # best effort: clean_host follows
                wait_until(lambda: "RUNNING" not in self.ctr("tasks", "list", check=False).stdout,
                           timeout=5, interval=0.1, what="the pods' tasks to end")

