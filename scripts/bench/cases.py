"""The cases: each starts real server processes, drives them with loader processes and emits Figures
(stop latency lives in `stops.py`, the shared machinery in `runner.py`)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

from scripts.bench.gateway import GATEWAY_METHOD, gateway_case
from scripts.bench.procs import (
    KINDS,
    IdleLoaders,
    Server,
    cpu_seconds,
    rss_kb,
    run_loaders,
    split_spec,
)
from scripts.bench.replicas import REPLICAS_METHOD, replicas_case
from scripts.bench.report import Figure, Target
from scripts.bench.runner import (
    Budget,
    Context,
    drive,
    each_server,
    error_texts,
    loaders_for,
    merge,
    paced_spec,
    sessions_text,
    side,
    start_at_for,
    summary_detail,
)
from scripts.bench.seed_capacity import SEED_METHOD, seed_capacity
from scripts.bench.serialization import measure_codec
from scripts.bench.stats import latency_summary
from scripts.bench.stops import stop_latency
from scripts.bench.streams import LoadSpec

__all__ = ["CASES", "METHODS", "Context"]

METHODS = [
    "Processes: `ours` is a real `dispatcher serve` (session state machine, block-pattern policy with one "
    "pattern, journal, tool executor; max sessions unlimited, idle/session time limits off); `bare grpc.aio` "
    "is scripts/bench/baseline_server.py, a grpc.aio servicer of the same ChatStream that only reads, answers "
    "Hello with a bare Welcome, acks + echoes tool calls, stops on the marker word and sends one final Ack. "
    "Load comes from separate `scripts/bench/load.py` processes (1 for <= 100 sessions, 2 above) that "
    "stamp seq/session_id/timestamp like the commander and open every session with Hello -> Welcome; the "
    "same loader code drives both servers. Both servers run on the same event loop: asyncio's, the "
    "dispatcher's default (DISPATCHER_UVLOOP=true runs both on uvloop); the loaders always use "
    "asyncio's. Client and server share the machine's CPUs: with 2 cores a saturated loader "
    "inflates every latency, for both servers alike.",
    "1. upstream throughput: N sessions write their share of the packets (one 4-character token each) as "
    "fast as grpc.aio lets them, then is_finish and half-close; packets / (first write -> last stream "
    "end, after the final Ack covering every seq). Server CPU per packet = the server's user+system CPU "
    "over the whole loader run (including session open/close) / packets.",
    "1m. metrics on / off: case 1 with two servers that are both ours: `dispatcher serve` with "
    "--metrics-listen 127.0.0.1:0 (never scraped; in the `ours` column) and without it (in the `bare` column), "
    "so the ratio is what the counting costs (`python -m scripts.bench --only metrics`).",
    "1s. store on / off: case 1 at 10 and 100 sessions with two servers that are both ours: `dispatcher serve "
    "--store sqlite:///FILE` (a fresh file per server, WAL, synchronous=NORMAL, 5 ms group commit; in the `ours` "
    "column) and the default memory:// (in the `bare` column), so the ratio is what the store costs "
    "(`python -m scripts.bench --only store`).",
    "2. tool round trip: each session calls `echo` one call at a time; latency = call written -> "
    "ToolCallResult read (both servers also send an Ack per call); calls/s over the window.",
    "3. stop latency: agents stream tokens at 50 tokens/s in bursts of 1-8 (or as fast as the outbox takes "
    "them: full speed) while stop triggers are sent at random (Poisson) times: a content packet with a "
    "word the server's policy stops on (ours: --block-pattern, the real policy path). Two latencies per "
    "stop. issued (the issue's definition, and the one the targets apply to) = the server decides the "
    "stop (StopSignal.issued_at_ms, its wall clock, which both servers stamp at the decision) -> the "
    "agent task observes its cancellation (StopSignal read, agent cancelled at once), on the loader's "
    "wall clock: same machine, 1 ms resolution (issued_at_ms is whole ms, so a figure can read up to "
    "1 ms high). trigger = the loader's writer hands the trigger packet to grpc -> the agent is "
    "cancelled, one monotonic clock: it adds the trigger's upstream trip, including any backlog an "
    "overloaded server has queued in front of it. A stopped session confirms, ends and is replaced by a "
    "new one, so N stays constant. Agents start once every session of their loader is open, then warm "
    "up before the window. A stop not seen by the end of the wait after the window counts at that wait "
    "in the trigger figure (a lower bound, flagged). tokens/s and packets/s in the notes are what the "
    "loaders handed to grpc inside the window: accepted, not necessarily processed (an overloaded "
    "server's HTTP/2 buffers hold a backlog); server CPU % is measured over the window (100 % = one core). "
    "The paced targets apply to both the plain rows (one packet per token, as a client without "
    "coalescing sends) and the coalesced rows (the loader's writer joins the tokens queued behind a "
    "write, as the commander does by default).",
    "4. capacity: paced sessions (50 tokens/s, bursty, an echo call every ~3 s, 10 stops/s over all "
    "sessions) in ramped steps; a step passes when the token delivery p99 and the (trigger) stop p99 are "
    "under 50 ms, the loaders achieved >= 90 % of the offered tokens and nothing failed. Delivery = a tool "
    "call packet's write -> the Ack covering its seq (both servers ack a tool call on receipt), i.e. a "
    "round trip: an upper bound of one-way commander emit -> dispatcher receipt. Capacity = the last "
    "passing step.",
    "5. memory: N sessions opened (Hello -> Welcome) and left idle; (server VmRSS after - before) / N, "
    "after 20 warm-up sessions have come and gone. Includes allocator slack.",
    "6. serialization: in-process timeit of building + serializing and of parsing our packets (seq, "
    "session_id, timestamp, call ids...) vs the same messages in the original contract's shape (no seq, "
    "call_id, timeout, execution time; Ack without seq). The ratio prices the added fields only.",
    SEED_METHOD,
    GATEWAY_METHOD,
    REPLICAS_METHOD,
]


# -- 1. upstream throughput ------------------------------------------------------------------------


def upstream_throughput(ctx: Context) -> None:
    _throughput(ctx, "1. upstream", ("ours", "baseline"), Target("≥ 0.8×", 0.8))


def metrics_cost(ctx: Context) -> None:
    """Case 1 again, ours with --metrics-listen (the `ours` column) against ours without it (the
    `baseline` column): the ratio is the counting's cost (issue target: at most 3 %)."""
    _throughput(ctx, "1m. upstream, metrics on / off", ("ours-metrics", "ours-plain"), Target("≥ 0.97×", 0.97))


def store_cost(ctx: Context) -> None:
    """Case 1 at 10 and 100 sessions, ours with --store sqlite:///FILE (the `ours` column) against
    ours on memory:// (the `baseline` column): the ratio is what the durable store costs."""
    sizes = tuple(n for n in ctx.plan.throughput_sessions if n in (10, 100)) or (10, 100)
    _throughput(ctx, "1s. upstream, store on / off", ("ours-store", "ours-plain"), Target("≥ 0.9×", 0.9), sizes)


def _throughput(
    ctx: Context, section: str, kinds: tuple[str, str], target: Target, sizes: tuple[int, ...] = ()
) -> None:
    plan, budget = ctx.plan, Budget(ctx.plan.case_budget_s)
    sizes = sizes or plan.throughput_sessions
    rates = {n: Figure(section, sessions_text(n), "packets/s", "higher", target=target) for n in sizes}
    cpu = {n: Figure(section, f"server CPU per packet, {sessions_text(n)}", "µs", "lower") for n in sizes}
    errors: list[str] = []

    def measure(rep: int, kind: str, server: Server) -> None:
        for n in sizes:
            loaders = loaders_for(n)
            spec = LoadSpec(
                target=server.target,
                mode="throughput",
                sessions=n,
                start_at=start_at_for(n, loaders),
                duration_s=30.0,
                deadline_s=60.0,
                packets_per_session=max(1, plan.throughput_packets // n),
            )
            cpu_before = cpu_seconds(server.pid)
            merged = merge(run_loaders(split_spec(spec, loaders), ctx.log))
            cpu_used = cpu_seconds(server.pid) - cpu_before
            rates[n].errors += error_texts(merged, kind)
            window = merged["window_end"] - merged["window_start"]
            if merged.get("completed") == n and window > 0:
                getattr(rates[n], side(kind)).append(merged["packets"] / window)
                getattr(cpu[n], side(kind)).append(cpu_used / merged["packets"] * 1e6)
            rates[n].details.append({"rep": rep, "kind": kind, **summary_detail(merged)})

    each_server(ctx, budget, errors, measure, kinds=kinds)
    for n in sizes:
        rates[n].errors += errors
        ctx.emit(rates[n])
    for n in sizes:
        ctx.emit(cpu[n])


# -- 2. tool round trip -----------------------------------------------------------------------------


def tool_round_trip(ctx: Context) -> None:
    plan, budget = ctx.plan, Budget(ctx.plan.case_budget_s)
    sizes = plan.tool_sessions
    calls = {
        n: Figure("2. tool echo", sessions_text(n), "calls/s", "higher", target=Target("≥ 0.8×", 0.8)) for n in sizes
    }
    p50 = {
        n: Figure(
            "2. tool echo", f"p50, {sessions_text(n)}", "ms", "lower", target=Target("≤ 1.25×", ratio_at_most=1.25)
        )
        for n in sizes
    }
    p99 = {
        n: Figure(
            "2. tool echo", f"p99, {sessions_text(n)}", "ms", "lower", target=Target("≤ 1.25×", ratio_at_most=1.25)
        )
        for n in sizes
    }
    errors: list[str] = []

    def measure(rep: int, kind: str, server: Server) -> None:
        for n in sizes:
            loaders = loaders_for(n)
            spec = LoadSpec(
                target=server.target,
                mode="tool",
                sessions=n,
                start_at=start_at_for(n, loaders),
                duration_s=plan.tool_window_s,
                deadline_s=plan.tool_window_s + 30,
            )
            merged = drive(ctx, server, split_spec(spec, loaders))
            calls[n].errors += error_texts(merged, kind)
            calls[n].details.append({"rep": rep, "kind": kind, **summary_detail(merged)})
            if merged.get("rtt_ms"):
                summary = latency_summary(merged["rtt_ms"])
                which = side(kind)
                getattr(calls[n], which).append(merged["calls"] / plan.tool_window_s)
                getattr(p50[n], which).append(summary["p50"])
                getattr(p99[n], which).append(summary["p99"])

    each_server(ctx, budget, errors, measure)
    for n in sizes:
        calls[n].errors += errors
        for figure in (calls[n], p50[n], p99[n]):
            ctx.emit(figure)


# -- 4. capacity ------------------------------------------------------------------------------------


def capacity(ctx: Context) -> None:
    plan, budget = ctx.plan, Budget(ctx.plan.case_budget_s)
    limit = f"p99 < {plan.capacity_limit_ms:g} ms"
    figure = Figure(
        "4. capacity", f"paced sessions, delivery and stop {limit}", "sessions", "higher", target=Target("state it")
    )
    first = plan.capacity_steps[0]
    delivery = Figure("4. capacity", f"token delivery p99 at {first} paced sessions", "ms", "lower")
    steps_text: dict[str, list[str]] = {"ours": [], "baseline": []}

    def measure(rep: int, kind: str, server: Server) -> None:
        passed, text = _ramp(ctx, server, rep, figure, delivery, budget)
        getattr(figure, side(kind)).append(float(passed))
        steps_text[kind].append(text)

    each_server(ctx, budget, figure.errors, measure, reps=plan.capacity_reps)
    top = plan.capacity_steps[-1]
    at_least = [kind for kind in KINDS if top in getattr(figure, side(kind))]
    figure.note = (f"passed every step, so at least {top}: {', '.join(at_least)}; " if at_least else "") + (
        "last ramp: " + "; ".join(f"{kind} {texts[-1]}" for kind, texts in steps_text.items() if texts)
    )
    ctx.emit(figure)
    ctx.emit(delivery)


def _ramp(
    ctx: Context, server: Server, rep: int, figure: Figure, first_delivery: Figure, budget: Budget
) -> tuple[int, str]:
    """Ramp the paced sessions until a step fails; (the last passing step, what each step gave)."""
    plan, kind = ctx.plan, server.kind
    passed = 0
    steps: list[str] = []
    for n in plan.capacity_steps:
        if budget.expired():
            figure.errors.append(f"case budget spent: {kind} ramp ended before {n} sessions")
            break
        spec, loaders = paced_spec(
            plan,
            server.target,
            n,
            tokens_per_s=plan.tokens_per_s,
            stops_per_s=plan.capacity_stops_per_s,
            window_s=plan.capacity_window_s,
            tool_every_s=plan.capacity_tool_every_s,
        )
        merged = drive(ctx, server, split_spec(spec, loaders))
        delivery = latency_summary(merged.get("delivery_ms", []))
        stop = latency_summary(merged.get("stop_ms", []))
        offered = plan.tokens_per_s * n * plan.capacity_window_s
        share = merged.get("tokens", 0) / offered if offered else 0.0
        limit = plan.capacity_limit_ms
        ok = (
            delivery["n"] > 0
            and stop["n"] > 0
            and delivery["p99"] < limit
            and stop["p99"] < limit
            and share >= 0.9
            and not merged["errors"]
            and not merged.get("stops_missed")
        )
        figure.details.append({"rep": rep, "kind": kind, "sessions": n, "passed": ok, **summary_detail(merged)})
        figure.errors += [f"{text} (at {n} sessions)" for text in error_texts(merged, kind)]
        if n == plan.capacity_steps[0] and delivery["n"]:
            getattr(first_delivery, side(kind)).append(delivery["p99"])
        steps.append(
            f"{n} {'ok' if ok else 'FAIL'} (p99 delivery {delivery.get('p99', math.nan):.0f}, "
            f"stop {stop.get('p99', math.nan):.0f} ms; {share:.0%} of tokens; "
            f"server CPU {merged.get('server_cpu_pct', math.nan):.0f} %)"
        )
        if not ok:
            break
        passed = n
    return passed, ", ".join(steps)


# -- 5. memory --------------------------------------------------------------------------------------


def _settled_rss_kb(pid: int) -> int:
    """VmRSS once two readings 0.2 s apart agree within 0.5 % (at most ~3 s)."""
    previous = rss_kb(pid)
    for _ in range(15):
        time.sleep(0.2)  # waiting for the server's allocations to settle, bounded
        current = rss_kb(pid)
        if abs(current - previous) <= previous * 0.005:
            return current
        previous = current
    return previous


def _open_idle(ctx: Context, target: str, sessions: int) -> tuple[IdleLoaders, int]:
    loaders = 1 if sessions <= 1000 else 2
    spec = LoadSpec(target=target, mode="idle", sessions=sessions, deadline_s=120.0)
    idle = IdleLoaders(split_spec(spec, loaders), ctx.log)
    return idle, idle.wait_ready(timeout_s=90.0)


def memory(ctx: Context) -> None:
    plan, budget = ctx.plan, Budget(ctx.plan.case_budget_s)
    for n in plan.memory_sessions:
        per_session = Figure(
            "5. memory",
            f"server RSS per idle session, {n:,} sessions",
            "KiB",
            "lower",
            target=Target("≤ 1.5× and ≤ 40 KiB", ratio_at_most=1.5, ours_at_most=40.0),
        )
        opened_figure = Figure("5. memory", f"idle sessions open in one process (of {n:,})", "sessions", "higher")
        if n >= 10_000:
            opened_figure.target = Target(f"{n:,} open", ours_at_least=float(n))
        reps = plan.reps if n <= 1000 else min(plan.reps, 2)
        measure = functools.partial(_idle_rss, ctx, n, per_session, opened_figure)
        each_server(ctx, budget, per_session.errors, measure, reps=reps)
        ctx.emit(per_session)
        ctx.emit(opened_figure)


def _idle_rss(ctx: Context, n: int, per_session: Figure, opened: Figure, rep: int, kind: str, server: Server) -> None:
    """One memory run: RSS per idle session for `n` sessions, after 20 warm-up sessions."""
    warm, _ = _open_idle(ctx, server.target, 20)
    warm.release()
    before = _settled_rss_kb(server.pid)
    idle, opened_count = _open_idle(ctx, server.target, n)
    after = _settled_rss_kb(server.pid)
    merged = merge(idle.release())
    per_session.errors += error_texts(merged, kind)
    per_session.details.append(
        {"rep": rep, "kind": kind, "opened": opened_count, "rss_before_kb": before, "rss_after_kb": after}
    )
    getattr(opened, side(kind)).append(float(opened_count))
    if opened_count:
        getattr(per_session, side(kind)).append((after - before) / opened_count)


# -- 6. serialization -------------------------------------------------------------------------------


def serialization(ctx: Context) -> None:
    figures: dict[str, Figure] = {}
    for _rep in range(ctx.plan.reps):
        for name, ours_ns, original_ns in measure_codec(ctx.plan.serialization_number):
            figure = figures.setdefault(
                name, Figure("6. codec", name, "µs", "lower", note="bare = original-contract shape")
            )
            figure.ours.append(ours_ns / 1000)
            figure.baseline.append(original_ns / 1000)
    for figure in figures.values():
        ctx.emit(figure)


CASES: dict[str, Callable[[Context], None]] = {
    "throughput": upstream_throughput,
    "metrics": metrics_cost,
    "store": store_cost,
    "tool": tool_round_trip,
    "stop": stop_latency,
    "capacity": capacity,
    "memory": memory,
    "serialization": serialization,
    "seed": seed_capacity,
    "gateway": gateway_case,
    "replicas": replicas_case,
}
