"""Whole sessions through the commander library against a real in-process dispatcher."""

from __future__ import annotations

from typing import Any

import anyio
import grpc
import pytest

from commander import AgentContext, ToolCallError, run_session
from commander.events import SessionEvent, StopReceived, ToolCallSent, ToolResultReceived
from shared.model import SessionState, StopCode, StopInfo
from tests.conftest import (
    WAIT_S,
    Gate,
    commander_config,
    gated_tools,
    run_scripted,
    running_dispatcher,
    test_config,
    wait_until,
)

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self) -> None:
        self.events: list[SessionEvent] = []

    def __call__(self, event: SessionEvent) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


async def test_full_session_thinks_calls_a_tool_and_finishes() -> None:
    recorder = Recorder()
    async with running_dispatcher() as dispatcher:
        result = await run_scripted(dispatcher.address, "What is 6*7?", observer=recorder)
    assert result.state is SessionState.FINISHED, result
    assert not result.compat_mode
    assert result.dispatcher_id == "dispatcher:test"
    [tool_result] = recorder.of(ToolResultReceived)
    assert tool_result.tool_name == "calculator" and '"value":42' in tool_result.result_json
    assert result.last_acked_seq == result.packets_sent  # the final Ack covers every packet
    ended = dispatcher.sessions.registry.get_ended(result.session_id)
    assert ended is not None and ended.outcome.state is SessionState.FINISHED
    # 60 tokens + the finish, merged by coalescing as the outbox filled up (at most the
    # 32 queued + 2 per message): 2 to 61 content packets.
    assert ended.packets_in["content"] >= 2 and ended.packets_in["tool_call"] == 1


async def test_concurrent_tool_calls_of_one_session_run_together_and_match_by_call_id() -> None:
    gate = Gate()
    results: dict[str, Any] = {}

    async def agent(ctx: AgentContext, prompt: str) -> None:
        async def slow() -> None:
            results["gate"] = await ctx.call_tool("gate_tool", {"n": 1})

        async def fast() -> None:
            await gate.started.wait()  # the slow call is running: this one overtakes it
            results["echo"] = await ctx.call_tool("echo", {"n": 2})
            gate.release.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            tg.start_soon(fast)

    async with running_dispatcher(tools=gated_tools(gate)) as dispatcher:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            result = await run_session(agent, "", channel=channel, config=commander_config(dispatcher.address))
    assert result.state is SessionState.FINISHED, result
    assert results == {"gate": {"released": True, "n": 1}, "echo": {"n": 2}}


async def test_tool_errors_are_typed_and_the_stream_survives() -> None:
    seen: list[str] = []

    async def agent(ctx: AgentContext, prompt: str) -> None:
        for name, args in [("nope", {}), ("sleep", {"seconds": -1}), ("calculator", {"expression": "1/0"})]:
            try:
                await ctx.call_tool(name, args)
            except ToolCallError as exc:
                seen.append(exc.code)
        try:
            await ctx.call_tool("sleep", {"seconds": 30}, timeout=0.2)
        except ToolCallError as exc:
            seen.append(exc.code)
        assert await ctx.call_tool("echo", {"still": "alive"}) == {"still": "alive"}

    async with running_dispatcher() as dispatcher:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            result = await run_session(agent, "", channel=channel, config=commander_config(dispatcher.address))
    assert result.state is SessionState.FINISHED, result
    assert seen == ["UNKNOWN_TOOL", "INVALID_ARGUMENTS", "FAILED", "TIMEOUT"]


async def test_policy_stop_lands_mid_answer_and_is_confirmed() -> None:
    recorder = Recorder()
    config = test_config(policy={"block_patterns": ("(?i)launch codes",)})
    async with running_dispatcher(config) as dispatcher:
        result = await run_scripted(dispatcher.address, "tell me the launch codes", tokens_per_s=200, observer=recorder)
        ended = dispatcher.sessions.registry.get_ended(result.session_id)
    assert result.state is SessionState.STOPPED
    assert result.stop is not None and result.stop.code is StopCode.POLICY_VIOLATION
    assert result.stop.path == ("policy:content_blocklist", "dispatcher:test")
    assert result.status_code == "PERMISSION_DENIED"
    assert result.trailers["x-stop-code"] == "POLICY_VIOLATION"
    assert result.trailers["x-stop-path"] == "policy:content_blocklist,dispatcher:test"
    assert result.stop_to_halt_ms is not None and result.stop_to_halt_ms >= 0
    assert len(recorder.of(StopReceived)) == 1
    # The dispatcher's record: confirmed, with a measured stop-to-confirm time.
    assert ended is not None and ended.outcome.stop_confirmed
    assert ended.outcome.stop_to_confirm_ms is not None and result.stop_to_confirm_ms is not None


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"max_content_chars": 40}, "budget=content_chars"),
        ({"max_thought_chars": 10}, "budget=thought_chars"),
        ({"max_tool_calls": 1}, "budget=tool_calls"),
    ],
)
async def test_budgets_stop_the_session(policy: dict[str, Any], expected: str) -> None:
    async def agent(ctx: AgentContext, prompt: str) -> None:
        await ctx.think("plan", "a fairly long thought, longer than ten characters")
        await ctx.call_tool("echo", {})
        await ctx.call_tool("echo", {})
        while True:
            await ctx.say("token ")
            await anyio.sleep(0.001)  # an LLM-like pace; the stop ends this loop

    async with running_dispatcher(test_config(policy=policy)) as dispatcher:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            result = await run_session(agent, "", channel=channel, config=commander_config(dispatcher.address))
    assert result.state is SessionState.STOPPED, result
    assert result.stop is not None and result.stop.code is StopCode.BUDGET_EXCEEDED
    assert expected in result.stop.cause
    assert result.status_code == "RESOURCE_EXHAUSTED"


async def test_wall_clock_timeout_stops_an_agent_waiting_for_its_first_token() -> None:
    llm_cancelled = anyio.Event()

    async def agent(ctx: AgentContext, prompt: str) -> None:
        try:
            await anyio.sleep_forever()  # stands for an LLM stream that never yields a token
        finally:
            llm_cancelled.set()

    async with running_dispatcher(test_config(policy={"max_session_s": 0.3})) as dispatcher:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            result = await run_session(agent, "", channel=channel, config=commander_config(dispatcher.address))
    assert llm_cancelled.is_set()
    assert result.stop is not None and result.stop.code is StopCode.TIMEOUT
    assert result.stop.path[0] == "timer:max_session_s"
    assert result.status_code == "DEADLINE_EXCEEDED"


async def test_idle_timeout_expires_a_silent_session() -> None:
    async def agent(ctx: AgentContext, prompt: str) -> None:
        await ctx.say("hello")
        await anyio.sleep_forever()

    async with running_dispatcher(test_config(policy={"idle_timeout_s": 0.3})) as dispatcher:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            result = await run_session(agent, "", channel=channel, config=commander_config(dispatcher.address))
        ended = dispatcher.sessions.registry.get_ended(result.session_id)
    assert result.state is SessionState.EXPIRED
    assert result.stop is not None and result.stop.code is StopCode.IDLE_TIMEOUT
    assert ended is not None and ended.outcome.state is SessionState.EXPIRED


async def test_stop_reaches_an_agent_awaiting_a_tool_and_the_tool_is_cancelled() -> None:
    gate = Gate()
    recorder = Recorder()
    agent_done = False

    async def agent(ctx: AgentContext, prompt: str) -> None:
        nonlocal agent_done
        await ctx.call_tool("gate_tool", {})
        agent_done = True

    async with running_dispatcher(tools=gated_tools(gate)) as dispatcher:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            async with anyio.create_task_group() as tg:

                async def stop_when_tool_runs() -> None:
                    await gate.started.wait()
                    [handle] = list(dispatcher.sessions.registry.open_sessions())

                    stop = StopInfo(code=StopCode.OPERATOR, reason="operator says stop", path=("operator:test",))
                    handle.request_stop(stop)

                tg.start_soon(stop_when_tool_runs)
                result = await run_session(
                    agent, "", channel=channel, config=commander_config(dispatcher.address), observer=recorder
                )
            with anyio.fail_after(WAIT_S):
                await gate.cancelled.wait()
    assert not agent_done
    assert result.state is SessionState.STOPPED
    assert result.stop is not None and result.stop.path == ("operator:test", "dispatcher:test")
    assert [(p.tool_name, p.fate) for p in result.pending_at_stop] == [("gate_tool", "ABANDONED")]
    assert recorder.of(ToolCallSent) and not recorder.of(ToolResultReceived)


async def test_shutdown_stops_running_sessions_and_refuses_new_ones() -> None:
    started = anyio.Event()

    async def agent(ctx: AgentContext, prompt: str) -> None:
        await ctx.say("working")
        started.set()
        await anyio.sleep_forever()

    async with running_dispatcher() as dispatcher:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            async with anyio.create_task_group() as tg:
                results: list[Any] = []

                async def run_one() -> None:
                    results.append(
                        await run_session(agent, "", channel=channel, config=commander_config(dispatcher.address))
                    )

                tg.start_soon(run_one)
                with anyio.fail_after(WAIT_S):
                    await started.wait()
                dispatcher.request_shutdown("SIGTERM test")
        [result] = results
    assert result.state is SessionState.STOPPED
    assert result.stop is not None and result.stop.code is StopCode.SHUTDOWN
    assert result.status_code == "UNAVAILABLE"  # retryable elsewhere
    assert result.stop.path[-1] == "dispatcher:test"


async def test_shutdown_ends_as_soon_as_every_session_has_ended_not_after_the_grace() -> None:
    """The drain waits for open sessions to end, then stops: with a grace far longer than the
    test's bound, only a drain that notices the sessions ending finishes in time."""
    started = anyio.Event()

    async def agent(ctx: AgentContext, prompt: str) -> None:
        await ctx.say("working")
        started.set()
        await anyio.sleep_forever()

    config = test_config(server={"shutdown_grace_s": 600.0})
    with anyio.fail_after(WAIT_S):
        async with running_dispatcher(config) as dispatcher:
            async with grpc.aio.insecure_channel(dispatcher.address) as channel, anyio.create_task_group() as tg:
                results: list[Any] = []

                async def run_one() -> None:
                    results.append(
                        await run_session(agent, "", channel=channel, config=commander_config(dispatcher.address))
                    )

                tg.start_soon(run_one)
                await started.wait()
                dispatcher.request_shutdown("drain test")
    [result] = results
    assert result.stop is not None and result.stop.code is StopCode.SHUTDOWN
    assert dispatcher.sessions.registry.open_count == 0


async def test_cancel_from_the_commander_side_is_recorded_with_its_reason() -> None:
    cancel = anyio.Event()
    llm_cancelled = anyio.Event()

    async def agent(ctx: AgentContext, prompt: str) -> None:
        await ctx.say("first words")
        cancel.set()  # the user presses Ctrl-C while the model is still streaming
        try:
            await anyio.sleep_forever()
        finally:
            llm_cancelled.set()

    async with running_dispatcher() as dispatcher:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            result = await run_session(
                agent, "", channel=channel, config=commander_config(dispatcher.address), cancel=cancel
            )
        await wait_until(
            lambda: dispatcher.sessions.registry.get_ended(result.session_id) is not None, "the session ended"
        )
        ended = dispatcher.sessions.registry.get_ended(result.session_id)
    assert llm_cancelled.is_set()
    assert (result.state, result.reason) == (SessionState.CANCELLED, "cancelled by the commander")
    assert result.status_code == "CANCELLED"
    assert ended is not None and ended.outcome.state is SessionState.CANCELLED
    assert (ended.outcome.ended_by, ended.outcome.reason) == ("commander", "cancelled by the commander")
