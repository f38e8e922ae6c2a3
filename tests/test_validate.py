"""`python -m service validate`: what a developer editing templates sees. No cluster, no Redis."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from devcluster import paths
from service.bundle import validate
from service.core.config import REPO_ROOT, Settings
from service.store import keda_keys


@pytest.fixture
def settings() -> Settings:
    return Settings(auth_disabled=True)


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    copy = tmp_path / "templates"
    shutil.copytree(REPO_ROOT / "templates", copy)
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}: the shipped template changed"
    path.write_text(text.replace(old, new, 1))


def run(settings: Settings) -> tuple[int, str]:
    out = io.StringIO()
    status = validate.run(settings, keda_keys, paths.keda_crds(), out)
    return status, out.getvalue()


def problem_lines(report: str) -> list[str]:
    """One line per problem, then one summary line."""
    return report.strip().splitlines()[:-1]


def test_shipped_templates_validate_clean(settings):
    status, report = run(settings)
    assert status == 0, report
    assert report.strip().splitlines()[-1].startswith("4 objects from 4 templates: OK")


def test_the_redis_trigger_template_set_validates_clean(settings):
    status, report = run(settings.replace(keda_scaler="redis",
                                          templates_dir=REPO_ROOT / "templates-redis"))
    assert status == 0, report
    assert report.strip().splitlines()[-1].startswith("4 objects from 4 templates: OK")


def test_wrong_type_in_scaled_object_names_file_and_field(settings, templates):
    edit(templates / "scaledobject.yaml", "pollingInterval: {{ keda.polling_interval }}",
         'pollingInterval: "five"')
    status, report = run(settings.replace(templates_dir=templates))
    assert status == 1
    [line] = problem_lines(report)
    assert "scaledobject.yaml" in line
    assert "ScaledObject" in line and "spec.pollingInterval" in line and "'five'" in line
    assert report.strip().splitlines()[-1] == "1 problem"


def test_unknown_field_in_deployment_is_an_error(settings, templates):
    edit(templates / "deployment.yaml", "  revisionHistoryLimit: 2",
         "  replicaz: 1\n  revisionHistoryLimit: 2")
    status, report = run(settings.replace(templates_dir=templates))
    assert status == 1
    [line] = problem_lines(report)
    assert "deployment.yaml" in line and "replicaz" in line


def test_typo_in_a_container_field_is_an_error(settings, templates):
    edit(templates / "deployment.yaml", "          readinessProbe:", "          readinesProbe:")
    status, report = run(settings.replace(templates_dir=templates))
    assert status == 1
    [line] = problem_lines(report)
    assert "deployment.yaml" in line and "readinesProbe" in line
    assert "spec.template.spec.containers[0]" in line


def test_unknown_field_in_a_scaled_object_trigger_is_an_error(settings, templates):
    # The apiserver would prune it silently, so only this check catches the typo.
    edit(templates / "scaledobject.yaml", "      name: work\n",
         "      name: work\n      useCachedMetric: true\n")
    status, report = run(settings.replace(templates_dir=templates))
    assert status == 1
    [line] = problem_lines(report)
    assert "scaledobject.yaml" in line and "spec.triggers[0].useCachedMetric" in line


def test_broken_jinja_is_reported_without_a_traceback(settings, templates):
    edit(templates / "service.yaml", "{{ name }}", "{{ nope }}")
    status, report = run(settings.replace(templates_dir=templates))
    assert status == 1
    assert "service.yaml" in report and "nope" in report
    assert "Traceback" not in report


def test_removed_api_version_of_a_builtin_kind_is_an_error(settings, templates):
    edit(templates / "deployment.yaml", "apiVersion: apps/v1", "apiVersion: apps/v1beta2")
    status, report = run(settings.replace(templates_dir=templates))
    assert status == 1
    assert "deployment.yaml" in report and "apps/v1beta2" in report


def test_kind_without_a_schema_warns_but_passes(settings, templates):
    (templates / "widget.yaml").write_text(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: {{ name }}-widget\n"
        "spec:\n  anything: goes\n"
    )
    status, report = run(settings.replace(templates_dir=templates))
    assert status == 0, report
    [line] = problem_lines(report)
    assert line.startswith("warning:") and "widget.yaml" in line and "no schema" in line
    assert "5 objects from 5 templates: OK" in report


def test_validate_bundle_reports_structured_problems():
    from devcluster import paths
    from service import bundle, store

    session = validate.SAMPLE_SESSION_ID
    rendered = bundle.render(session, Settings(auth_disabled=True), store.keda_keys(session))
    scaled = next(obj for obj in rendered.objects if obj["kind"] == "ScaledObject")
    scaled["spec"]["pollingInterval"] = "five"
    [problem] = validate.validate_bundle(rendered, paths.keda_crds())
    assert (problem.template, problem.kind, problem.path) == (
        "scaledobject.yaml", "ScaledObject", "spec.pollingInterval")
    assert str(problem) == (
        f"scaledobject.yaml: ScaledObject session-{session}: spec.pollingInterval: "
        "'five' is not of type 'integer'"
    )
