"""Case 3, stop latency: paced, coalesced and full-speed agents with stop triggers, 1 to 1 000 sessions.

Two figures per case. "issued": the server decides the stop (StopSignal.issued_at_ms, its wall
clock) -> the agent is cancelled in the loader (same machine's wall clock; 1 ms resolution):
the issue's "dispatcher-issued stop to the agent's cancellation", which carries the targets.
"trigger": the loader writes the packet that triggers the stop -> the agent is cancelled; it
adds the trigger's upstream trip, including any backlog queued in front of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from scripts.bench.plan import Plan
from scripts.bench.procs import Server, split_spec
from scripts.bench.report import Figure, Target
from scripts.bench.runner import (
    Budget,
    Context,
    drive,
    each_server,
    error_texts,
    median_text,
    paced_spec,
    sessions_text,
    side,
    summary_detail,
)
from scripts.bench.stats import latency_summary

__all__ = ["StopCase", "stop_cases", "stop_latency"]


@dataclass(frozen=True, slots=True)
class StopCase:
    pace: str  # "paced" | "full speed"
    sessions: int
    coalesce: bool = False

    @property
    def label(self) -> str:
        how = f"{self.pace}, coalesced" if self.coalesce else self.pace
        return f"{sessions_text(self.sessions)} {how}"

    def target(self) -> Target | None:
        # Paced rows with and without coalescing: the commander coalesces by default, so the
        # coalesced row is what a stock commander sees; the other is a one-packet-per-token client.
        if self.pace == "paced" and self.sessions == 100:
            return Target("p99 ≤ 5 ms", ours_at_most=5.0)
        if self.pace == "paced" and self.sessions == 1000:
            return Target("p99 ≤ 20 ms", ours_at_most=20.0)
        return None


def stop_cases(plan: Plan) -> list[StopCase]:
    return (
        [StopCase("paced", n) for n in plan.stop_paced_sessions]
        + [StopCase("paced", n, coalesce=True) for n in plan.stop_coalesced_sessions]
        + [StopCase("full speed", n) for n in plan.stop_full_speed_sessions]
    )


def stop_latency(ctx: Context) -> None:
    plan, budget = ctx.plan, Budget(ctx.plan.case_budget_s)
    cases = stop_cases(plan)
    p50 = {case: Figure("3. stop", f"trigger p50, {case.label}", "ms", "lower") for case in cases}
    p99 = {case: Figure("3. stop", f"trigger p99, {case.label}", "ms", "lower") for case in cases}
    issued50 = {case: Figure("3. stop", f"issued p50, {case.label}", "ms", "lower") for case in cases}
    issued99 = {
        case: Figure("3. stop", f"issued p99, {case.label}", "ms", "lower", target=case.target()) for case in cases
    }
    achieved: dict[StopCase, dict[str, list[float]]] = {case: {"ours": [], "baseline": []} for case in cases}
    packets: dict[StopCase, dict[str, list[float]]] = {case: {"ours": [], "baseline": []} for case in cases}
    cpu: dict[StopCase, dict[str, list[float]]] = {case: {"ours": [], "baseline": []} for case in cases}
    errors: list[str] = []

    def measure(rep: int, kind: str, server: Server) -> None:
        for case in cases:
            spec, loaders = paced_spec(
                plan,
                server.target,
                case.sessions,
                tokens_per_s=plan.tokens_per_s if case.pace == "paced" else 0.0,
                stops_per_s=_stops_per_s(plan, case.sessions),
                window_s=plan.stop_window_s,
                coalesce=case.coalesce,
            )
            merged = drive(ctx, server, split_spec(spec, loaders))
            figure = p99[case]
            figure.errors += error_texts(merged, kind)
            figure.details.append({"rep": rep, "kind": kind, **summary_detail(merged)})
            per_session_s = plan.stop_window_s * case.sessions
            achieved[case][kind].append(merged.get("tokens", 0) / per_session_s)
            packets[case][kind].append(merged.get("packets", 0) / per_session_s)
            if "server_cpu_pct" in merged:
                cpu[case][kind].append(merged["server_cpu_pct"])
            if merged.get("stops_missed"):
                figure.errors.append(
                    f"{kind}: {merged['stops_missed']} of {merged.get('stops_triggered', 0)} stops not "
                    "seen by the end of the wait (counted at the wait: a lower bound)"
                )
            if merged.get("stop_ms"):
                summary = latency_summary(merged["stop_ms"])
                getattr(p50[case], side(kind)).append(summary["p50"])
                getattr(figure, side(kind)).append(summary["p99"])
            if merged.get("issued_stop_ms"):
                summary = latency_summary(merged["issued_stop_ms"])
                getattr(issued50[case], side(kind)).append(summary["p50"])
                getattr(issued99[case], side(kind)).append(summary["p99"])

    each_server(ctx, budget, errors, measure)
    for case in cases:
        offered = f"offered {plan.tokens_per_s:g}" if case.pace == "paced" else "full speed"
        tokens, sent, used = achieved[case], packets[case], cpu[case]
        stops = _stops_per_s(plan, case.sessions) * plan.stop_window_s
        p99[case].note = (
            f"per session ({offered}): tokens/s ours {median_text(tokens['ours'])}, "
            f"bare {median_text(tokens['baseline'])}; packets/s ours {median_text(sent['ours'])}, "
            f"bare {median_text(sent['baseline'])}; server CPU ours {median_text(used['ours'])} %, "
            f"bare {median_text(used['baseline'])} %; ≈{stops:.0f} stops per run"
        )
        p99[case].errors += errors
        issued99[case].errors += errors
        ctx.emit(issued50[case])
        ctx.emit(issued99[case])
        ctx.emit(p50[case])
        ctx.emit(p99[case])


def _stops_per_s(plan: Plan, sessions: int) -> float:
    """The plan's stop rate, but at most 10 stops per second per session (a lone session is mostly
    streaming, not reopening)."""
    return min(plan.stops_per_s, 10.0 * sessions)
