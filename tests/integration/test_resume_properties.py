"""Resume under random faults (issue 17), as hypothesis stateful testing.

An in-process dispatcher (the `chaos_record` tool recording every execution) and commander
sessions of the chaos agent (`run_session`), each session through its own in-process
`FaultProxy` so a fault hits one session. Rules start sessions and cut their link at a point
they wait for: mid-answer, mid tool call, right after a stop was issued; a cut is an RST or a
blackhole held until the dispatcher holds the session DETACHED (keepalive 1 s + 1 s), then the
link returns. Invariants, once every session has ended: each has a recorded outcome; its
journal's content is what the agent produced (all of it when FINISHED, a gapless prefix when
STOPPED), exactly once and in order; no upstream packet or call id is journaled twice; each
call id ran once on the tool side.

The machine runs in a worker thread (hypothesis drives rules synchronously); every rule runs
its async part on the test's own event loop with `anyio.from_thread.run`, so grpc sees one loop.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from commander import CommanderConfig, ConnectionConfig, SessionResult, run_session
from commander.transport import open_channel
from dispatcher.app import Dispatcher
from dispatcher.config import DispatcherConfig
from dispatcher.tools import default_registry
from scripts.chaos.agent import NumberedAgent, Plan, expected_content
from scripts.chaos.ledger import ToolLog, check_journal, event_dict
from scripts.chaos.proxy import FaultProxy, Mode, parse_address
from shared import wire
from shared.keepalive import KeepaliveConfig
from tests.conftest import running_dispatcher, test_config

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

KEEPALIVE = {"time_ms": 1000, "timeout_ms": 1000}
DETACH_WAIT_S = 8.0  # a blackhole is seen within keepalive time + timeout (~2 s); bounded well above
SESSION_END_S = 30.0
MAX_SESSIONS = 3
PLANS = (
    Plan(chunks=60, rate=40.0, tools=0, hold_ms=0),
    Plan(chunks=40, rate=40.0, tools=1, hold_ms=600),
    Plan(chunks=30, rate=30.0, tools=2, hold_ms=300),
)
MACHINE_SETTINGS = settings(
    max_examples=10,
    stateful_step_count=5,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def dispatcher_config() -> DispatcherConfig:
    """Short keepalive, a resume window longer than any fault here."""
    return test_config(keepalive={**KEEPALIVE, "min_ping_interval_ms": 500}, session={"resume_window_s": 30.0})


@dataclass
class Live:
    """One session of the machine: its plan, its own proxy, its result once run_session returned."""

    session_id: str
    plan: Plan
    proxy: FaultProxy
    done: anyio.Event = field(default_factory=anyio.Event)
    result: SessionResult | None = None
    stopped: bool = False
    faults: list[str] = field(default_factory=list)


class World:
    """The async side: dispatcher, proxies, sessions (owned by one task group), the tool's record."""

    def __init__(self, dispatcher: Dispatcher, group: anyio.abc.TaskGroup, control: Any) -> None:
        self.dispatcher = dispatcher
        self.group = group
        self.control = control
        self.tools = ToolLog()
        self.sessions: dict[str, Live] = {}
        self.cuts: Counter[str] = Counter()  # "reset@content", ...: the cuts that landed

    def sink(self, event: str, session_id: str, call_id: str, n: int) -> None:
        self.tools.add(event, session_id, call_id)

    async def start(self, session_id: str, plan: Plan) -> None:
        proxy = FaultProxy(parse_address(self.dispatcher.address))
        await proxy.start()
        live = self.sessions[session_id] = Live(session_id, plan, proxy)
        self.group.start_soon(self._run, live)

    async def _run(self, live: Live) -> None:
        config = CommanderConfig(
            connection=ConnectionConfig(target=live.proxy.address, handshake_timeout_s=5.0, resume_timeout_s=20.0),
            keepalive=KeepaliveConfig(**KEEPALIVE),
        )
        try:
            async with open_channel(config.connection, config.keepalive) as channel:
                live.result = await run_session(
                    NumberedAgent(live.plan), "", channel=channel, config=config, session_id=live.session_id
                )
        finally:
            live.done.set()

    async def info(self, session_id: str) -> Any:
        try:
            answer = await self.control.GetSession(wire.ctl.GetSessionRequest(session_id=session_id), timeout=5)
        except grpc.aio.AioRpcError:
            return None
        return answer.session

    async def wait_for(self, live: Live, what: str, predicate: Any, timeout_s: float) -> bool:
        """Poll (bounded) until `predicate(info)`; False when the session ended first or time ran out.
        A deadline, not a cancel scope: cancelling a grpc.aio await from an anyio scope can let a bare
        CancelledError escape the scope (and end the test, and the event loop the suite shares)."""
        deadline = anyio.current_time() + timeout_s
        while not live.done.is_set() and anyio.current_time() < deadline:
            info = await self.info(live.session_id)  # bounded by its own grpc deadline
            if info is not None and predicate(info):
                return True
            await anyio.sleep(0.02)  # another component's state: no event to await
        return False

    async def cut(self, live: Live, kind: str) -> None:
        live.faults.append(kind)
        if kind == "reset":
            live.proxy.reset_current()
            return
        live.proxy.set_mode(Mode.blackhole())
        try:
            await self.wait_for(live, "DETACHED", lambda info: info.state == wire.ctl.SESSION_STATE_DETACHED,
                                DETACH_WAIT_S)  # fmt: skip
        finally:
            live.proxy.set_mode(Mode.passing())

    async def cut_at(self, live: Live, point: str, kind: str) -> None:
        plan = live.plan
        if point == "content":
            reached = await self.wait_for(live, "content", lambda info: info.last_event_seq >= plan.chunks // 3, 10)
        elif point == "tool":
            reached = await self.wait_for(live, "a tool call", lambda info: bool(info.tool_calls_running), 10)
        else:  # a stop issued, then the cut before it is confirmed
            live.stopped = True
            self.group.start_soon(self._stop, live.session_id)
            reached = await self.wait_for(live, "stopping", lambda info: info.state in STOPPING_OR_AFTER, 10)
        if reached:
            self.cuts[f"{kind}@{point}"] += 1
            await self.cut(live, kind)

    async def _stop(self, session_id: str) -> None:
        request = wire.ctl.StopSessionRequest(session_id=session_id, reason="property test")
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.control.StopSession(request, timeout=SESSION_END_S)

    async def finish(self, prefix: str) -> dict[str, list[dict[str, Any]]]:
        """Wait for the sessions whose id starts with `prefix` (one example's) to end; their journals."""
        journals = {}
        mine = [live for sid, live in self.sessions.items() if sid.startswith(prefix)]
        with anyio.fail_after(SESSION_END_S):
            for live in mine:
                await live.done.wait()
        for live in mine:
            await live.proxy.aclose()
            request = wire.ctl.WatchSessionRequest(session_id=live.session_id, from_seq=1)
            journals[live.session_id] = [
                event_dict(answer.event) async for answer in self.control.WatchSession(request, timeout=10)
            ]
        return journals


STOPPING_OR_AFTER = {
    wire.ctl.SESSION_STATE_STOPPING,
    wire.ctl.SESSION_STATE_STOPPED,
    wire.ctl.SESSION_STATE_FINISHED,
}


class ResumeMachine(RuleBasedStateMachine):
    world: World  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.example = ResumeMachine.examples
        ResumeMachine.examples += 1

    examples = 0

    def call(self, function: Any, *args: Any) -> Any:
        return anyio.from_thread.run(function, *args)

    @initialize(plan=st.sampled_from(PLANS))
    def first_session(self, plan: Plan) -> None:
        self.start_session(plan)

    @precondition(lambda self: self.count < MAX_SESSIONS)
    @rule(plan=st.sampled_from(PLANS))
    def start_session(self, plan: Plan) -> None:
        self.count += 1
        self.call(self.world.start, f"prop-{self.example}-{self.count}", plan)

    def _pick(self, index: int) -> Live | None:
        mine = [live for sid, live in self.world.sessions.items() if sid.startswith(f"prop-{self.example}-")]
        running = [live for live in mine if not live.done.is_set()]
        return running[index % len(running)] if running else None

    @rule(index=st.integers(0, 2), kind=st.sampled_from(["reset", "reset", "blackhole"]),
          point=st.sampled_from(["content", "tool", "stop"]))  # fmt: skip
    def cut_link(self, index: int, kind: str, point: str) -> None:
        live = self._pick(index)
        if live is None or (point == "tool" and not live.plan.tools):
            return
        if point == "stop" and live.stopped:
            point = "content"
        self.call(self.world.cut_at, live, point, kind)

    @invariant()
    def no_call_ran_twice(self) -> None:
        assert self.world.tools.executed_twice() == 0, self.world.tools.starts

    def teardown(self) -> None:
        journals = self.call(self.world.finish, f"prop-{self.example}-")
        for sid, events in journals.items():
            self.check_session(self.world.sessions[sid], events)

    def check_session(self, live: Live, events: list[dict[str, Any]]) -> None:
        sid, result = live.session_id, live.result
        context = f"{sid} {live.plan} faults={live.faults} stopped={live.stopped} result={result}"
        check = check_journal(sid, events, None)
        assert check.final_state in TERMINAL, f"no recorded outcome: {check.states} ({context})"
        assert check.duplicates == 0 and check.seq_gaps == 0, f"{check.problems} ({context})"
        text = "".join(event["content"].get("text", "") for event in events if "content" in event)
        expected = expected_content(live.plan)
        if check.final_state == "SESSION_STATE_FINISHED":
            assert text == expected, f"content differs ({context})"
        else:
            assert live.stopped, f"ended {check.final_state} without a stop ({context})"
            assert expected.startswith(text), f"content is not a prefix of the answer ({context})"
        executed = self.world.tools.calls_of(sid)
        assert set(check.tool_calls) == executed, f"journal {check.tool_calls}, tool side {executed} ({context})"
        assert self.world.tools.executed_twice(sid) == 0


TERMINAL = {"SESSION_STATE_FINISHED", "SESSION_STATE_STOPPED"}


@contextlib.asynccontextmanager
async def world() -> AsyncIterator[World]:
    from scripts.chaos.tools import chaos_registry

    holder: dict[str, World] = {}
    tools = chaos_registry(lambda *event: holder["world"].sink(*event), default_registry().copy())
    async with running_dispatcher(dispatcher_config(), tools) as dispatcher:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel, anyio.create_task_group() as group:
            holder["world"] = World(dispatcher, group, wire.SessionControlServiceStub(channel))
            yield holder["world"]


@pytest.mark.timeout(600)
async def test_sessions_survive_random_cuts_with_every_event_exactly_once() -> None:
    async with world() as w:
        ResumeMachine.world = w
        ResumeMachine.examples = 0
        await anyio.to_thread.run_sync(lambda: run_state_machine_as_test(ResumeMachine, settings=MACHINE_SETTINGS))
        # The examples did exercise resume: cuts of both kinds landed, and sessions resumed.
        resumed = sum(1 for live in w.sessions.values() if live.result is not None and live.result.resumes)
        kinds = {cut.split("@")[0] for cut in w.cuts}
        assert kinds == {"reset", "blackhole"} and resumed, (dict(w.cuts), resumed)
