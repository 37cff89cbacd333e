"""The chaos run's table: one row per scenario, printed and written as markdown and JSON."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Row", "render_table", "write_results"]

COLUMNS = (
    ("fault", "fault"),
    ("sessions", "sessions"),
    ("survived", "survived"),
    ("lost", "packets lost"),
    ("duplicates", "duplicates"),
    ("executed_twice", "tool calls run twice"),
    ("recorded", "outcomes recorded"),
    ("detect_s", "time to detect (max)"),
    ("recover_s", "time to recover (max)"),
    ("verdict", "verdict"),
)


@dataclass(slots=True)
class Row:
    """One scenario's figures. `survived`: sessions that ended as the scenario expects (FINISHED
    after resuming; for a killed commander, CANCELLED after the window with the tool cancelled)."""

    fault: str
    sessions: int = 0
    survived: int = 0
    lost: int = 0
    duplicates: int = 0
    executed_twice: int = 0
    recorded: int = 0
    detect_s: float | None = None
    recover_s: float | None = None
    skipped: str = ""  # why the scenario did not run
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failed(self) -> bool:
        return not self.skipped and bool(self.problems)

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        return "FAIL" if self.problems else "ok"

    def cell(self, key: str) -> str:
        if self.skipped and key not in ("fault", "verdict"):
            return "-"
        value = getattr(self, key)
        if key in ("detect_s", "recover_s"):
            return "-" if value is None else f"{value:.2f} s"
        if key in ("survived", "recorded"):
            return f"{value}/{self.sessions}"
        return str(value)


def render_table(rows: list[Row]) -> str:
    """A markdown table (readable as plain text too), then one line per problem, skip or note."""
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "| " + " | ".join("---" for _ in COLUMNS) + " |"
    lines = [header, rule]
    lines += ["| " + " | ".join(row.cell(key) for key, _ in COLUMNS) + " |" for row in rows]
    for row in rows:
        if row.skipped:
            lines.append(f"- {row.fault}: skipped: {row.skipped}")
        lines += [f"- {row.fault}: FAIL: {problem}" for problem in row.problems]
        lines += [f"- {row.fault}: {note}" for note in row.notes]
    return "\n".join(lines)


def write_results(rows: list[Row], path: Path, *, size: str, command: str) -> None:
    """`path` (markdown) and the same name with .json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = f"{platform.node()}, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    text = (
        f"# make chaos ({size})\n\n`{command}` — {when} on {machine}.\n\n"
        "Each scenario runs real processes (`dispatcher serve`, `commander run` through the fault proxy, "
        "`dispatcherctl watch`), bounded in time. Lost and duplicates compare each session's journal with "
        "the chaos agent's answer and each call id's executions on the tool side; detect is from the fault "
        "to the dispatcher holding the session DETACHED, recover from the link's return to the resumed "
        "stream (GetSession polled every 25 ms).\n\n" + render_table(rows) + "\n"
    )
    path.write_text(text)
    figures = {"size": size, "when": when, "rows": [asdict(row) | {"verdict": row.verdict} for row in rows]}
    path.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
