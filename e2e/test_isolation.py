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

# Connects to each HOST:PORT from inside a pod, all at once (one exec, a few seconds: the
# session pods must not idle out under the probes); prints what happened to each. A policy
# drops the SYN, so a blocked connection times out; the targets all listen, so "refused"
# would mean it got through.
PROBE = """
import concurrent.futures, json, socket, sys
def probe(target):
    host, port = target.rsplit(":", 1)
    try:
        address = socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)[0][4][0]
    except OSError as err:
        return "no-dns: " + str(err)
    try:
        socket.create_connection((address, int(port)), timeout=4).close()
        return "connected"
    except socket.timeout:
        return "timeout"
    except OSError as err:
        return type(err).__name__
targets = sys.argv[1:]
with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(dict(zip(targets, pool.map(probe, targets)))))
"""


def probe(kubectl: Any, pod: dict, targets: dict[str, tuple[str, int]]) -> dict[str, str]:
    """What connecting from `pod` to each target gave, by the target's name."""
    addresses = [f"{host}:{port}" for host, port in targets.values()]
    result = kubectl.run("exec", pod["metadata"]["name"], "--", "python3", "-c", PROBE,
                         *addresses, namespace=pod["metadata"]["namespace"])
    by_address = json.loads(result.stdout)
    return {what: by_address[address] for what, address in zip(targets, addresses, strict=True)}


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
    # Both pods answer a chat first: their idle clocks start again, so neither scales to 0
    # under the probes.
    for session_id in (first, second):
        response = api.post(f"/session/{session_id}/chat", json={"message": "awake"})
        assert response.status_code in (200, 202), response.text
    # The probe works and the targets listen: the control plane reaches them.
    from_control = probe(kubectl, api_pod, {
        "Redis": (redis, 6379), "another session's pod": (other["status"]["podIP"], 1111),
        "the session's pod": (pod["status"]["podIP"], 1111)})
    assert set(from_control.values()) == {"connected"}, from_control
    # From the session pod: names resolve (DNS is allowed), connections do not.
    reached = probe(kubectl, pod, targets)
    assert all(result == "timeout" for result in reached.values()), reached
    # And the chat path, control plane -> pod, still answers.
    response = api.post(f"/session/{first}/chat", json={"message": "still reachable"})
    assert response.status_code in (200, 202), response.text
