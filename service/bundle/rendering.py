"""Render a session's bundle: template text in, labelled, ordered Kubernetes objects out.

Pure: no cluster, no Redis. Templates see only validated values (the session id, names,
settings) — never user text. Labels, namespace and ordering are applied here, in code, so a
template cannot forget them and a new template (a PVC, a NetworkPolicy) needs no code change.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jinja2
import yaml

from service.core import names
from service.core.config import SCALER_MODES, ConfigError, Settings
from service.core.errors import BundleError

TEMPLATE_SUFFIXES = (".yaml", ".yml", ".yaml.j2")
# libyaml's safe loader when PyYAML has it (the wheels do): the same rules, many times faster.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Apply waves: objects in one wave do not depend on each other and are applied in parallel;
# a wave starts when the previous one is done. Wave 0 holds what pods consume (config,
# volumes, identities); wave 1 the workloads and what only the autoscaler reads; wave 2 the
# autoscaler objects that reference them. Deletion runs the waves backwards, so the
# ScaledObject goes first and KEDA stops scaling a Deployment before it disappears.
# Kinds not listed land in the middle wave with the workloads.
_WAVE_OF_KIND = {
    "Namespace": 0,
    "ServiceAccount": 0,
    "Secret": 0,
    "ConfigMap": 0,
    "PersistentVolumeClaim": 0,
    "NetworkPolicy": 0,
    "Role": 0,
    "RoleBinding": 0,
    # Read only by the ScaledObject (next wave), so it goes alongside the workloads.
    "TriggerAuthentication": 1,
    "ScaledObject": 2,
    "ScaledJob": 2,
    "HorizontalPodAutoscaler": 2,
    "PodDisruptionBudget": 2,
}
_DEFAULT_WAVE = 1
# Within a wave, the order objects are listed in (render output, sequential apply).
_ORDER_OF_KIND = ("TriggerAuthentication", "Deployment", "Service", "ScaledObject")

MAX_NAME_LENGTH = 63
# KEDA names its HPA "keda-hpa-<name>", which must itself fit in 63 characters.
MAX_SCALED_OBJECT_NAME_LENGTH = 54


@dataclasses.dataclass(frozen=True)
class KindRef:
    """An API kind as the sweep needs it."""

    api_version: str
    kind: str

    @classmethod
    def of(cls, obj: dict[str, Any]) -> KindRef:
        return cls(obj["apiVersion"], obj["kind"])


@dataclasses.dataclass(frozen=True)
class Bundle:
    session_id: str
    namespace: str
    objects: tuple[dict[str, Any], ...]

    @property
    def label_selector(self) -> str:
        return label_selector(self.session_id)

    def waves(self) -> list[list[dict[str, Any]]]:
        grouped: dict[int, list[dict[str, Any]]] = {}
        for obj in self.objects:
            grouped.setdefault(wave_of(obj["kind"]), []).append(obj)
        return [grouped[wave] for wave in sorted(grouped)]

    def kinds(self) -> list[KindRef]:
        return list(dict.fromkeys(KindRef.of(obj) for obj in self.objects))

    def digest(self) -> str:
        """A short hash of every object as rendered: equal digests, equal bundles."""
        text = json.dumps(self.objects, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def wave_of(kind: str) -> int:
    return _WAVE_OF_KIND.get(kind, _DEFAULT_WAVE)


def _sort_key(obj: dict[str, Any]) -> tuple[int, int, str]:
    kind = obj["kind"]
    order = _ORDER_OF_KIND.index(kind) if kind in _ORDER_OF_KIND else len(_ORDER_OF_KIND)
    return (wave_of(kind), order, obj["metadata"]["name"])


def bundle_labels(session_id: str) -> dict[str, str]:
    return {names.MANAGED_BY_LABEL: names.MANAGED_BY_VALUE, names.SESSION_LABEL: session_id}


def label_selector(session_id: str | None = None) -> str:
    """Selector for one session's objects, or for every session's when no id is given."""
    selector = f"{names.MANAGED_BY_LABEL}={names.MANAGED_BY_VALUE}"
    if session_id is not None:
        selector += f",{names.SESSION_LABEL}={session_id}"
    return selector


def template_context(session_id: str, settings: Settings, keda_keys: dict[str, str]) -> dict:
    """The only values templates may use, each checked so it cannot break out of YAML."""
    names.check_session_id(session_id)
    _check_settings(settings)
    for key in keda_keys.values():
        if not key.replace(":", "").replace("-", "").isalnum():
            raise BundleError(f"Redis key {key!r} is not safe to render")
    name = names.object_name(session_id)
    return {
        "session_id": session_id,
        "name": name,
        "namespace": settings.namespace,
        "image": settings.user_pod_image,
        "port": settings.user_pod_port,
        "selector_labels": {names.SESSION_LABEL: session_id},
        "resources": {
            "cpu_request": settings.user_pod_cpu_request,
            "memory_request": settings.user_pod_memory_request,
            "cpu_limit": settings.user_pod_cpu_limit,
            "memory_limit": settings.user_pod_memory_limit,
        },
        "keda": {
            "polling_interval": settings.keda_polling_interval_seconds,
            "cooldown_period": settings.keda_cooldown_period_seconds,
            "initial_cooldown_period": settings.keda_initial_cooldown_period_seconds,
            "redis_host": settings.keda_redis_host,
            "redis_port": settings.keda_redis_port,
            "redis_database": settings.keda_redis_database,
            "redis_tls": settings.keda_redis_tls,
            "redis_username": settings.keda_redis_username,
            "scaler_address": settings.scaler_address,
            **keda_keys,
        },
        "redis_secret": {"name": settings.redis_secret_name, "key": settings.redis_secret_key},
        "scaler_secret": settings.scaler_secret_name,
    }


def _check_settings(settings: Settings) -> None:
    checks = [
        ("NAMESPACE", settings.namespace, names.check_dns_label),
        ("USER_POD_IMAGE", settings.user_pod_image, names.check_image),
        ("USER_POD_CPU_REQUEST", settings.user_pod_cpu_request, names.check_quantity),
        ("USER_POD_MEMORY_REQUEST", settings.user_pod_memory_request, names.check_quantity),
        ("USER_POD_CPU_LIMIT", settings.user_pod_cpu_limit, names.check_quantity),
        ("USER_POD_MEMORY_LIMIT", settings.user_pod_memory_limit, names.check_quantity),
        ("KEDA_REDIS_HOST", settings.keda_redis_host, names.check_hostname),
        ("REDIS_SECRET_NAME", settings.redis_secret_name, names.check_dns_subdomain),
        ("REDIS_SECRET_KEY", settings.redis_secret_key, names.check_secret_key),
        ("SCALER_SECRET_NAME", settings.scaler_secret_name, names.check_dns_subdomain),
        ("SCALER_ADDRESS", settings.scaler_address.rpartition(":")[0], names.check_hostname),
    ]
    for variable, value, check in checks:
        try:
            check(value)
        except ValueError as err:
            raise BundleError(f"{variable}={value!r}: {err}") from None


def template_files(templates_dir: Path) -> list[Path]:
    files = sorted(p for p in templates_dir.iterdir() if p.name.endswith(TEMPLATE_SUFFIXES))
    if not files:
        raise BundleError(f"no templates (*.yaml) in {templates_dir}")
    return files


@functools.lru_cache(maxsize=8)
def _environment(templates_dir: str) -> jinja2.Environment:
    # One environment per directory: Jinja then compiles each template once (and recompiles
    # it when the file changes), instead of on every render.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        auto_reload=True,
    )


def render(session_id: str, settings: Settings, keda_keys: dict[str, str]) -> Bundle:
    context = template_context(session_id, settings, keda_keys)
    env = _environment(str(settings.templates_dir))
    objects: list[dict[str, Any]] = []
    for path in template_files(settings.templates_dir):
        objects.extend(_render_file(env, path, context))
    labels = bundle_labels(session_id)
    for obj in objects:
        _stamp(obj, labels, settings.namespace)
    _check_names(objects)
    return Bundle(session_id, settings.namespace, tuple(sorted(objects, key=_sort_key)))


def _render_file(env: jinja2.Environment, path: Path, context: dict) -> Iterable[dict]:
    try:
        text = env.get_template(path.name).render(context)
    except jinja2.TemplateError as err:
        line = getattr(err, "lineno", None)
        where = f"{path}:{line}" if line else str(path)
        raise BundleError(f"{where}: {type(err).__name__}: {err}", template=path) from err
    try:
        documents = list(yaml.load_all(text, Loader=_SafeLoader))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise BundleError(f"{where}: rendered text is not YAML: {err}", template=path) from err
    for index, doc in enumerate(documents):
        if doc is None:
            continue
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= doc.keys():
            raise BundleError(
                f"{path}: document {index + 1} is not a Kubernetes object "
                "(needs apiVersion, kind and metadata)",
                template=path,
            )
        if not isinstance(doc["metadata"], dict) or not doc["metadata"].get("name"):
            raise BundleError(f"{path}: document {index + 1} has no metadata.name", template=path)
        doc.setdefault("metadata", {})
        doc["metadata"].setdefault("annotations", {})
        doc["metadata"]["annotations"]["session-manager/template"] = path.name
        yield doc


def _stamp(obj: dict[str, Any], labels: dict[str, str], namespace: str) -> None:
    metadata = obj["metadata"]
    metadata["namespace"] = namespace
    metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
    pod_template = (obj.get("spec") or {}).get("template")
    if isinstance(pod_template, dict):
        pod_metadata = pod_template.setdefault("metadata", {})
        pod_metadata["labels"] = {**(pod_metadata.get("labels") or {}), **labels}


def _check_names(objects: list[dict[str, Any]]) -> None:
    seen: set[tuple[str, str]] = set()
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        template = obj["metadata"]["annotations"]["session-manager/template"]
        limit = MAX_SCALED_OBJECT_NAME_LENGTH if kind == "ScaledObject" else MAX_NAME_LENGTH
        try:
            names.check_dns_label(name)
        except ValueError as err:
            raise BundleError(f"{template}: {kind} name {name!r} {err}") from None
        if len(name) > limit:
            raise BundleError(f"{template}: {kind} name {name!r} is longer than {limit}")
        if (kind, name) in seen:
            raise BundleError(f"{template}: two {kind} objects named {name!r}")
        seen.add((kind, name))


def check_scaler_mode(rendered: Bundle, settings: Settings) -> None:
    """Refuse to start when the templates' KEDA triggers are not the kind KEDA_SCALER says:
    push-mode templates with no worker scaler behind them would never wake a session."""
    expected = SCALER_MODES[settings.keda_scaler]
    found = {trigger.get("type") for obj in rendered.objects
             if obj["kind"] in ("ScaledObject", "ScaledJob")
             for trigger in (obj.get("spec") or {}).get("triggers") or []}
    if found and found != {expected}:
        raise ConfigError(
            f"KEDA_SCALER={settings.keda_scaler} expects {expected} triggers, but the templates "
            f"in {settings.templates_dir} have {', '.join(sorted(map(str, found)))}: set "
            "KEDA_SCALER to match, or TEMPLATES_DIR to the matching template set")


def to_yaml(bundle: Bundle) -> str:
    return yaml.safe_dump_all(list(bundle.objects), sort_keys=False, default_flow_style=False)
