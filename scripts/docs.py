"""Keep docs/ (and the chart's schema of the settings) true to the code: write what is made
from it, or check it (`--check`).

    python scripts/docs.py           # rewrite the generated blocks in place
    python scripts/docs.py --check   # exit 1, saying what is stale, instead of writing

Two blocks of the docs are made from the code, each between `<!-- NAME:begin -->` and
`<!-- NAME:end -->`: the status transition table (service.core.transitions) in
docs/architecture.md and the settings reference (service.core.config.reference) in
docs/configuration.md. The Helm chart's schema of `config` (charts/session-manager/
values.schema.json) is made from the same definitions of the settings: a type, bounds and the
one line of each, but for the settings the chart sets itself, which it refuses in `config`.
`--check` also fails when README.md or a page of docs/ names a path of
the repository, as a code span or a relative link, that does not exist: MkDocs checks the links
between pages, not the files outside docs/ that the pages name (mkdocs.yml says why).
Standard library and the repository's own `service` only.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _transitions() -> str:
    from service.core.transitions import markdown_table

    return markdown_table()


def _settings() -> str:
    from service.core.config import reference

    return reference.markdown()


# (page, block name, what makes its text)
BLOCKS: list[tuple[str, str, Callable[[], str]]] = [
    ("docs/architecture.md", "transitions", _transitions),
    ("README.md", "transitions", _transitions),
    ("docs/configuration.md", "settings", _settings),
]


CHART_SCHEMA = REPO / "charts" / "session-manager" / "values.schema.json"
_JSON_TYPES = {"int": "integer", "int | None": "integer", "float": "number", "bool": "boolean"}


def chart_schema(current: str) -> str:
    """values.schema.json with `config`'s properties made from the settings' definitions;
    a property the chart refuses (`"not": {}`: it sets that one itself) stays as it is."""
    import json

    from service.core.config import definitions

    schema = json.loads(current)
    config = schema["properties"]["config"]
    kept = {name: prop for name, prop in config["properties"].items() if "not" in prop}
    properties = {}
    for field, definition in definitions():
        name = definition.env
        if name is None or "<" in name:  # derived, or one per route (patternProperties)
            continue
        if name in kept:
            properties[name] = kept[name]
            continue
        prop: dict = {"description": definition.doc[0].upper() + definition.doc[1:] + ".",
                      "type": _JSON_TYPES.get(str(field.type), "string")}
        if definition.choices:
            prop["enum"] = list(definition.choices)
        if prop["type"] in ("integer", "number"):
            low = 1 if definition.minimum is None else definition.minimum
            prop["minimum"] = int(low) if prop["type"] == "integer" else low
            if definition.maximum is not None:
                prop["maximum"] = definition.maximum
        properties[name] = prop
    config["properties"] = dict(sorted({**kept, **properties}.items()))
    return json.dumps(schema, indent=2) + "\n"


def _block_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}:begin -->\n)(.*?)(<!-- {name}:end -->)", re.DOTALL)


def refreshed(text: str, name: str, generated: str) -> str:
    """`text` with block `name` holding `generated`; ValueError if its markers are missing."""
    pattern = _block_pattern(name)
    found = pattern.findall(text)
    if len(found) != 1:
        raise ValueError(f"expected one <!-- {name}:begin --> ... <!-- {name}:end --> pair, "
                         f"found {len(found)}")
    body = "\n" + generated.strip("\n") + "\n\n"
    return pattern.sub(lambda m: m.group(1) + body + m.group(3), text)


# Repository paths named in the docs: a code span or a relative link whose first part is a
# top-level entry of the repository (`service/http/openapi.yaml`, `k8s-manifests/README.md`,
# `charts/session-manager/ci/*-values.yaml`). Spans with spaces or placeholders (`<time>`,
# `{pod_ip}`) are commands or patterns, not paths.
_CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
_PATH = re.compile(r"\.?[A-Za-z0-9_][A-Za-z0-9_.*-]*(/[A-Za-z0-9_.*-]+)*/?")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)


def missing_paths(page: Path) -> list[str]:
    """The repository paths `page` names that do not exist."""
    text = _FENCE.sub("", page.read_text())  # commands and output, not references
    top = {entry.name for entry in REPO.iterdir()} - {".git", ".venv"}
    missing = []
    for span in _CODE_SPAN.findall(text):
        named = "/" in span and _PATH.fullmatch(span) and span.split("/")[0] in top
        if named and not list(REPO.glob(span.rstrip("/"))):
            missing.append(f"`{span}`")
    for target in _LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (page.parent / target).exists():
            missing.append(f"({target})")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/docs.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a block is stale or a path is missing")
    args = parser.parse_args(argv)

    problems = []
    for page, name, make in BLOCKS:
        path = REPO / page
        text = path.read_text()
        try:
            new = refreshed(text, name, make())
        except ValueError as err:
            problems.append(f"{page}: {err}")
            continue
        if new == text:
            continue
        if args.check:
            problems.append(f"{page}: the {name} block is stale; run `python scripts/docs.py`")
        else:
            path.write_text(new)
            print(f"{page}: {name} block rewritten")
    current = CHART_SCHEMA.read_text()
    if chart_schema(current) != current:
        if args.check:
            problems.append(f"{CHART_SCHEMA.relative_to(REPO)}: the settings' schema is "
                            "stale; run `python scripts/docs.py`")
        else:
            CHART_SCHEMA.write_text(chart_schema(current))
            print(f"{CHART_SCHEMA.relative_to(REPO)}: config's schema rewritten")
    if args.check:
        for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
            for named in missing_paths(page):
                problems.append(f"{page.relative_to(REPO)}: names {named}, which does not exist")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
