"""NetworkPolicies, enforced: a session pod resolves names through the cluster DNS and reaches
nothing else it has no business with — not Redis, not the API, not another session's pod —
while the control plane reaches it (and Redis). The probes connect from inside the pods.

Where the cluster's CNI ignores NetworkPolicies (the local cluster's Debian bridge plugin:
E2E_NETWORKPOLICY_ENFORCED=0) the policies are installed and validated but their isolation
cannot be shown: the test xfails with that reason. On kind it must pass.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

# Connects to HOST:PORT from inside a pod; prints what happened. A policy drops the SYN, so a
# blocked connection times out; the targets all listen, so "refused" would mean it got through.
PROBE = """
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    address = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)[0][4][0]
except OSError as err:
    print(json.dumps({"result": "no-dns", "error": str(err)})); sys.exit()
try:
    socket.create_connection((address, port), timeout=4).close()
    result = "connected"
except socket.timeout:
    result = "timeout"
except OSError as err:
    result = type(err).__name__
print(json.dumps({"result": result, "address": address}))
"""


def probe(kubectl: Any, pod: dict, host: str, port: int) -> str:
    result = kubectl.run("exec", pod["metadata"]["name"], "--", "python3", "-c", PROBE, host,
                         str(port), namespace=pod["metadata"]["namespace"])
    return json.loads(result.stdout)["result"]


def test_session_pods_reach_only_dns_and_only_the_control_plane_reaches_them(
        api: Any, kubectl: Any, deployment: Any, running_session: Any) -> None:
    if os.environ.get("E2E_NETWORKPOLICY_ENFORCED", "1") == "0":
        pytest.xfail("this cluster's CNI does not enforce NetworkPolicies")
    control, sessions = deployment.control_namespace, deployment.namespace
    first, second = running_session("e2e-isolation-a"), running_session("e2e-isolation-b")
    pod, other = kubectl.ready_pod(first), kubectl.ready_pod(second)
    assert pod and other
    (api_pod, *_) = [p for p in kubectl.items("pods", kubectl.API_SELECTOR, namespace=control)
                     if not p["metadata"].get("deletionTimestamp")]
    redis = f"redis.{control}.svc.cluster.local"
    targets = {
        "Redis": (redis, 6379),
        "the API Service": (f"{deployment.release}.{control}.svc.cluster.local", 80),
        "the API pod": (api_pod["status"]["podIP"], 8080),
        "another session's pod": (other["status"]["podIP"], 1111),
        "another session's Service": (f"session-{second}.{sessions}.svc.cluster.local", 80),
    }
    # The probe works and the targets listen: the control plane reaches them.
    assert probe(kubectl, api_pod, redis, 6379) == "connected"
    assert probe(kubectl, api_pod, other["status"]["podIP"], 1111) == "connected"
    assert probe(kubectl, api_pod, pod["status"]["podIP"], 1111) == "connected"
    # From the session pod: names resolve (DNS is allowed), connections do not.
    reached = {what: probe(kubectl, pod, host, port)
               for what, (host, port) in targets.items()}
    assert all(result == "timeout" for result in reached.values()), reached
    # And the chat path, control plane -> pod, still answers.
    response = api.post(f"/session/{first}/chat", json={"message": "still reachable"})
    assert response.status_code in (200, 202), response.text
