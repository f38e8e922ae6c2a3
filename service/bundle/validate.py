"""`python -m service validate`: check rendered templates against API schemas, no cluster.

Built-in kinds go through kubernetes_validate in strict mode against the newest Kubernetes
minor it ships; it stops at the first error, so each built-in object reports one problem per
run. Kinds of one of the given CRDs (KEDA's) are checked against that CRD's openAPIV3Schema,
every error reported, plus an unknown-field walk: an apiserver silently prunes fields its
structural schema does not know, so a typo there would vanish instead of failing.

A kind with no schema at all is a warning, not a failure: a user may add templates for CRDs
of their own, which this tool cannot know. A built-in kind under an apiVersion the library
does not have (autoscaling/v2beta2, say) is an error: the cluster would refuse it.

Dev-only: kubernetes_validate and jsonschema come from requirements-dev.txt.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import sys
from pathlib import Path
from typing import Any, TextIO

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils

from service.bundle import rendering as bundle_module
from service.bundle.templates import KedaKeys
from service.core.config import Settings
from service.core.errors import BundleError

# The schema set's full version ("1.37.0"); the library looks schemas up by this.
SCHEMA_VERSION = kv_utils.latest_version()
KUBERNETES_VERSION = kv_utils.major_minor(SCHEMA_VERSION)
SAMPLE_SESSION_ID = "s" + "a" * 16  # fixed, so two runs print the same report
_TEMPLATE_ANNOTATION = "session-manager/template"


@dataclasses.dataclass(frozen=True)
class Problem:
    template: str
    kind: str
    name: str
    path: str
    message: str
    warning: bool = False  # True: reported, but does not fail the run

    def __str__(self) -> str:
        prefix = "warning: " if self.warning else ""
        return f"{prefix}{self.template}: {self.kind} {self.name}: {self.path}: {self.message}"


def validate_bundle(bundle: bundle_module.Bundle, crds: list[dict],
                    templates_dir: str | Path | None = None) -> list[Problem]:
    """Problems of every object, in bundle order; `templates_dir` only prefixes the names."""
    problems = []
    for obj in bundle.objects:
        template = obj["metadata"]["annotations"][_TEMPLATE_ANNOTATION]
        if templates_dir is not None:
            template = str(Path(templates_dir) / template)
        found = functools.partial(Problem, template, obj["kind"], obj["metadata"]["name"])
        problems.extend(found(*error) for error in object_problems(obj, crds))
    return problems


def object_problems(obj: dict, crds: list[dict]) -> list[tuple]:
    """(path, message[, warning]) of one object: against its CRD's schema when `crds` has its
    kind, else against the built-in kinds' (also used for the chart's rendered objects)."""
    by_kind = {(crd["spec"]["group"], crd["spec"]["names"]["kind"]): crd for crd in crds}
    group, _, version = obj["apiVersion"].rpartition("/")
    crd = by_kind.get((group, obj["kind"]))
    return _check_crd_kind(obj, crd, version) if crd else _check_builtin(obj)


def _check_builtin(obj: dict) -> list[tuple]:
    try:
        kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [(_path(err.path), err.message)]
    except kubernetes_validate.SchemaNotFoundError:
        if obj["kind"].lower() in _builtin_kinds():
            return [("apiVersion", f"Kubernetes {KUBERNETES_VERSION} has no "
                     f"{obj['kind']} in {obj['apiVersion']!r}")]
        return [("(object)", f"no schema for {obj['apiVersion']} {obj['kind']}; not validated",
                 True)]
    return []


@functools.cache
def _builtin_kinds() -> frozenset[str]:
    # Schema files are named <kind>-<group>-<version>.json; kinds hold no '-'.
    schemas = importlib.resources.files("kubernetes_validate").joinpath(
        "kubernetes-json-schema", f"v{SCHEMA_VERSION}-local-strict")
    return frozenset(entry.name.split("-")[0] for entry in schemas.iterdir())


def _check_crd_kind(obj: dict, crd: dict, version: str) -> list[tuple]:
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in versions:
        return [("apiVersion", f"CRD {crd['metadata']['name']} has no version {version!r} "
                 f"(has {', '.join(versions)})")]
    root = versions[version]["schema"]["openAPIV3Schema"]
    # metadata is the apiserver's to check and status the operator's to write. Draft 4
    # ignores the x-kubernetes-* keywords it does not know; the walk below reads them.
    schema = {**root, "properties": {**root.get("properties", {}),
                                     "metadata": {"type": "object"}, "status": {}}}
    errors = [(_path(e.path), e.message)
              for e in jsonschema.Draft4Validator(schema).iter_errors(obj)]
    body = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    errors.extend((path, "unknown field") for path in _unknown_fields(body, schema, []))
    return sorted(errors, key=lambda error: error[0])


def _unknown_fields(value: Any, schema: dict, path: list) -> list[str]:
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [p for i, item in enumerate(value)
                for p in _unknown_fields(item, schema["items"], [*path, i])]
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    properties = schema.get("properties")
    extra = schema.get("additionalProperties")
    found = []
    for key, child in value.items():
        if properties is not None and key in properties:
            found += _unknown_fields(child, properties[key], [*path, key])
        elif isinstance(extra, dict):
            found += _unknown_fields(child, extra, [*path, key])
        elif properties is not None and extra is None:
            found.append(_path([*path, key]))
    return found


def _path(parts: Any) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    return text or "(object)"


def load_crds(path: Path) -> list[dict]:
    """The CustomResourceDefinitions in a YAML file (KEDA's, from its release or its module)."""
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle)
                if doc and doc.get("kind") == "CustomResourceDefinition"]


def run(settings: Settings, keda_keys: KedaKeys, crds: list[dict],
        out: TextIO = sys.stdout) -> int:
    """Render a sample session's bundle, print a report; 0 when clean, 1 on any error.
    `crds`: the CRDs custom kinds are checked against (KEDA's)."""
    try:
        rendered = bundle_module.render(
            SAMPLE_SESSION_ID, settings, keda_keys(SAMPLE_SESSION_ID))
    except BundleError as err:
        # The message already names the template file (and line, when Jinja or YAML knows it).
        print(f"error: {err.message}", file=out)
        print("1 problem: the bundle did not render", file=out)
        return 1
    problems = validate_bundle(rendered, crds, _shown(settings.templates_dir))
    for problem in problems:
        print(problem, file=out)
    errors = [p for p in problems if not p.warning]
    if errors:
        print(f"{len(errors)} problem{'s' if len(errors) != 1 else ''}", file=out)
        return 1
    templates = {obj["metadata"]["annotations"][_TEMPLATE_ANNOTATION] for obj in rendered.objects}
    unchecked = f" ({len(problems)} not validated)" if problems else ""
    print(f"{len(rendered.objects)} objects from {len(templates)} templates: OK "
          f"(Kubernetes {KUBERNETES_VERSION}){unchecked}", file=out)
    return 0


def _shown(directory: Path) -> Path:
    # Relative to where the developer stands, as an editor's "open file" wants it.
    try:
        return directory.resolve().relative_to(Path.cwd())
    except ValueError:
        return directory
