"""What every case shares: the run context, budgets, driving loaders against a server, merging results.

Every case runs ours and the bare baseline inside each repetition (in alternating order),
bounds every process by a deadline and the whole case by `Plan.case_budget_s`, and turns a
failure into an error note on its figures instead of ending the run.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from scripts.bench.plan import Plan
from scripts.bench.procs import KINDS, LOADER_STARTUP_S, Server, run_loaders, running_server
from scripts.bench.report import Figure, table_line
from scripts.bench.stats import latency_summary
from scripts.bench.streams import LoadSpec

__all__ = [
    "Budget",
    "Context",
    "drive",
    "error_texts",
    "loaders_for",
    "median_text",
    "merge",
    "paced_spec",
    "servers",
    "sessions_text",
    "side",
    "start_at_for",
    "summary_detail",
]

OPEN_RATE_PER_S = 800.0  # sessions one loader opens per second here, roughly (sets start_at)
LATE_NOTE_S = 0.5  # a loader this late opening its sessions gets a note on the figure


@dataclass(slots=True)
class Context:
    plan: Plan
    workdir: Path
    log: IO[bytes]
    figures: list[Figure] = field(default_factory=list)

    def emit(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(table_line(figure), flush=True)


class Budget:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def expired(self) -> bool:
        return time.monotonic() > self._end


def sessions_text(n: int) -> str:
    return f"{n:,} session" + ("" if n == 1 else "s")


def kinds_in_order(rep: int, kinds: tuple[str, ...] = KINDS) -> tuple[str, ...]:
    return kinds if rep % 2 == 0 else kinds[::-1]


def loaders_for(sessions: int) -> int:
    return 1 if sessions <= 100 else 2


def start_at_for(sessions: int, loaders: int, extra_s: float = 0.0) -> float:
    return time.monotonic() + LOADER_STARTUP_S + sessions / loaders / OPEN_RATE_PER_S + extra_s


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure set from several loaders' results."""
    merged: dict[str, Any] = {"errors": {}, "window_start": math.inf, "window_end": 0.0, "cut_short": False}
    for result in results:
        for key, value in result.items():
            if key == "errors":
                for text, count in value.items():
                    merged["errors"][text] = merged["errors"].get(text, 0) + count
            elif key == "window_start":
                if value:
                    merged[key] = min(merged[key], value)
            elif key in ("window_end", "late_s", "open_ms"):
                merged[key] = max(merged.get(key, 0.0), value)
            elif key == "cut_short":
                merged[key] = merged[key] or value
            elif isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                merged[key] = merged.get(key, 0) + value
    if not math.isfinite(merged["window_start"]):
        merged["window_start"] = 0.0
    return merged


def drive(ctx: Context, server: Server, specs: list[LoadSpec]) -> dict[str, Any]:
    """Run loaders against a server; their merged results plus the run's wall time and the CPU %
    the server and the loaders used inside the measured window."""
    started = time.monotonic()
    cpu: dict[str, float] = {}
    merged = merge(run_loaders(specs, ctx.log, server_pid=server.pid, cpu=cpu))
    merged.update(cpu)
    merged["run_s"] = round(time.monotonic() - started, 2)
    return merged


def error_texts(merged: dict[str, Any], kind: str = "") -> list[str]:
    """A run's problems as notes: loader errors, and sessions still opening inside the window."""
    prefix = f"{kind}: " if kind else ""
    texts = [f"{prefix}{text} (x{count})" for text, count in merged["errors"].items()]
    if merged.get("late_s", 0.0) > LATE_NOTE_S:
        texts.append(f"{prefix}window opened {merged['late_s']:.1f} s late: sessions were slow to open")
    return texts


def summary_detail(merged: dict[str, Any]) -> dict[str, Any]:
    """What goes into the JSON for one loader run: counts and latency summaries, not raw samples."""
    detail = {key: value for key, value in merged.items() if not isinstance(value, list)}
    for key in ("rtt_ms", "delivery_ms", "stop_ms", "stop_signal_ms", "issued_stop_ms"):
        if merged.get(key):
            detail[key] = latency_summary(merged[key])
    return detail


def each_server(
    ctx: Context,
    budget: Budget,
    errors: list[str],
    measure: Callable[[int, str, Server], None],
    reps: int | None = None,
    kinds: tuple[str, ...] = KINDS,
    defaults: bool = False,
) -> None:
    """`measure(rep, kind, server)` against a fresh server of each kind, repetition by repetition
    (the kinds' order alternating), while the budget lasts. A server that fails to start, or a
    run that fails (RuntimeError), is noted in `errors` and the case goes on. `defaults`: ours runs
    with its default settings instead of the bench's limits-off flags."""
    for rep in range(ctx.plan.reps if reps is None else reps):
        for kind in servers(ctx, rep, budget, errors, kinds):
            try:
                with running_server(kind, ctx.workdir, defaults=defaults) as server:
                    measure(rep, kind, server)
            except RuntimeError as exc:
                errors.append(f"{kind}: {exc}")


def servers(ctx: Context, rep: int, budget: Budget, errors: list[str], kinds: tuple[str, ...] = KINDS) -> Iterator[str]:
    """The server kinds of one repetition, in this repetition's order, while the budget lasts."""
    for kind in kinds_in_order(rep, kinds):
        if budget.expired():
            errors.append(f"case budget of {ctx.plan.case_budget_s:g} s spent: rep {rep + 1} {kind} skipped")
            continue
        yield kind


def side(kind: str) -> str:
    """Which column a server's figures go in: `ours` (or, in the metrics and store cases, ours with
    metrics or the store on)."""
    return "ours" if kind in ("ours", "ours-metrics", "ours-store") else "baseline"


def paced_spec(
    plan: Plan,
    target: str,
    sessions: int,
    *,
    tokens_per_s: float,
    stops_per_s: float,
    window_s: float,
    tool_every_s: float = 0.0,
    coalesce: bool = False,
) -> tuple[LoadSpec, int]:
    loaders = loaders_for(sessions)
    spec = LoadSpec(
        target=target,
        mode="paced",
        sessions=sessions,
        start_at=start_at_for(sessions, loaders, plan.paced_warmup_s),
        duration_s=window_s,
        deadline_s=window_s + 60,
        tokens_per_s=tokens_per_s,
        tool_every_s=tool_every_s,
        stops_per_s=stops_per_s,
        coalesce=coalesce,
        warmup_s=plan.paced_warmup_s,
        stop_wait_s=plan.stop_wait_s,
    )
    return spec, loaders


def median_text(values: list[float]) -> str:
    if not values:
        return "—"
    median = statistics.median(values)
    return f"{median:.0f}" if median >= 100 else f"{median:.1f}"
