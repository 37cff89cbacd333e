"""Case 7: capacity under a seed-era client's load shape (scripts/bench/seed.py), ramped until both fail.

Each server is ramped through `Plan.seed_steps`; a step passes when every session ended OK and the
probe's p99 is under `Plan.capacity_limit_ms`. The ramp of a server goes one step past its first
failure, so the table shows how it degrades there (smoothly, or in bulk). Capacity = the last passing
step before the first failure.
"""

from __future__ import annotations

import math
from dataclasses import replace

from scripts.bench.procs import KINDS, Server
from scripts.bench.report import Figure, Target
from scripts.bench.runner import Budget, Context, drive, each_server, error_texts, side, start_at_for, summary_detail
from scripts.bench.stats import latency_summary
from scripts.bench.streams import LoadSpec

__all__ = ["SEED_METHOD", "seed_capacity"]

CONNECTIONS = 4  # over all loaders, as the independent client spreads its sessions
PROBE_EVERY_S = 1.0
WARMUP_S = 1.0  # probes of a session's first second, while all N open at once, are not sampled

SEED_METHOD = (
    "7. seed-era capacity: the load shape of an independent client written against the original contract "
    "alone: no Hello, no seq, no call_id (the dispatcher's compatibility path); N sessions over 4 HTTP/2 "
    "connections; each sends one thought, then one 4-byte content chunk per packet at 50 tokens/s (random "
    "start offset within one token period) and an echo tool call every second while the tokens go on, then "
    "is_finish and half-close. Ours runs with its defaults (`dispatcher serve --listen`). The load comes "
    "from interop/node/seed_load.js (grpc-js: an independent HTTP/2 stack, and a cheaper client than Python's, "
    "so the loader's own CPU weighs less on two shared cores; scripts/bench/seed.py where Node is missing). "
    "The probe = the call's write -> its ToolCallResult read, sampled after each session's first second "
    "(all N sessions open within one token period, a burst both servers pay for). A step passes when "
    "every session ended OK and probe p99 < 50 ms; each server is ramped one step past its first failure; "
    "capacity = the last passing step before it."
)


def seed_capacity(ctx: Context) -> None:
    plan, budget = ctx.plan, Budget(ctx.plan.case_budget_s)
    limit = plan.capacity_limit_ms
    capacity = Figure(
        "7. seed-era",
        f"capacity: sessions OK with probe p99 < {limit:g} ms",
        "sessions",
        "higher",
        target=Target("≥ 0.8×", 0.8),
    )
    p50 = {n: Figure("7. seed-era", f"probe p50, {n} sessions", "ms", "lower") for n in plan.seed_steps}
    p99 = {
        n: Figure("7. seed-era", f"probe p99, {n} sessions", "ms", "lower", target=_p99_target(n))
        for n in plan.seed_steps
    }
    ok_share = {n: Figure("7. seed-era", f"sessions OK, {n} sessions", "%", "higher") for n in plan.seed_steps}
    ramps: dict[str, list[str]] = {kind: [] for kind in KINDS}

    def measure(rep: int, kind: str, server: Server) -> None:
        passed, failed_at, steps = 0, 0, []
        for n in plan.seed_steps:
            if budget.expired():
                capacity.errors.append(f"case budget spent: {kind} ramp ended before {n} sessions")
                break
            merged = drive(ctx, server, _specs(plan.seed_session_s, plan.tokens_per_s, server.target, n))
            probe = latency_summary(merged.get("rtt_ms", []))
            completed = merged.get("completed", 0)
            ok = completed == n and probe["n"] > 0 and probe["p99"] < limit
            which = side(kind)
            if probe["n"]:
                getattr(p50[n], which).append(probe["p50"])
                getattr(p99[n], which).append(probe["p99"])
            getattr(ok_share[n], which).append(100.0 * completed / n)
            capacity.details.append({"rep": rep, "kind": kind, "sessions": n, "passed": ok, **summary_detail(merged)})
            p99[n].errors += [f"{text} (at {n} sessions)" for text in error_texts(merged, kind)]
            steps.append(
                f"{n} {'ok' if ok else 'FAIL'} (p50/p99 {probe.get('p50', math.nan):.1f}/"
                f"{probe.get('p99', math.nan):.1f} ms, {completed}/{n} OK, "
                f"server CPU {merged.get('server_cpu_pct', math.nan):.0f} %)"
            )
            if ok and not failed_at:
                passed = n
            if not ok:
                if failed_at:
                    break  # one step past the first failure
                failed_at = n
        getattr(capacity, side(kind)).append(float(passed))
        ramps[kind].append(", ".join(steps))

    each_server(ctx, budget, capacity.errors, measure, reps=plan.capacity_reps, defaults=True)
    capacity.note = "last ramp: " + "; ".join(f"{kind} {texts[-1]}" for kind, texts in ramps.items() if texts)
    ctx.emit(capacity)
    for n in plan.seed_steps:
        for figure in (p50[n], p99[n], ok_share[n]):
            if figure.ours or figure.baseline:
                ctx.emit(figure)


def _p99_target(sessions: int) -> Target | None:
    return Target("≤ 1.5×", ratio_at_most=1.5) if sessions in (100, 200) else None


def _specs(session_s: float, tokens_per_s: float, target: str, sessions: int) -> list[LoadSpec]:
    """The load split over loader processes (one per 200 sessions, at most 4), 4 connections in all."""
    loaders = max(1, min(CONNECTIONS, math.ceil(sessions / 200)))
    base = LoadSpec(
        target=target,
        mode="seed",
        sessions=sessions,
        start_at=start_at_for(0, loaders),
        duration_s=session_s,
        deadline_s=session_s + 40,
        tokens_per_s=tokens_per_s,
        tool_every_s=PROBE_EVERY_S,
        stop_wait_s=10.0,
        warmup_s=WARMUP_S,
    )
    specs = []
    for index in range(loaders):
        share = sessions // loaders + (1 if index < sessions % loaders else 0)
        specs.append(replace(base, sessions=share, channels=CONNECTIONS // loaders, seed=index + 1))
    return specs
