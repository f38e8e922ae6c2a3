"""`python -m service render|validate|serve` as a template developer and an operator run them."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from devcluster import paths
from service.core.config import REPO_ROOT

SESSION = "sabcdefgh234567ab"


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("API_KEYS", "USER_POD"))}
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=REPO_ROOT,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)


def test_render_prints_the_bundle_as_multi_document_yaml():
    result = run("render", SESSION, USER_POD_IMAGE="registry.example/agent:9.9.9")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert [d["kind"] for d in docs] == ["TriggerAuthentication", "Deployment", "Service",
                                         "ScaledObject"]
    deployment = docs[1]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "registry.example/agent:9.9.9"


def test_render_refuses_a_malformed_id():
    result = run("render", "../../etc")
    assert result.returncode == 1
    assert "not a session id" in result.stderr and not result.stdout


def test_a_bad_setting_fails_naming_the_variable():
    result = run("render", SESSION, USER_POD_PORT="eighty")
    assert result.returncode == 2
    assert "USER_POD_PORT" in result.stderr and "Traceback" not in result.stderr
    result = run("render", SESSION, NAMESPACE="Bad Namespace")
    assert result.returncode == 2 and "NAMESPACE" in result.stderr


def test_validate_passes_on_the_shipped_templates():
    paths.keda_crds()  # built if missing
    result = run("validate", "--keda-crds", str(paths.KEDA_CRDS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    result = run("validate", "--keda-crds", "/nonexistent.yaml")
    assert result.returncode == 2 and "no such file" in result.stderr


def test_serve_refuses_to_start_without_api_keys():
    result = run("serve")
    assert result.returncode == 2
    assert "API_KEYS" in result.stderr and "AUTH_DISABLED" in result.stderr


def test_keda_scaler_picks_its_template_set_and_a_mismatch_refuses_to_start(tmp_path):
    result = run("render", SESSION, KEDA_SCALER="redis")
    assert result.returncode == 0, result.stderr
    [scaled] = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "ScaledObject"]
    assert [t["type"] for t in scaled["spec"]["triggers"]] == ["redis"]

    key = "k" * 32
    result = run("worker", API_KEYS=key, KEDA_SCALER="push",
                 TEMPLATES_DIR=str(REPO_ROOT / "templates-redis"))
    assert result.returncode == 2
    assert "KEDA_SCALER=push expects external-push triggers" in result.stderr
    result = run("worker", API_KEYS=key)  # push mode, no certificates
    assert result.returncode == 2 and "SCALER_TLS_DIR" in result.stderr
    result = run("worker", API_KEYS=key, SCALER_TLS_DIR=str(tmp_path))
    assert result.returncode == 2
    assert "SCALER_TLS_DIR" in result.stderr and "missing tls.crt, tls.key, ca.crt" in result.stderr
