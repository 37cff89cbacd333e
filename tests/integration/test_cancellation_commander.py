"""Every way the commander side ends a session early, against a real in-process dispatcher.

`run_session(..., cancel=event)` is the clean way (the dispatcher is told in-band and records
why); cancelling the task that awaits `run_session` is the abrupt one (the RPC is reset).
"""

from __future__ import annotations

import anyio
import grpc
import pytest

from commander import AgentContext, run_session
from shared.model import SessionState
from tests.conftest import WAIT_S, Gate, commander_config, gated_tools, running_dispatcher, wait_until

pytestmark = pytest.mark.anyio

CANCELLED_HERE = "cancelled by the commander"


async def test_a_cancel_mid_tool_call_cancels_the_agent_and_the_dispatcher_records_why() -> None:
    gate = Gate()
    cancel = anyio.Event()
    agent_cancelled = anyio.Event()
    returned: list[object] = []

    async def agent(ctx: AgentContext, prompt: str) -> None:
        try:
            returned.append(await ctx.call_tool("gate_tool", {}))
        except anyio.get_cancelled_exc_class():
            agent_cancelled.set()
            raise

    async def cancel_once_the_tool_runs() -> None:
        await gate.started.wait()
        cancel.set()

    async with running_dispatcher(tools=gated_tools(gate)) as dispatcher:
        registry = dispatcher.sessions.registry
        async with grpc.aio.insecure_channel(dispatcher.address) as channel, anyio.create_task_group() as tg:
            tg.start_soon(cancel_once_the_tool_runs)
            with anyio.fail_after(WAIT_S):
                result = await run_session(
                    agent, "", channel=channel, config=commander_config(dispatcher.address), cancel=cancel
                )
        with anyio.fail_after(WAIT_S):
            await gate.cancelled.wait()  # the dispatcher cancelled the running tool for us
        await wait_until(lambda: registry.get_ended(result.session_id) is not None, "the session recorded")
        ended = registry.get_ended(result.session_id)

    assert agent_cancelled.is_set() and not returned
    assert (result.state, result.reason, result.status_code) == (SessionState.CANCELLED, CANCELLED_HERE, "CANCELLED")
    assert result.tool_calls == 1 and result.pending_at_stop == () and result.stop is None
    assert ended is not None
    assert (ended.outcome.state, ended.outcome.ended_by, ended.outcome.reason) == (
        SessionState.CANCELLED,
        "commander",
        CANCELLED_HERE,
    )


async def test_a_cancel_while_waiting_in_the_pool_leaves_the_pool() -> None:
    cancel = anyio.Event()
    started: list[str] = []

    async def agent(ctx: AgentContext, prompt: str) -> None:
        started.append(prompt)

    async with running_dispatcher() as dispatcher:
        pool = dispatcher.sessions.pool
        async with grpc.aio.insecure_channel(dispatcher.address) as channel, anyio.create_task_group() as tg:
            results = []

            async def pool_stream() -> None:
                config = commander_config(dispatcher.address)
                results.append(
                    await run_session(agent, "", channel=channel, config=config, cancel=cancel, await_assignment=True)
                )

            tg.start_soon(pool_stream)
            await wait_until(lambda: pool.free_count == 1, "the stream waiting in the pool")
            cancel.set()
        await wait_until(lambda: pool.free_count == 0, "the stream gone from the pool")

    [result] = results
    assert (result.state, result.reason, result.assigned) == (SessionState.CANCELLED, CANCELLED_HERE, None)
    assert not started and not result.compat_mode


async def test_cancelling_the_caller_mid_tool_call_tells_the_dispatcher_in_band() -> None:
    """run_session cancelled by its caller: the dispatcher is told (ErrorSignal CANCELLED) before
    the call goes down, so it does not hold the session for a resume that will never come."""
    gate = Gate()
    session_id = "cancelled-caller"

    async def agent(ctx: AgentContext, prompt: str) -> None:
        await ctx.call_tool("gate_tool", {})

    async with running_dispatcher(tools=gated_tools(gate)) as dispatcher:
        registry = dispatcher.sessions.registry
        async with grpc.aio.insecure_channel(dispatcher.address) as channel, anyio.create_task_group() as tg:

            async def cancel_once_the_tool_runs() -> None:
                await gate.started.wait()
                caller.cancel()

            tg.start_soon(cancel_once_the_tool_runs)
            with anyio.CancelScope() as caller:
                config = commander_config(dispatcher.address)
                await run_session(agent, "", channel=channel, config=config, session_id=session_id)
        assert caller.cancelled_caught  # run_session let its caller's cancellation through
        with anyio.fail_after(WAIT_S):
            await gate.cancelled.wait()
        await wait_until(lambda: registry.get_ended(session_id) is not None, "the session recorded")
        ended = registry.get_ended(session_id)

    assert ended is not None
    assert (ended.outcome.state, ended.outcome.ended_by) == (SessionState.CANCELLED, "commander")
    assert "cancelled by the commander" in ended.outcome.reason
