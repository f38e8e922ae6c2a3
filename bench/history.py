"""The conversation in every delivery: the chat path's cost with `history` on against off.

Two `python -m service serve` processes, one with the defaults (HISTORY_MAX_MESSAGES=20,
HISTORY_MAX_BYTES=65536) and one with HISTORY_MAX_MESSAGES=0, each with a running session whose
conversation already holds 20 settled exchanges; then one client posts chats (200, answered by
the demo agent) to both, alternating request by request. The history is read in the script that
admits the chat, so what it costs is the bigger script reply and the bigger body to the pod.
Target: history on <= 1.1x history off (p50 of each round).
"""

from __future__ import annotations

import json
import secrets

from devcluster.ports import free_port

from .chat import make_running
from .harness import Client, Context, percentile
from .report import Figure, Row, Target

EARLIER = 20
TARGET_RATIO = 1.1
# A plausible user message (~300 bytes); the demo agent echoes it, so a settled exchange in
# the history is ~600 bytes of text: 20 of them ~12 KB per delivery.
MESSAGE = ("Could you summarise the three main points of the report we discussed, and say "
           "which of them the team should act on first? Keep it short, a few sentences at "
           "most, and mention the deadline if the report gives one. Thanks! ")


def history(ctx: Context) -> Figure:
    figure = Figure("history", "Chat to a running session with a 20-message conversation: "
                    "history in the delivery on vs off")
    ctx.flush()
    ctx.agent()
    services = {}
    ctx.kube("bench")
    for name, value in (("on", None), ("off", "0")):
        env = ctx.service_env(port=free_port(), namespace="bench", limits=True)
        env["HISTORY_MAX_MESSAGES"] = value
        services[name] = ctx.spawn_service(f"service-history-{name}", env)
    clients = {name: Client(proc.port, {"X-API-Key": ctx.api_key})
               for name, proc in services.items()}
    sessions = {name: make_running(ctx, client) for name, client in clients.items()}

    def chat(name: str) -> float:
        status, payload, elapsed = clients[name].request(
            "POST", f"/session/{sessions[name]}/chat",
            {"message": MESSAGE, "message_id": secrets.token_hex(8)})
        if status != 200 or json.loads(payload)["status"] != "processed":
            raise RuntimeError(f"expected a 200 processed chat, got {status} {payload[:200]!r}")
        return elapsed * 1000

    for _ in range(EARLIER):  # the conversation so far, answered by the agent
        for name in clients:
            chat(name)
    per_round = 60 if ctx.quick else 200
    ctx.settle()
    rounds: list[dict[str, list[float]]] = []
    for _ in range(ctx.rounds):
        samples: dict[str, list[float]] = {"on": [], "off": []}
        for index in range(per_round):
            order = ("on", "off") if index % 2 == 0 else ("off", "on")
            for name in order:
                samples[name].append(chat(name))
        rounds.append(samples)
        ctx.check_alive()
    # What the agent was given: "recall" answers with the earlier messages it received.
    recalled = {}
    for name, client in clients.items():
        _, payload, _ = client.request("POST", f"/session/{sessions[name]}/chat",
                                       {"message": "recall"})
        recalled[name] = json.loads(payload)["pod_response"]["reply"]
    for client in clients.values():
        client.close()
    for name in services:
        ctx.stop(f"service-history-{name}")

    def p50(name: str) -> list[float]:
        return [percentile(r[name], 50) for r in rounds]

    def p95(name: str) -> list[float]:
        return [percentile(r[name], 95) for r in rounds]

    figure.rows = [
        Row("history on (20 earlier exchanges)", "ms", p50("on"), p95s=p95("on"),
            ratios=[a / b for a, b in zip(p50("on"), p50("off"), strict=True)],
            baseline="history off", target=Target("<=", TARGET_RATIO, on="ratio")),
        Row("history off (HISTORY_MAX_MESSAGES=0)", "ms", p50("off"), p95s=p95("off")),
    ]
    figure.notes = [
        f"{ctx.rounds} rounds x {per_round} chats each way, one client, alternating on/off "
        "request by request; each session already had "
        f"{EARLIER} settled exchanges of ~{2 * len(MESSAGE)} bytes.",
        "Both: gunicorn (production options), rate limiter on (never refusing), the demo "
        "agent answering at once; the session's pod address published as the watcher would.",
        "Check (\"recall\" after the runs): on: the agent got "
        f"{recalled['on'].count(' | ') + 1 if recalled['on'] != 'recall: (nothing earlier)' else 0}"
        f" earlier messages; off: {recalled['off']!r}.",
    ]
    figure.data = {"rounds": rounds}
    return figure
