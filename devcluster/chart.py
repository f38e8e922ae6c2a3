"""The Helm chart rendered with helm; k8s-manifests/ is its rendering with the chart's defaults.

    python -m devcluster.chart            write k8s-manifests/*.yaml from charts/session-manager
    python -m devcluster.chart --check    exit 1 (and say which file) when they differ

scripts/render-manifests.sh runs this. The values are the chart's defaults plus
ci/manifests-values.yaml, which only swaps what the chart would generate (Secrets, the
scaler's certificates) for references to Secrets made by hand, and renders the control
namespace: files in a repository never carry a secret. Each template of the chart becomes the
manifest file of the same name; kustomization.yaml and README.md stay hand-written.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from . import paths

CHART = paths.REPO_ROOT / "charts" / "session-manager"
MANIFESTS = paths.REPO_ROOT / "k8s-manifests"
MANIFEST_VALUES = CHART / "ci" / "manifests-values.yaml"
RELEASE = "session-manager"
NAMESPACE = "session-manager"
_SOURCE = f"# Source: {CHART.name}/templates/"
HEADER = (
    "# GENERATED from charts/session-manager by scripts/render-manifests.sh (helm template with\n"
    "# the chart's defaults and ci/manifests-values.yaml). Edit the chart, then run the script;\n"
    "# tests/test_chart.py fails when this file and the chart differ.\n\n"
)


class ChartError(RuntimeError):
    """helm refused the chart or its values; the message is helm's."""


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the helm built by scripts/build-cluster-binaries.sh (built first when missing)."""
    return subprocess.run([paths.helm(), *args], capture_output=True, text=True, check=False)


def template(values: Iterable[Path | str] = (), *, set_values: Mapping[str, str] | None = None,
             set_files: Mapping[str, Path | str] | None = None, release: str = RELEASE,
             namespace: str = NAMESPACE) -> str:
    """`helm template` of the chart: multi-document YAML, or ChartError with helm's message."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for path in values:
        args += ["--values", str(path)]
    for key, value in (set_values or {}).items():
        args += ["--set", f"{key}={value}"]
    for key, path in (set_files or {}).items():
        args += ["--set-file", f"{key}={path}"]
    result = helm(*args)
    if result.returncode != 0:
        raise ChartError(result.stderr.strip() or f"helm template exited {result.returncode}")
    return result.stdout


def split(rendered: str) -> dict[str, str]:
    """Rendered documents grouped by the template they came from: file name -> YAML text."""
    files: dict[str, list[str]] = {}
    for chunk in rendered.split("\n---\n"):
        lines = chunk.strip("\n").splitlines()
        if lines and lines[0] == "---":
            lines = lines[1:]
        sources = [line for line in lines if line.startswith(_SOURCE)]
        if not sources:
            if any(line.strip() for line in lines):
                raise ChartError(f"a rendered document without a '{_SOURCE}' line: {lines[:3]}")
            continue
        name = sources[0][len(_SOURCE):]
        body = "\n".join(line for line in lines if not line.startswith(_SOURCE)).strip("\n")
        if body.strip():
            files.setdefault(name, []).append(body + "\n")
    return {name: HEADER + "---\n".join(documents) for name, documents in files.items()}


def manifests() -> dict[str, str]:
    """k8s-manifests/ as the chart renders it: file name -> text."""
    return split(template([MANIFEST_VALUES]))


def generated_files() -> list[Path]:
    """The files of k8s-manifests/ that the chart rendered (they start with HEADER)."""
    return sorted(p for p in MANIFESTS.glob("*.yaml")
                  if p.read_text(encoding="utf-8").startswith(HEADER))


def drift() -> list[str]:
    """How k8s-manifests/ differs from the chart's rendering; empty when it does not."""
    wanted = manifests()
    problems = [f"{name}: differs from the chart's rendering" for name, text in wanted.items()
                if not (MANIFESTS / name).is_file()
                or (MANIFESTS / name).read_text(encoding="utf-8") != text]
    problems += [f"{path.name}: generated, but the chart no longer renders it"
                 for path in generated_files() if path.name not in wanted]
    return problems


def write() -> list[str]:
    """Write k8s-manifests/ from the chart; the names of the files written or removed."""
    wanted = manifests()
    changed = []
    for path in generated_files():
        if path.name not in wanted:
            path.unlink()
            changed.append(f"removed {path.name}")
    for name, text in sorted(wanted.items()):
        path = MANIFESTS / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(f"wrote {name}")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.chart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when k8s-manifests/ differs from the chart")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = drift()
            for problem in problems:
                print(f"k8s-manifests/{problem}", file=sys.stderr)
            if problems:
                print("run scripts/render-manifests.sh", file=sys.stderr)
            return 1 if problems else 0
        for line in write() or ["k8s-manifests/ is up to date"]:
            print(line)
    except (ChartError, paths.LocalServiceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
