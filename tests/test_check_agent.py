"""`python -m service check-agent`: the demo agent, the reference implementation, meets every
rule; an agent that breaks one rule on purpose is named FAIL for that rule, with its reason.
Real processes: the check starts each agent itself (`--run`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.core.config import REPO_ROOT

RULES = ("ready", "reply", "dedupe", "history", "unicode", "large", "streaming", "timeout",
         "sigterm")


def check_agent(command: str, **env: str) -> tuple[int, dict[str, str]]:
    """(exit code, rule -> PASS/FAIL/SKIP) of check-agent --run COMMAND."""
    result = subprocess.run(
        [sys.executable, "-m", "service", "check-agent", "--run", command], cwd=REPO_ROOT,
        env={**os.environ, **env}, capture_output=True, text=True, timeout=180)
    verdicts = {}
    for line in result.stdout.splitlines():
        outcome, _, rest = line.partition(" ")
        rule = rest.strip().split(" ", 1)[0]
        if outcome in ("PASS", "FAIL", "SKIP") and rule in RULES:
            verdicts[rule] = outcome
    assert set(verdicts) == set(RULES), result.stdout + result.stderr
    return result.returncode, verdicts


def test_the_demo_agent_meets_every_rule():
    code, verdicts = check_agent(f"{sys.executable} demo_agent/agent.py")
    assert code == 0
    assert verdicts == {rule: "SKIP" if rule == "streaming" else "PASS" for rule in RULES}
    code, verdicts = check_agent(f"{sys.executable} demo_agent/agent.py", AGENT_STREAM="1")
    assert code == 0 and set(verdicts.values()) == {"PASS"}  # its stream too


@pytest.mark.parametrize("rule", [rule for rule in RULES])
def test_an_agent_breaking_a_rule_fails_that_rule(rule):
    # POD_TIMEOUT_SECONDS 2: the agent that breaks `timeout` thinks 3 s.
    code, verdicts = check_agent(f"{sys.executable} tests/agents/broken_agent.py",
                                 BREAK=rule, POD_TIMEOUT_SECONDS="2",
                                 DELIVERY_LEASE_SECONDS="10")
    assert code == 1
    assert verdicts[rule] == "FAIL", verdicts
    failed = [r for r, outcome in verdicts.items() if outcome == "FAIL"]
    if rule == "history":
        assert failed == ["history", "large"]  # the large message comes with history too
    elif rule not in ("reply", "timeout"):  # every rule needs a reply, in time
        assert failed == [rule], verdicts
