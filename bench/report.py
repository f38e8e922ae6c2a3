"""Figures, rows and targets; text/markdown tables, JSON and the latency plot.

A row holds one value per round (a round's median latency, or its throughput). The table
shows the median of those, the median of the rounds' p95s, the min-max of the round values,
the median of the per-round ratios to the row's baseline, and the target with PASS or MISS.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

COLUMNS = ("measure", "median", "p95", "rounds min-max", "ratio", "target", "verdict")


@dataclasses.dataclass(frozen=True)
class Target:
    op: str  # "<=" or ">="
    value: float
    unit: str = ""
    on: str = "median"  # which figure of the row is judged: median | p95 | ratio

    def holds(self, figure: float) -> bool:
        if math.isnan(figure):
            return False
        return figure <= self.value if self.op == "<=" else figure >= self.value

    def text(self) -> str:
        what = {"median": "", "p95": "p95 ", "ratio": "ratio "}[self.on]
        return f"{what}{self.op} {fmt(self.value, self.unit)}{self.unit_suffix()}"

    def unit_suffix(self) -> str:
        return "x" if self.on == "ratio" else (f" {self.unit}" if self.unit else "")


@dataclasses.dataclass
class Row:
    name: str
    unit: str
    values: list[float]  # one per round
    p95s: list[float] | None = None  # one per round, for latency rows
    ratios: list[float] | None = None  # one per round, against the row's baseline
    baseline: str = ""
    target: Target | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return _median(self.values)

    @property
    def p95(self) -> float | None:
        return _median(self.p95s) if self.p95s else None

    @property
    def ratio(self) -> float | None:
        return _median(self.ratios) if self.ratios else None

    def judged(self) -> float:
        if self.target is None:
            return math.nan
        figure = {"median": self.median, "p95": self.p95, "ratio": self.ratio}[self.target.on]
        return math.nan if figure is None else figure

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "PASS" if self.target.holds(self.judged()) else "MISS"

    def cells(self) -> list[str]:
        unit = f" {self.unit}" if self.unit else ""
        spread = (f"{fmt(min(self.values), self.unit)}-{fmt(max(self.values), self.unit)}"
                  if self.values else "—")
        ratio = "—" if self.ratio is None else f"{self.ratio:.2f}x"
        if self.ratio is not None and self.baseline:
            ratio += f" vs {self.baseline}"
        return [
            self.name,
            f"{fmt(self.median, self.unit)}{unit}" if self.values else "—",
            "—" if self.p95 is None else f"{fmt(self.p95, self.unit)}{unit}",
            spread,
            ratio,
            self.target.text() if self.target else "—",
            self.verdict,
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "unit": self.unit, "median": _num(self.median),
            "p95": _num(self.p95), "values": [_num(v) for v in self.values],
            "p95s": [_num(v) for v in self.p95s or []],
            "ratio": _num(self.ratio), "ratios": [_num(v) for v in self.ratios or []],
            "baseline": self.baseline or None,
            "target": (dataclasses.asdict(self.target) | {"text": self.target.text()}
                       if self.target else None),
            "verdict": self.verdict or None, "note": self.note or None,
        }


@dataclasses.dataclass
class Figure:
    key: str
    title: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # raw series for JSON/plot
    error: str | None = None
    seconds: float = 0.0

    def targets(self) -> list[Row]:
        return [row for row in self.rows if row.target is not None]


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit in ("req/s", "B", "msg/s"):
        return f"{value:,.0f}"
    if unit in ("ms", "s"):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.2f}"


def _median(values: list[float] | None) -> float:
    clean = [v for v in values or [] if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def _num(value: float | None) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), 4)


# -- tables -------------------------------------------------------------------------------


def text_table(figure: Figure) -> str:
    lines = [f"== {figure.title} [{figure.key}] ({figure.seconds:.0f} s)"]
    if figure.error:
        lines.append(f"   ERROR: {figure.error}")
    if figure.rows:
        table = [list(COLUMNS)] + [row.cells() for row in figure.rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
        for index, cells in enumerate(table):
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
                         .rstrip())
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
    lines.extend(f"   * {note}" for note in figure.notes)
    return "\n".join(lines)


def markdown_table(figure: Figure) -> str:
    lines = [f"## {figure.title} (`{figure.key}`, {figure.seconds:.0f} s)", ""]
    if figure.error:
        lines += [f"**ERROR:** `{figure.error}`", ""]
    if figure.rows:
        lines.append("| " + " | ".join(COLUMNS) + " |")
        lines.append("|" + "---|" * len(COLUMNS))
        for row in figure.rows:
            cells = [c.replace("|", "\\|") for c in row.cells()]
            if cells[-1]:
                cells[-1] = f"**{cells[-1]}**"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.extend(f"- {note}" for note in figure.notes)
    return "\n".join(lines) + "\n"


def summary_lines(figures: list[Figure]) -> list[str]:
    lines = []
    for figure in figures:
        if figure.error:
            lines.append(f"ERROR  {figure.key}: {figure.error}")
        for row in figure.targets():
            lines.append(f"{row.verdict:5}  {figure.key}: {row.name} — "
                         f"{fmt(row.judged(), '' if row.target.on == 'ratio' else row.unit)}"
                         f"{row.target.unit_suffix()} (target {row.target.text()})")
    return lines


# -- files --------------------------------------------------------------------------------


def write_results(out_dir: Path, figures: list[Figure], header: list[str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    text = "\n".join(header) + "\n\n" + "\n\n".join(text_table(f) for f in figures)
    text += "\n\nSummary\n" + "\n".join(summary_lines(figures)) + "\n"
    (out_dir / "results.txt").write_text(text)
    markdown = "# Benchmark results\n\n" + "\n".join(f"    {h}" for h in header) + "\n\n"
    markdown += "\n".join(markdown_table(f) for f in figures)
    markdown += "\n## Summary\n\n" + "\n".join(f"    {s}" for s in summary_lines(figures)) + "\n"
    (out_dir / "results.md").write_text(markdown)
    payload = {
        "header": header,
        "figures": [{"key": f.key, "title": f.title, "seconds": round(f.seconds, 1),
                     "error": f.error, "rows": [r.to_json() for r in f.rows],
                     "notes": f.notes, "data": f.data} for f in figures],
    }
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    written += [out_dir / "results.txt", out_dir / "results.md", out_dir / "results.json"]
    for figure in figures:
        if figure.key == "metrics" and figure.data.get("sizes"):
            written.append(plot_listing(out_dir / "metrics_latency.png", figure.data))
    return written


def plot_listing(path: Path, data: dict[str, Any]) -> Path:
    """Median latency (bars: min-max of round medians) against the number of sessions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = data["sizes"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, series, target, color in (
        ("GET /metrics", data["metrics"], data["targets"]["metrics"], "tab:blue"),
        ("GET /sessions?limit=100", data["sessions"], data["targets"]["sessions"], "tab:orange"),
    ):
        medians = [s["median"] for s in series]
        low = [s["median"] - s["min"] for s in series]
        high = [s["max"] - s["median"] for s in series]
        ax.errorbar(sizes, medians, yerr=[low, high], marker="o", capsize=4, label=label,
                    color=color)
        ax.plot(sizes, [s["p95"] for s in series], linestyle=":", marker=".", color=color,
                label=f"{label} p95")
        ax.axhline(target, linestyle="--", linewidth=1, color=color, alpha=0.6)
        ax.annotate(f"target {target:g} ms", (sizes[-1], target), textcoords="offset points",
                    xytext=(0, 3), fontsize=8, color=color, ha="right")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
    ax.set_xlabel("sessions in Redis")
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title("Listing and metrics latency vs number of sessions")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
