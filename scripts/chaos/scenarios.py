"""The chaos scenarios (issue 17). Each starts its own dispatcher, runs its sessions through a
`FaultProxy`, injects its fault at a point it waits for (content streamed, a tool call running),
and checks what the dispatcher recorded against what the agent produced. Each is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from scripts.chaos.agent import Plan, expected_content
from scripts.chaos.flood import ping_flood
from scripts.chaos.ledger import JournalCheck, ToolLog, check_journal, event_dict
from scripts.chaos.procs import (
    ENDED,
    KEEPALIVE_BOUND_S,
    Commander,
    Features,
    Monitor,
    Timeline,
    commander_pool,
    dispatcher,
    start_commander,
    start_dispatcher,
    watch_journal,
)
from scripts.chaos.proxy import FaultProxy, Mode, parse_address
from scripts.chaos.report import Row
from shared import wire

__all__ = ["SCENARIOS", "Context", "Size"]

RESET_HOLD_S = 0.3  # a reset fault lasts this long: redials meanwhile are reset too (backoff is exercised)
RESUME_WINDOW_S = 60  # the dispatcher's window where the scenario wants resumes (longer than any fault)
RESUME_TIMEOUT_S = 60  # the commander's redial budget, likewise
END_SLACK_S = 30.0  # after a session's planned duration and its fault, how long it may still take


@dataclass(frozen=True, slots=True)
class Size:
    name: str
    sessions: int  # faulted sessions per scenario, one `commander run` each
    chunks: int
    rate: float  # chunks per second
    tool_hold_ms: int
    blackhole_s: float
    window_s: int  # the resume window of the kill -9 commander scenario
    bystanders: int  # sessions open beside the faulted ones (neighbours scenario)

    def plan(self, tools: int = 0, hold_ms: int | None = None) -> Plan:
        return Plan(self.chunks, self.rate, tools, self.tool_hold_ms if hold_ms is None else hold_ms)

    @property
    def answer_s(self) -> float:
        return self.chunks / self.rate if self.rate else 1.0


SMALL = Size("small", sessions=3, chunks=120, rate=40.0, tool_hold_ms=1500, blackhole_s=4.0, window_s=2,
             bystanders=100)  # fmt: skip
FULL = Size("full", sessions=20, chunks=600, rate=40.0, tool_hold_ms=3000, blackhole_s=20.0, window_s=30,
            bystanders=1000)  # fmt: skip


@dataclass
class Context:
    workdir: Path
    features: Features
    size: Size
    commanders: list[Commander] = field(default_factory=list)  # every one started: killed if left running

    @property
    def tool_log(self) -> Path:
        return self.workdir / "tools.log"

    def resume_flags(self, window_s: int = RESUME_WINDOW_S) -> list[str]:
        return ["--session-resume-window-s", str(window_s)] if self.features.resume else []

    def commander_flags(self) -> list[str]:
        return ["--resume-timeout-s", str(RESUME_TIMEOUT_S)] if self.features.resume else []

    async def commander(self, target: str, session_id: str, plan: Plan, *, resume: bool = True) -> Commander:
        """`commander run` of the chaos agent following `plan`, resuming (when built with it) or not."""
        flags = self.commander_flags() if resume else []
        commander = await start_commander(self.workdir, self.tool_log, target, session_id, plan.prompt(), *flags)
        self.commanders.append(commander)
        return commander

    async def reap(self) -> None:
        """Kill what a scenario left running (it failed or timed out half-way)."""
        for commander in self.commanders:
            if commander.process.returncode is None:
                await commander.kill9()
        self.commanders.clear()


NO_RESUME = "this build has no resume (dispatcher serve --session-resume-window-s, commander run --resume-timeout-s)"

# A fault, applied to one session's own proxy once that session reached the fault's point;
# returns when the fault began and when the link was whole again (monotonic).
Fault = Callable[[Context, FaultProxy, Monitor, str], Awaitable[tuple[float, float]]]


# -- faults -------------------------------------------------------------------------------------


async def _reset(proxy: FaultProxy) -> tuple[float, float]:
    """RST the session's connection; keep resetting its redials for RESET_HOLD_S; then let them through."""
    started = time.monotonic()
    proxy.set_mode(Mode.reset())
    await asyncio.sleep(RESET_HOLD_S)  # the fault's duration: the timing is the experiment
    proxy.set_mode(Mode.passing())
    if not proxy.counters.resets:
        raise AssertionError("the session's connection was not reset")
    return started, time.monotonic()


def _streamed(fraction: float, chunks: int, sid: str | None = None) -> Callable[[dict[str, Timeline]], bool]:
    """`fraction` of the answer journaled: by one session, or by every one followed."""
    if sid is not None:
        return lambda lines: lines[sid].events >= chunks * fraction
    return lambda lines: all(line.events >= chunks * fraction for line in lines.values())


async def reset_mid_answer(ctx: Context, proxy: FaultProxy, monitor: Monitor, sid: str) -> tuple[float, float]:
    await monitor.until(_streamed(1 / 3, ctx.size.chunks, sid), f"a third of {sid}'s answer", ctx.size.answer_s + 20)
    return await _reset(proxy)


async def _tools_running(ctx: Context, sids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(ToolLog.read(ctx.tool_log).running(sid) for sid in sids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no tool call running in {', '.join(sids)} within {timeout_s:g} s")
        await asyncio.sleep(0.02)  # polling a file the dispatcher's tool writes; bounded above


async def reset_mid_tool_call(ctx: Context, proxy: FaultProxy, monitor: Monitor, sid: str) -> tuple[float, float]:
    await _tools_running(ctx, [sid], ctx.size.answer_s + 20)
    return await _reset(proxy)


async def blackhole(ctx: Context, proxy: FaultProxy, monitor: Monitor, sid: str) -> tuple[float, float]:
    await monitor.until(_streamed(1 / 4, ctx.size.chunks, sid), f"a quarter of {sid}'s answer", ctx.size.answer_s + 20)
    started = time.monotonic()
    proxy.set_mode(Mode.blackhole())
    await asyncio.sleep(ctx.size.blackhole_s)  # the outage's length: the timing is the experiment
    proxy.set_mode(Mode.passing())
    return started, time.monotonic()


async def _each(
    ctx: Context, fault: Fault, proxies: dict[str, FaultProxy], monitor: Monitor
) -> dict[str, tuple[float, float]]:
    """`fault` on every session at once, each at its own point; the links are whole again after."""
    try:
        times = await asyncio.gather(*(fault(ctx, proxy, monitor, sid) for sid, proxy in proxies.items()))
    finally:
        for proxy in proxies.values():
            proxy.set_mode(Mode.passing())
    return dict(zip(proxies, times, strict=True))


@contextlib.asynccontextmanager
async def _proxies(target: str, sids: list[str]) -> AsyncIterator[dict[str, FaultProxy]]:
    """One proxy per session, so that a fault hits one session at the point it waits for."""
    async with contextlib.AsyncExitStack() as stack:
        yield {sid: await stack.enter_async_context(FaultProxy(parse_address(target))) for sid in sids}


def _proxy_note(proxies: dict[str, FaultProxy]) -> str:
    resets = sum(proxy.counters.resets for proxy in proxies.values())
    held = sum(proxy.counters.held for proxy in proxies.values())
    connections = sum(proxy.counters.connections for proxy in proxies.values())
    return f"proxies: {connections} connections, {resets} reset, {held} chunks held by a blackhole"


# -- checks -------------------------------------------------------------------------------------


def _check_resumed(
    row: Row,
    plan: Plan,
    commanders: list[Commander],
    journals: dict[str, list[dict[str, Any]]],
    timelines: dict[str, Timeline],
    tool_log: ToolLog,
    fault_at: dict[str, tuple[float, float]],
) -> None:
    """Each session FINISHED after resuming, its content exactly once, each call id run once."""
    expected = expected_content(plan)
    detects, recovers = [], []
    for commander in commanders:
        sid = commander.session_id
        check = check_journal(sid, journals.get(sid, []), expected)
        line = timelines[sid]
        _count(row, check, tool_log, sid, plan)
        result_state = commander.result.get("state")
        resumes = int(commander.result.get("resumes", line.resumes))
        if line.ended_at is not None:
            row.recorded += 1
        problems = list(check.problems)
        if commander.exit_code != 0 or result_state != "FINISHED":
            problems.append(f"commander exit {commander.exit_code}, result {result_state} ({_why(commander)})")
        if check.final_state != "SESSION_STATE_FINISHED":
            problems.append(f"journal ends {check.final_state or 'with no state'} ({line.reason})")
        if not resumes:
            problems.append("never resumed")
        if line.detached_at is not None:
            detects.append(line.detached_at - fault_at[sid][0])
        if line.resumed_at is not None:
            recovers.append(max(0.0, line.resumed_at - fault_at[sid][1]))
        if problems:
            row.problems += [f"{sid}: {problem}" for problem in problems]
        else:
            row.survived += 1
    row.detect_s = max(detects) if detects else None
    row.recover_s = max(recovers) if recovers else None
    if len(detects) < len(commanders):
        row.notes.append(
            f"{len(commanders) - len(detects)} session(s) resumed between two 25 ms polls (no detect time)"
        )


def _count(row: Row, check: JournalCheck, tool_log: ToolLog, sid: str, plan: Plan) -> None:
    row.lost += check.lost
    row.duplicates += check.duplicates
    row.executed_twice += tool_log.executed_twice(sid)
    executed = tool_log.calls_of(sid)
    if plan.tools and set(check.tool_calls) != executed:
        row.problems.append(f"{sid}: journal calls {sorted(check.tool_calls)} but the tool ran {sorted(executed)}")


def _why(commander: Commander) -> str:
    return str(commander.result.get("reason") or commander.result.get("status_details") or "no result")


async def _journals(address: str, sids: list[str]) -> dict[str, list[dict[str, Any]]]:
    journals = await asyncio.gather(*(watch_journal(address, sid) for sid in sids))
    return dict(zip(sids, journals, strict=True))


async def _wait_all(commanders: list[Commander], timeout_s: float) -> None:
    await asyncio.gather(*(commander.wait(timeout_s) for commander in commanders))


def _all_ended(lines: dict[str, Timeline]) -> bool:
    return all(line.ended_at is not None for line in lines.values())


# -- scenarios ----------------------------------------------------------------------------------


async def _faulted(ctx: Context, name: str, slug: str, plan: Plan, fault: Fault) -> Row:
    """Sessions through the proxy, `fault` once they reached its point, then the checks."""
    row = Row(name, sessions=ctx.size.sessions)
    if not ctx.features.resume:
        row.skipped = NO_RESUME
        return row
    sids = [f"{slug}-{i}" for i in range(ctx.size.sessions)]
    async with dispatcher(ctx.workdir, ctx.tool_log, slug, *ctx.resume_flags()) as d:
        async with _proxies(d.address, sids) as proxies, Monitor(d.address) as monitor:
            monitor.follow(sids)
            commanders = [await ctx.commander(proxies[sid].address, sid, plan) for sid in sids]
            fault_at = await _each(ctx, fault, proxies, monitor)
            await _wait_all(commanders, ctx.size.answer_s + plan.tools * plan.hold_ms / 1000 + END_SLACK_S)
            with contextlib.suppress(TimeoutError):
                await monitor.until(_all_ended, "every outcome recorded", 10)
            journals = await _journals(d.address, sids)
            row.notes.append(_proxy_note(proxies))
    _check_resumed(row, plan, commanders, journals, monitor.sessions, ToolLog.read(ctx.tool_log), fault_at)
    return row


async def scenario_reset_mid_answer(ctx: Context) -> Row:
    return await _faulted(ctx, "reset mid-answer", "reset-answer", ctx.size.plan(), reset_mid_answer)


async def scenario_reset_mid_tool_call(ctx: Context) -> Row:
    return await _faulted(ctx, "reset mid-tool-call", "reset-tool", ctx.size.plan(tools=1), reset_mid_tool_call)


async def scenario_blackhole(ctx: Context) -> Row:
    row = await _faulted(ctx, f"blackhole {ctx.size.blackhole_s:g} s", "blackhole", ctx.size.plan(), blackhole)
    row.notes.append(f"keepalive bound {KEEPALIVE_BOUND_S:g} s (1 s PING interval + 1 s timeout + 1 s slack)")
    if row.detect_s is not None and row.detect_s > KEEPALIVE_BOUND_S:
        row.problems.append(f"detected after {row.detect_s:.2f} s, over the keepalive bound {KEEPALIVE_BOUND_S:g} s")
    if not row.skipped and row.detect_s is None:
        row.problems.append("the dispatcher never showed the session DETACHED")
    return row


async def scenario_kill_commander(ctx: Context) -> Row:
    """kill -9 of a commander while its tool call runs: the call is cancelled, and the session
    ends CANCELLED "peer lost, not resumed" once the window has passed."""
    row = Row(f"kill -9 commander mid-tool-call (window {ctx.size.window_s} s)", sessions=ctx.size.sessions)
    if not ctx.features.resume:
        row.skipped = NO_RESUME
        return row
    plan = ctx.size.plan(tools=1, hold_ms=(ctx.size.window_s + 30) * 1000)  # outlives the window
    sids = [f"kill-commander-{i}" for i in range(ctx.size.sessions)]
    async with dispatcher(ctx.workdir, ctx.tool_log, "kill-commander", *ctx.resume_flags(ctx.size.window_s)) as d:
        async with FaultProxy(parse_address(d.address)) as proxy, Monitor(d.address) as monitor:
            monitor.follow(sids)
            commanders = [await ctx.commander(proxy.address, sid, plan) for sid in sids]
            await _tools_running(ctx, sids, ctx.size.answer_s + 20)
            killed_at = time.monotonic()
            await asyncio.gather(*(commander.kill9() for commander in commanders))
            await monitor.until(_all_ended, "every session ended", ctx.size.window_s + 20)
            journals = await _journals(d.address, sids)
    tool_log = ToolLog.read(ctx.tool_log)
    detects, ends = [], []
    for sid in sids:
        line = monitor.sessions[sid]
        check = check_journal(sid, journals[sid], None)
        row.duplicates += check.duplicates
        row.executed_twice += tool_log.executed_twice(sid)
        problems = list(check.problems)
        ended_after = None if line.ended_at is None else line.ended_at - killed_at
        if ended_after is not None:
            row.recorded += 1
            ends.append(ended_after)
        if line.detached_at is not None:
            detects.append(line.detached_at - killed_at)
        if check.final_state != "SESSION_STATE_CANCELLED" or "not resumed" not in line.reason:
            problems.append(f"ended {check.final_state} ({line.reason!r}), not CANCELLED 'peer lost, not resumed'")
        running = [call for call in check.tool_calls if call not in tool_log.calls_of(sid)]
        cancelled = {call for (s, call), n in tool_log.cancelled.items() if s == sid and n}
        if running or set(check.tool_calls) != cancelled:
            problems.append(f"tool calls {check.tool_calls}: cancelled on the tool side {sorted(cancelled)}")
        if set(check.dropped_results) != set(check.tool_calls):
            problems.append(
                f"journal records no dropped result for {set(check.tool_calls) - set(check.dropped_results)}"
            )
        if ended_after is not None and ended_after < ctx.size.window_s * 0.9:
            problems.append(f"ended {ended_after:.2f} s after the kill, before the {ctx.size.window_s} s window")
        row.problems += [f"{sid}: {p}" for p in problems]
        row.survived += not problems
    row.detect_s = max(detects) if detects else None
    if ends:
        row.notes.append(f"CANCELLED {min(ends):.2f}-{max(ends):.2f} s after the kill (window {ctx.size.window_s} s)")
    return row


async def scenario_kill_dispatcher(ctx: Context) -> Row:
    """kill -9 of the dispatcher and a restart on the same --store: ended sessions listable and
    watchable; live ones resumed (their commanders redial through the proxy) or recorded."""
    row = Row("kill -9 dispatcher, restart on the same store", sessions=2 * ctx.size.sessions)
    if not ctx.features.store:
        row.skipped = "this build has no --store (the SQLite store, branch store, is not merged)"
        return row
    if not ctx.features.resume:
        row.skipped = NO_RESUME
        return row
    store = f"sqlite:///{ctx.workdir / 'store.db'}"
    flags = ("--store", store, *ctx.resume_flags())
    short, long = Plan(chunks=20, rate=0, tools=1, hold_ms=10), ctx.size.plan(tools=0)
    ended_ids = [f"restart-ended-{i}" for i in range(ctx.size.sessions)]
    live_ids = [f"restart-live-{i}" for i in range(ctx.size.sessions)]
    first = await start_dispatcher(ctx.workdir, ctx.tool_log, "restart-1", *flags)
    second = None
    try:
        async with FaultProxy(parse_address(first.address)) as proxy, Monitor(first.address) as monitor:
            done = [await ctx.commander(proxy.address, sid, short) for sid in ended_ids]
            await _wait_all(done, END_SLACK_S)
            monitor.follow(live_ids)
            live = [await ctx.commander(proxy.address, sid, long) for sid in live_ids]
            await monitor.until(_streamed(1 / 4, long.chunks), "a quarter of every live answer", ctx.size.answer_s + 20)
            killed_at = time.monotonic()
            await first.kill9()
            second = await start_dispatcher(ctx.workdir, ctx.tool_log, "restart-2", *flags)
            proxy.target = parse_address(second.address)  # the same address for the commanders
            monitor.retarget(second.address)
            restarted_at = time.monotonic()
            await _wait_all(live, ctx.size.answer_s + RESUME_TIMEOUT_S)
            with contextlib.suppress(TimeoutError):
                await monitor.until(_all_ended, "every live session ended", 10)
            listed = await _listed(second.address)
            journals = await _journals(second.address, ended_ids + live_ids)
    finally:
        await first.stop()
        if second is not None:
            await second.stop()
    row.notes.append(f"restarted {restarted_at - killed_at:.2f} s after the kill")
    for sid in ended_ids:
        check = check_journal(sid, journals[sid], expected_content(short))
        row.lost, row.duplicates = row.lost + check.lost, row.duplicates + check.duplicates
        problems = list(check.problems)
        if listed.get(sid) != wire.ctl.SESSION_STATE_FINISHED:
            problems.append(f"not listed FINISHED after the restart ({listed.get(sid)})")
        else:
            row.recorded += 1
        row.problems += [f"{sid}: {p}" for p in problems]
        row.survived += not problems
    recovers = []
    for commander in live:
        sid = commander.session_id
        line = monitor.sessions[sid]
        check = check_journal(sid, journals[sid], expected_content(long))
        if listed.get(sid) in ENDED:
            row.recorded += 1
        if commander.result.get("state") == "FINISHED" and int(commander.result.get("resumes", 0)):
            row.lost, row.duplicates = row.lost + check.lost, row.duplicates + check.duplicates
            row.problems += [f"{sid}: {p}" for p in check.problems]
            row.survived += not check.problems
            if line.resumed_at is not None:
                recovers.append(line.resumed_at - restarted_at)
        elif sid not in listed or not line.reason:
            row.problems.append(f"{sid}: neither resumed nor recorded after the restart")
        else:
            row.notes.append(f"{sid}: recorded {line.reason!r} (not resumed)")
    row.recover_s = max(recovers) if recovers else None
    return row


async def _listed(address: str) -> dict[str, int]:
    """Every session ListSessions shows, with its state."""
    return {sid: int(info.state) for sid, info in (await _list_infos(address)).items()}


async def _list_infos(address: str) -> dict[str, Any]:
    """Every session ListSessions shows (paged: one call per 1 000, not one per session)."""
    infos: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = wire.SessionControlServiceStub(channel)
        token = ""
        while True:
            page = await stub.ListSessions(wire.ctl.ListSessionsRequest(page_size=1000, page_token=token), timeout=30)
            infos.update({info.session_id: info for info in page.sessions})
            if not (token := page.next_page_token):
                return infos


async def scenario_neighbours(ctx: Context) -> Row:
    """Bystander sessions (a `commander serve` pool, StartSession), a slow watcher and a ping
    flood beside sessions whose link is reset: no bystander is affected."""
    size = ctx.size
    fault = f"neighbours: {size.bystanders} bystanders + {size.sessions} reset, slow watcher, ping flood"
    row = Row(fault, sessions=size.bystanders)
    plan = Plan(chunks=40, rate=8.0, tools=1, hold_ms=200)
    faulted_plan = size.plan()
    sids = [f"bystander-{i}" for i in range(size.bystanders)]
    faulted_ids = [f"neighbour-reset-{i}" for i in range(size.sessions)]
    pools = math.ceil(size.bystanders / 250)
    results: dict[str, tuple[str, str]] = {}
    kept = str(size.bystanders + size.sessions + 16)
    # All of them start at once; every journal and outcome is read after all have ended (only
    # the newest --session-ended-journals-kept / -sessions-kept keep theirs, 100 / 1 000 by default).
    waiting = ("--pool-max-waiting-callers", kept, "--session-ended-journals-kept", kept,
               "--session-ended-sessions-kept", kept)  # fmt: skip
    async with dispatcher(ctx.workdir, ctx.tool_log, "neighbours", *waiting, *ctx.resume_flags()) as d:
        async with contextlib.AsyncExitStack() as stack:
            for index in range(pools):
                n = min(250, size.bystanders - index * 250)
                await stack.enter_async_context(
                    commander_pool(ctx.workdir, ctx.tool_log, d.address, n, f"pool-{index}")
                )
            proxies = await stack.enter_async_context(_proxies(d.address, faulted_ids))
            monitor = await stack.enter_async_context(Monitor(d.address))
            monitor.follow(faulted_ids)
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(d.address))
            stub = wire.SessionControlServiceStub(channel)
            faulted = [await ctx.commander(proxies[sid].address, sid, faulted_plan) for sid in faulted_ids]
            started = time.monotonic()
            async with asyncio.TaskGroup() as group:
                for sid in sids:
                    group.create_task(_bystander(stub, sid, plan, results))
                watcher = group.create_task(_slow_watcher(stub, sids[0]))
                flood = group.create_task(ping_flood(parse_address(d.address)))
                fault_at = await _each(ctx, reset_mid_answer, proxies, monitor)
            await _wait_all(faulted, size.answer_s + END_SLACK_S)
            with contextlib.suppress(TimeoutError):
                await monitor.until(_all_ended, "every faulted outcome recorded", 10)
            infos = await _list_infos(d.address)
            faulted_journals = await _journals(d.address, faulted_ids)
    elapsed = time.monotonic() - started
    tool_log = ToolLog.read(ctx.tool_log)
    expected = expected_content(plan)
    durations = []
    for sid in sids:
        state, text = results.get(sid, ("no result", ""))
        check = check_journal(sid, [], expected)  # the content the stream delivered, checked as a journal's
        got, want = text.split(), expected.split()
        check.lost = sum(1 for token in want if token not in set(got))
        dup = len(got) - len(set(got))
        row.lost, row.duplicates = row.lost + check.lost, row.duplicates + dup
        row.executed_twice += tool_log.executed_twice(sid)
        info = infos.get(sid)
        problems = []
        if state != "SESSION_STATE_FINISHED" or got != want:
            problems.append(f"ended {state}, {check.lost} lost, {dup} duplicated")
        if info is not None:
            row.recorded += info.state == wire.ctl.SESSION_STATE_FINISHED
            if info.resumes:
                problems.append(f"a bystander resumed {info.resumes} time(s)")
            if info.outcome.ended_at_ms and info.started_at_ms:
                durations.append((info.outcome.ended_at_ms - info.started_at_ms) / 1000)
        row.problems += [f"{sid}: {p}" for p in problems]
        row.survived += not problems
    if ctx.features.resume:
        faulted_row = Row("faulted", sessions=len(faulted))
        _check_resumed(faulted_row, faulted_plan, faulted, faulted_journals, monitor.sessions, tool_log, fault_at)
        row.problems += faulted_row.problems
        row.lost, row.duplicates = row.lost + faulted_row.lost, row.duplicates + faulted_row.duplicates
        row.sessions += faulted_row.sessions
        row.survived, row.recorded = row.survived + faulted_row.survived, row.recorded + faulted_row.recorded
        row.executed_twice += faulted_row.executed_twice
        row.detect_s, row.recover_s = faulted_row.detect_s, faulted_row.recover_s
        row.notes.append(f"faulted sessions beside them: {faulted_row.survived}/{len(faulted)} resumed and FINISHED")
    else:
        ends = [monitor.sessions[sid].reason for sid in faulted_ids]
        row.notes.append(f"faulted sessions beside them (no resume in this build) ended: {sorted(set(ends))}")
    if durations:
        row.notes.append(
            f"bystander durations p50 {statistics.median(durations):.2f} s, max {max(durations):.2f} s "
            f"(planned {plan.chunks / plan.rate:.1f} s + tool {plan.hold_ms} ms); all done in {elapsed:.1f} s"
        )
    row.notes.append(f"slow watcher: {watcher.result()}")
    row.notes.append(f"ping flood: {flood.result()}")
    return row


async def _bystander(stub: Any, sid: str, plan: Plan, results: dict[str, tuple[str, str]]) -> None:
    request = wire.ctl.StartSessionRequest(
        input_text=plan.prompt(),
        session_id=sid,
        wait_for_commander_ms=30_000,
        kinds=[wire.ctl.EVENT_KIND_CONTENT, wire.ctl.EVENT_KIND_STATE_CHANGE],
    )
    text: list[str] = []
    state = "no state"
    try:
        async for answer in stub.StartSession(request, timeout=120):
            event = event_dict(answer.event)
            if "content" in event:
                text.append(event["content"].get("text", ""))
            elif "state_change" in event:
                state = event["state_change"].get("state", state)
    except grpc.aio.AioRpcError as exc:
        state = f"{exc.code().name}: {exc.details()}"
    results[sid] = (state, "".join(text))


async def _slow_watcher(stub: Any, sid: str) -> str:
    """Watches one bystander reading an event every 50 ms: its session must not wait for it."""
    for _ in range(200):  # the session may not exist yet
        try:
            await stub.GetSession(wire.ctl.GetSessionRequest(session_id=sid), timeout=5)
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.05)  # polling for another process's session; bounded above
    read = 0
    try:
        async for _ in stub.WatchSession(wire.ctl.WatchSessionRequest(session_id=sid, from_seq=1), timeout=120):
            read += 1
            await asyncio.sleep(0.05)  # the slow reader itself
    except grpc.aio.AioRpcError as exc:
        return f"read {read} events, then {exc.code().name}"
    return f"read {read} events, one per 50 ms, to the end"


SCENARIOS: dict[str, Callable[[Context], Awaitable[Row]]] = {
    "reset-answer": scenario_reset_mid_answer,
    "reset-tool": scenario_reset_mid_tool_call,
    "blackhole": scenario_blackhole,
    "kill-commander": scenario_kill_commander,
    "kill-dispatcher": scenario_kill_dispatcher,
    "neighbours": scenario_neighbours,
}
