"""The warm pool and the wake's phases on the local cluster with real KEDA.

1. create -> first reply (`Prefer: wait`), a pool hit against a cold create, interleaved, with
   the demo agent's start-up delay at 0 s and at 5 s (AGENT_STARTUP_DELAY_SECONDS in a copy of
   the default templates); the agent's own reply time is a POST /chat straight to the pod that
   answered. Target: a hit <= the agent's own reply time + 100 ms.
2. a burst of 3x the pool size of creates at once: all answered, hits and misses counted, and
   the time the keeper takes to fill the pool again.
3. chat -> reply on a session KEDA scaled to 0, with the readiness probe every 1 s (the default
   templates) and every 2 s (as before), interleaved with a bare `scale 0 -> 1 -> Ready` of the
   same pod; the phases of each wake from /status. Target: p95 <= 1.2x the bare scale-up's.
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devcluster.processes import wait_until
from service import bundle
from service.core.config import REPO_ROOT, Settings
from service.http import create_app
from service.store import Store
from service.store.keys import POOL_READY

from .harness import Context, percentile
from .report import Figure, Row, Target
from .wake import API_KEY, BareDeployment, Session, Stack

POOL_SIZE = 3
HIT_MARGIN_MS = 100
WAKE_P95_TARGET = 1.2
HEADERS = {"X-API-Key": API_KEY}


def templates(ctx: Context, *, startup_delay: int = 0, probe_period: int = 1) -> Path:
    """A copy of the default templates with the agent's start-up delay and probe period."""
    target = ctx.workdir / f"templates-delay{startup_delay}-probe{probe_period}"
    if target.is_dir():
        return target
    shutil.copytree(REPO_ROOT / "templates", target)
    deployment = target / "deployment.yaml"
    text = deployment.read_text()
    env = "            - name: PORT\n              value: {{ port | string | tojson }}\n"
    probe = "            periodSeconds: 1\n"
    assert env in text and probe in text, "templates/deployment.yaml changed: update bench"
    text = text.replace(env, env + "            - name: AGENT_STARTUP_DELAY_SECONDS\n"
                                   f"              value: \"{startup_delay}\"\n")
    deployment.write_text(text.replace(probe, f"            periodSeconds: {probe_period}\n"))
    return target


class PoolRun:
    """A stack whose worker keeps a pool of POOL_SIZE for one template set, an API that claims
    from it and one with the pool off (every create cold). One stack per run: every worker of
    an installation keeps the pool to its own WARM_POOL_SIZE, so they share the setting."""

    def __init__(self, ctx: Context, templates_dir: Path) -> None:
        self.stack = Stack(ctx, templates_dir=templates_dir, warm_pool_size=POOL_SIZE,
                           max_wait_seconds=60)
        self.settings = self.stack.settings
        self.pooled = self._client(self.settings)
        self.cold = self._client(self.settings.replace(warm_pool_size=0))

    def _client(self, settings: Settings):
        store = Store.from_url(settings.redis_url, socket_timeout_seconds=10,
                               session_ttl_seconds=86400,
                               activity_ttl_seconds=settings.activity_ttl_seconds)
        return create_app(settings, kube=self.stack.kube, store=store).test_client()

    def full(self) -> bool:
        return self.stack.store.redis.zcard(POOL_READY) >= POOL_SIZE

    def wait_full(self) -> float:
        began = time.monotonic()
        wait_until(self.full, timeout=300, what="the warm pool full", interval=0.05)
        return time.monotonic() - began

    def create_to_reply(self, client, n: int) -> tuple[float, bool, str]:
        """Seconds from POST /session/create to the first reply; a hit?; the session."""
        began = time.monotonic()
        created = client.post("/session/create", json={"user_id": f"u{n}"}, headers=HEADERS)
        assert created.status_code == 201, created.json
        session_id, hit = created.json["uuid"], created.json["status"] == "running"
        response = client.post(f"/session/{session_id}/chat", json={"message": "hello"},
                               headers={**HEADERS, "Prefer": "wait=60"})
        assert response.status_code == 200, response.json
        return time.monotonic() - began, hit, session_id

    def own_reply(self, session_id: str) -> float:
        """The agent's own reply time: POST /chat straight to the session's pod."""
        [pod] = [p for p in self.stack.kube.list_objects(
                     bundle.KindRef("v1", "Pod"), bundle.label_selector(session_id))
                 if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")]
        body = json.dumps({"message": "hello", "message_id": f"direct-{time.time_ns()}",
                           "session_id": session_id})
        began = time.monotonic()
        conn = http.client.HTTPConnection(pod["status"]["podIP"], self.settings.user_pod_port,
                                          timeout=30)
        conn.request("POST", "/chat", body=body, headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 200
        conn.close()
        return time.monotonic() - began

    def delete(self, session_id: str) -> None:
        self.pooled.delete(f"/session/{session_id}", headers=HEADERS)

    def close(self) -> None:
        self.stack.close()


def _hits_against_cold(ctx: Context, figure: Figure, delay: int) -> None:
    run = PoolRun(ctx, templates(ctx, startup_delay=delay))
    try:
        run.wait_full()
        hits, colds, own = [], [], []
        for turn in range(ctx.rounds):
            run.wait_full()
            took, hit, session_id = run.create_to_reply(run.pooled, turn)
            assert hit, "the pool was full: the create should have been a hit"
            hits.append(took)
            own.append(run.own_reply(session_id))
            run.delete(session_id)
            took, hit, session_id = run.create_to_reply(run.cold, turn)
            assert not hit
            colds.append(took)
            run.delete(session_id)
            print(f"    delay {delay}s turn {turn + 1}: hit {hits[-1]:.3f}s (agent "
                  f"{own[-1]:.3f}s), cold {colds[-1]:.2f}s", flush=True)
        margin = [(h - o) * 1000 for h, o in zip(hits, own, strict=True)]
        figure.rows += [
            Row(f"start-up {delay}s: create -> reply, pool hit", "s", hits,
                p95s=[percentile(hits, 95)],
                ratios=[h / c for h, c in zip(hits, colds, strict=True)], baseline="cold"),
            Row(f"start-up {delay}s: create -> reply, cold", "s", colds,
                p95s=[percentile(colds, 95)]),
            Row(f"start-up {delay}s: the agent's own reply", "ms", [o * 1000 for o in own]),
            Row(f"start-up {delay}s: hit - agent's own reply", "ms", margin,
                target=Target("<=", HIT_MARGIN_MS, "ms")),
        ]
    finally:
        run.close()


def _burst(ctx: Context, figure: Figure) -> None:
    run = PoolRun(ctx, templates(ctx))
    try:
        run.wait_full()
        count = 3 * POOL_SIZE
        with ThreadPoolExecutor(count) as threads:
            results = list(threads.map(lambda n: run.create_to_reply(run.pooled, n),
                                       range(count)))
        refill = run.wait_full()
        hits = [took for took, hit, _ in results if hit]
        misses = [took for took, hit, _ in results if not hit]
        figure.rows += [
            Row(f"burst of {count}: answered", "", [len(results)],
                target=Target(">=", count)),
            Row(f"burst of {count}: pool hits", "", [len(hits)]),
            Row(f"burst of {count}: create -> reply, hits", "s", hits or [float("nan")],
                p95s=[percentile(hits, 95)] if hits else None),
            Row(f"burst of {count}: create -> reply, misses", "s", misses or [float("nan")],
                p95s=[percentile(misses, 95)] if misses else None),
            Row("pool refilled after the burst", "s", [refill]),
        ]
        for _, _, session_id in results:
            run.delete(session_id)
    finally:
        run.close()


def _wakes(ctx: Context, stack: Stack, figure: Figure) -> dict:
    bare = BareDeployment(stack)
    sessions = {period: Session(stack, stack.settings.replace(
        templates_dir=templates(ctx, probe_period=period))) for period in (1, 2)}
    samples: dict[str, list[float]] = {"bare": [], "probe 1s": [], "probe 2s": []}
    phases: dict[str, list[float]] = {}
    for turn in range(2 * ctx.rounds):
        bare.to_zero()
        samples["bare"].append(bare.scale_to_ready())
        for period, session in sessions.items():
            session.to_zero()
            samples[f"probe {period}s"].append(session.chat_to_reply())
            if period == 1:
                wake = session.client.get(f"/session/{session.id}/status",
                                          headers=HEADERS).json["wake"]
                for name, value in wake.items():
                    if isinstance(value, (int, float)) and name != "at":
                        phases.setdefault(name, []).append(value)
        print(f"    wake turn {turn + 1}: " + ", ".join(
            f"{k} {v[-1]:.2f}s" for k, v in samples.items()), flush=True)
    bare.to_zero()
    base = samples["bare"]
    figure.rows.append(Row("bare scale 0->1 -> Ready", "s", [statistics.median(base)],
                           p95s=[percentile(base, 95)]))
    for name in ("probe 2s", "probe 1s"):
        values = samples[name]
        figure.rows.append(Row(
            f"chat -> reply from 0, {name}", "s", [statistics.median(values)],
            p95s=[percentile(values, 95)],
            ratios=[percentile(values, 95) / percentile(base, 95)], baseline="bare p95",
            target=Target("<=", WAKE_P95_TARGET, on="ratio") if name == "probe 1s" else None))
    for name in ("scaled", "scheduled", "image", "started", "ready", "first_byte"):
        if name in phases:
            figure.rows.append(Row(f"wake phase (probe 1s): {name}", "s",
                                   [statistics.median(phases[name])],
                                   p95s=[percentile(phases[name], 95)]))
    return {"wakes": samples, "phases": phases}


def pool(ctx: Context) -> Figure:
    figure = Figure("pool", "Warm pool: create -> first reply, hit vs cold; a burst; wakes "
                    "by probe period (local cluster, real KEDA)")
    for delay in (0, 5):
        _hits_against_cold(ctx, figure, delay)
    _burst(ctx, figure)
    stack = Stack(ctx)
    try:
        figure.data = _wakes(ctx, stack, figure)
    finally:
        stack.close()
    figure.notes = [
        f"WARM_POOL_SIZE={POOL_SIZE}; {ctx.rounds} hit/cold pairs per start-up delay, each "
        "create followed by a chat with Prefer: wait=60 (create -> the reply in hand). A hit's "
        "margin is its create -> reply minus a POST /chat straight to the pod that answered.",
        "Cold creates run through an API with the pool off, against the same worker and "
        "templates; sessions are deleted after each measure so the node holds the pool only. "
        "A fresh local cluster for each delay, the burst and the wakes.",
        f"Wakes: {2 * ctx.rounds} turns, interleaved bare / probe 1 s / probe 2 s, each from a "
        "session KEDA had scaled to 0 (push scaler). The ratio is p95 against the bare p95.",
    ]
    return figure
