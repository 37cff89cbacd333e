"""Figures, targets, the table printed as the run goes, and the JSON + markdown results."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from scripts.bench.stats import Spread, spread

__all__ = ["Figure", "Target", "machine_info", "markdown", "ratio_of", "table_line", "write_results"]


@dataclass(frozen=True, slots=True)
class Target:
    """A goal from the issue: on the ratio ours/baseline, or on our median itself."""

    text: str
    ratio_at_least: float | None = None
    ratio_at_most: float | None = None
    ours_at_most: float | None = None
    ours_at_least: float | None = None

    def check(self, ours: Spread | None, ratio: float | None) -> str:
        """ "yes", "**no**", "n/a" (a figure is missing) or "" (nothing to check: state the number)."""
        verdicts: list[bool] = []
        for bound, value, above in (
            (self.ratio_at_least, ratio, True),
            (self.ratio_at_most, ratio, False),
            (self.ours_at_most, ours.median if ours else None, False),
            (self.ours_at_least, ours.median if ours else None, True),
        ):
            if bound is None:
                continue
            if value is None:
                return "n/a"
            verdicts.append(value >= bound if above else value <= bound)
        if not verdicts:
            return ""
        return "yes" if all(verdicts) else "**no**"


@dataclass(slots=True)
class Figure:
    """One row: the same figure for ours and for the bare baseline, one value per repetition."""

    case: str
    name: str
    unit: str
    better: str  # "higher" | "lower"
    ours: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    target: Target | None = None
    note: str = ""
    errors: list[str] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return ratio_of(self.ours, self.baseline)

    def as_json(self) -> dict[str, Any]:
        ours, base = spread(self.ours), spread(self.baseline)
        target = self.target
        return {
            "case": self.case,
            "name": self.name,
            "unit": self.unit,
            "better": self.better,
            "ours": self.ours,
            "baseline": self.baseline,
            "ours_median": ours.median if ours else None,
            "baseline_median": base.median if base else None,
            "ratio": self.ratio,
            "target": target.text if target else "",
            "met": target.check(ours, self.ratio) if target else "",
            "note": self.note,
            "errors": self.errors,
            "details": self.details,
        }


def ratio_of(ours: list[float], baseline: list[float]) -> float | None:
    """Median of the per-repetition ratios ours/baseline (repetitions are interleaved, so the
    pairs share the machine's mood); the ratio of the medians when the counts differ."""
    if not ours or not baseline:
        return None
    if len(ours) == len(baseline) and all(baseline):
        return statistics.median(o / b for o, b in zip(ours, baseline, strict=True))
    base = statistics.median(baseline)
    return statistics.median(ours) / base if base else None


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(values: list[float], unit: str) -> str:
    summary = spread(values)
    if summary is None:
        return "—"
    text = f"{_number(summary.median)} {unit}"
    if summary.n > 1:
        text += f" ({_number(summary.low)}–{_number(summary.high)})"
    return text


def _row(figure: Figure) -> list[str]:
    ratio = figure.ratio
    target = figure.target
    met = target.check(spread(figure.ours), ratio) if target else ""
    note = figure.note
    if figure.errors:
        note = (note + "; " if note else "") + "errors: " + "; ".join(sorted(set(figure.errors))[:3])
    return [
        f"{figure.case}: {figure.name}",
        _cell(figure.ours, figure.unit),
        _cell(figure.baseline, figure.unit),
        f"{ratio:.2f}×" if ratio is not None else "—",
        target.text if target else "",
        met,
        note,
    ]


HEADER = ["figure", "ours: median (min–max)", "bare grpc.aio", "ours / bare", "target", "met", "notes"]


def table_line(figure: Figure) -> str:
    """One figure as a console line (printed as soon as it is measured)."""
    cells = _row(figure)
    return f"{cells[0]:<58} {cells[1]:>24} {cells[2]:>24} {cells[3]:>7} {cells[4]:>20} {cells[5]:>6}  {cells[6]}"


def markdown(figures: list[Figure], info: dict[str, Any], methods: list[str]) -> str:
    lines = [
        f"# Benchmark results ({info['plan']}, {info['finished_utc']})",
        "",
        f"Machine: {info['cpu_model']}, {info['nproc']} CPUs, {info['mem_gib']} GiB RAM, {info['os']}; "
        f"Python {info['python']}, grpcio {info['grpcio']}, protobuf {info['protobuf']}"
        f"{', uvloop ' + info['uvloop'] if info.get('uvloop') else ', uvloop not installed'}; "
        f"both servers on the {info.get('event_loop', 'asyncio')} event loop. "
        f"Load average at start: {info['loadavg_start']}. Run time: {info['run_s']:.0f} s.",
        "",
        "Client and server processes share the same CPUs on loopback; figures are medians over "
        f"{info['reps']} repetition(s) (min–max in brackets) and the ratio is the median of the "
        "per-repetition ratios ours / bare grpc.aio measured in the same run.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for figure in figures:
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in _row(figure)) + " |")
    lines += ["", "## What each figure measures", ""]
    lines += [f"- {method}" for method in methods]
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return ""

    return {
        "cpu_model": cpu_model,
        "nproc": os.cpu_count(),
        "mem_gib": mem_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "grpcio": version("grpcio"),
        "protobuf": version("protobuf"),
        "uvloop": version("uvloop"),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def write_results(
    out_dir: Path, figures: list[Figure], info: dict[str, Any], methods: list[str], *, latest: bool
) -> tuple[Path, Path]:
    """`<UTC timestamp>-<plan>.json` and `.md` in `out_dir`; also copied to `latest.*` (full plan) or
    `latest-<plan>.*` when `latest`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path, md_path = out_dir / f"{stamp}-{info['plan']}.json", out_dir / f"{stamp}-{info['plan']}.md"
    payload = {"machine_and_run": info, "methods": methods, "figures": [figure.as_json() for figure in figures]}
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    md_path.write_text(markdown(figures, info, methods))
    if latest:  # a quick run never replaces the full-size table the README points at
        name = "latest" if info["plan"] == "full" else f"latest-{info['plan']}"
        shutil.copyfile(json_path, out_dir / f"{name}.json")
        shutil.copyfile(md_path, out_dir / f"{name}.md")
    return json_path, md_path
