"""The settings reference of the docs, made from the definitions: one table per group, a row
per variable with its default and what it does (docs/configuration.md holds its output; a
test fails when the two differ)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from service.core.config.settings import REPO_ROOT, definitions


def _shown(value: object) -> str:
    if isinstance(value, Path):
        try:
            return str(value.relative_to(REPO_ROOT)) + "/"
        except ValueError:
            return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value in ((), None, ""):
        return "none"
    return str(value)


def markdown() -> str:
    """The reference as Markdown."""
    groups: dict[str, list[str]] = {}
    for field, definition in definitions():
        if definition.env is None:
            continue  # derived from another setting, not read on its own
        default = definition.shown_default
        if default is None:
            default = _shown(field.default if field.default is not dataclasses.MISSING
                             else field.default_factory())  # type: ignore[misc]
        bounds = []
        if definition.minimum is not None:
            bounds.append(f">= {definition.minimum:g}")
        if definition.maximum is not None:
            bounds.append(f"<= {definition.maximum:g}")
        if definition.choices:
            bounds.append(" or ".join(f"`{c}`" for c in definition.choices))
        doc = definition.doc + (f" ({', '.join(bounds)})" if bounds else "")
        groups.setdefault(definition.group, []).append(
            f"| `{definition.env}` | {default} | {doc} |")
    parts = []
    for group, rows in groups.items():
        parts.append(f"### {group}\n\n| variable | default | what it does |\n|---|---|---|\n"
                     + "\n".join(rows))
    return "\n\n".join(parts) + "\n"
