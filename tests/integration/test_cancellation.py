"""Every way a session or a tool call is cut short, each with its own test, against a real
in-process dispatcher and real channels (the process-level paths, a second signal and the
commander's Ctrl-C, are in tests/e2e/test_cancellation.py).

Each test checks that the call ended with a recorded reason, that the session's outcome was
recorded once, and that nothing is left running.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import grpc
import pytest

from commander.models import ScriptedAgent
from commander.session import run_session
from dispatcher.app import Dispatcher
from shared import wire
from shared.model import SessionState
from tests.conftest import (
    WAIT_S,
    Gate,
    RawSession,
    commander_config,
    gated_tools,
    running_dispatcher,
    stubborn_tools,
    test_config,
    wait_until,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def dropped_events(d: Dispatcher, session_id: str) -> list[wire.pb.ToolCallResult]:
    journal = d.sessions.registry.ended_journal(session_id)
    assert journal is not None, f"no journal kept for {session_id}"
    events = [journal.event(seq) for seq in range(journal.first_seq, journal.next_seq)]
    return [e.tool_result_dropped for e in events if e is not None and e.HasField("tool_result_dropped")]


async def ended(d: Dispatcher, session_id: str) -> Any:
    await wait_until(lambda: d.sessions.registry.get_ended(session_id) is not None, f"{session_id} recorded")
    return d.sessions.registry.get_ended(session_id)


async def start_gated_call(
    d: Dispatcher, channel: grpc.aio.Channel, gate: Gate, session_id: str, **kw: Any
) -> RawSession:
    raw = RawSession(channel, **kw)
    await raw.hello(session_id)
    await raw.tool_call(2, "gate_tool", call_id="g1")
    with anyio.fail_after(WAIT_S):
        await gate.started.wait()
    return raw


async def test_client_cancel_mid_tool_cancels_the_call_with_its_reason() -> None:
    gate = Gate()
    async with running_dispatcher(tools=gated_tools(gate)) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = await start_gated_call(d, ch, gate, "walks-off")
        raw.call.cancel()
        with anyio.fail_after(WAIT_S):
            await gate.cancelled.wait()
        outcome = (await ended(d, "walks-off")).outcome
        assert outcome.state is SessionState.CANCELLED
        (dropped,) = dropped_events(d, "walks-off")
        assert dropped.call_id == "g1" and dropped.error.code == wire.pb.TOOL_ERROR_CODE_CANCELLED
        assert "cancelled or disconnected" in dropped.error.message, dropped


async def test_an_operator_stop_mid_tool_cancels_the_call_and_is_confirmed() -> None:
    gate = Gate()
    async with running_dispatcher(tools=gated_tools(gate)) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = await start_gated_call(d, ch, gate, "stopped-mid-tool")
        stopping = asyncio.ensure_future(
            wire.SessionControlServiceStub(ch).StopSession(
                wire.ctl.StopSessionRequest(session_id="stopped-mid-tool", reason="enough")
            )
        )
        stop = (await raw.recv_kind("stop")).stop
        with anyio.fail_after(WAIT_S):
            await gate.cancelled.wait()  # cancelled at the stop, before the confirmation
        await raw.send(wire.pb.UpstreamPacket(seq=3, stop_confirm=wire.pb.StopConfirm(stop_id=stop.stop_id)))
        answer = await asyncio.wait_for(stopping, WAIT_S)
        assert answer.result == wire.ctl.STOP_RESULT_CONFIRMED
        (dropped,) = dropped_events(d, "stopped-mid-tool")
        assert dropped.error.code == wire.pb.TOOL_ERROR_CODE_CANCELLED and "OPERATOR" in dropped.error.message


async def test_the_clients_deadline_mid_tool_cancels_the_call() -> None:
    gate = Gate()
    async with running_dispatcher(tools=gated_tools(gate)) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = RawSession(ch)
        raw.call = wire.AgentInteractionStub(ch).ChatStream(timeout=1.0)  # the deadline grpc enforces
        await raw.hello("deadline")
        await raw.tool_call(2, "gate_tool", call_id="g1")
        with anyio.fail_after(WAIT_S):
            await gate.cancelled.wait()  # the deadline passed: grpc cancelled the call
        assert (await ended(d, "deadline")).outcome.state is SessionState.CANCELLED
        code, _, _ = await raw.status()
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_shutdown_mid_tool_stops_the_session_and_cancels_the_call() -> None:
    gate = Gate()
    async with running_dispatcher(tools=gated_tools(gate)) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = await start_gated_call(d, ch, gate, "at-shutdown")
        d.request_shutdown("SIGTERM (test)")
        stop = (await raw.recv_kind("stop")).stop
        assert stop.code == wire.pb.STOP_CODE_SHUTDOWN
        with anyio.fail_after(WAIT_S):
            await gate.cancelled.wait()
        await raw.send(wire.pb.UpstreamPacket(seq=3, stop_confirm=wire.pb.StopConfirm(stop_id=stop.stop_id)))
        outcome = (await ended(d, "at-shutdown")).outcome
        assert outcome.state is SessionState.STOPPED and outcome.stop_confirmed


async def test_a_stubborn_tool_neither_holds_its_session_slot_nor_outlives_shutdown_bounds() -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    config = test_config(server={"max_sessions": 1})
    try:
        async with running_dispatcher(config, stubborn_tools(entered, release)) as d:
            async with grpc.aio.insecure_channel(d.address) as ch:
                raw = RawSession(ch)
                await raw.hello("stubborn")
                await raw.tool_call(2, "stubborn", call_id="s1")
                with anyio.fail_after(WAIT_S):
                    await entered.wait()
                raw.call.cancel()  # the caller leaves; the tool ignores its cancellation
                outcome = (await ended(d, "stubborn")).outcome
                assert outcome.state is SessionState.CANCELLED
                (dropped,) = dropped_events(d, "stubborn")
                assert "abandoned" in dropped.error.message
                # The only session slot is free again: a new session is admitted.
                fresh = RawSession(ch)
                assert (await fresh.hello("next")).session_id == "next"
                fresh.call.cancel()
            assert len(d.sessions.abandoned) == 1
        # serve() returned although the tool still runs: shutdown gave up on it within its bounds.
        assert not release.is_set() and len(d.sessions.abandoned) == 1
    finally:
        release.set()
    await wait_until(lambda: not d.sessions.abandoned, "the released tool ended")


async def test_a_pool_stream_leaving_idle_leaves_the_pool_and_mid_session_cancels_it() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch:
        config = commander_config(d.address)
        idle_cancel = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def idle_pool_stream() -> None:
                await run_session(
                    ScriptedAgent(), "", channel=ch, config=config, cancel=idle_cancel, await_assignment=True
                )

            tg.start_soon(idle_pool_stream)
            await wait_until(lambda: d.sessions.pool.free_count == 1, "the pool stream registered")
            idle_cancel.set()
        await wait_until(lambda: d.sessions.pool.free_count == 0, "the idle stream left the pool")

        busy = RawSession(ch)
        await busy.send(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(agent_name="pool", awaits_assignment=True)))
        await wait_until(lambda: d.sessions.pool.free_count == 1, "the raw pool stream registered")
        started = wire.SessionControlServiceStub(ch).StartSession(
            wire.ctl.StartSessionRequest(session_id="pooled", input_text="hi")
        )
        assignment = await busy.recv_kind("assignment")
        assert assignment.assignment.session_id == "pooled"
        busy.call.cancel()  # the pool commander goes away mid-session
        outcome = (await ended(d, "pooled")).outcome
        assert outcome.state is SessionState.CANCELLED
        started.cancel()


async def test_a_stop_overtakes_results_a_stalled_client_has_not_read_and_watch_matches_the_wire() -> None:
    """The client stops reading while big results queue; an operator stop then goes out ahead of
    every result still queued; the results a watcher sees are exactly those the client got."""
    config = test_config(session={"outbox_size": 4, "max_concurrent_tool_calls": 4})
    stalled = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 64 * 1024)]
    payload = '{"blob": "' + "x" * 60_000 + '"}'
    async with (
        running_dispatcher(config) as d,
        grpc.aio.insecure_channel(d.address) as ch,
        grpc.aio.insecure_channel(d.address, options=stalled) as stalled_channel,
    ):
        raw = RawSession(stalled_channel)
        await raw.hello("stalled")
        calls = 0
        pending: asyncio.Future[None] | None = None
        for seq in range(2, 200):  # until HTTP/2 flow control pushes back on the client
            # Shielded: cancelling a call.write() would cancel the whole call.
            write = asyncio.ensure_future(raw.call.write(_echo(seq, f"c{seq}", payload)))
            calls += 1
            try:
                await asyncio.wait_for(asyncio.shield(write), 0.5)
            except TimeoutError:
                pending = write  # blocked: it completes once the dispatcher reads again
                break
        assert pending is not None, "the client was never pushed back"
        handle = d.sessions.registry.get_open("stalled")
        assert handle is not None
        await wait_until(lambda: len(handle.outbox) >= 4, "results queued in the outbox")  # type: ignore[attr-defined]
        stub = wire.SessionControlServiceStub(ch)
        stopping = asyncio.ensure_future(
            stub.StopSession(wire.ctl.StopSessionRequest(session_id="stalled", reason="x"))
        )
        await wait_until(lambda: handle.pending_stop is not None or stopping.done(), "the stop was decided")
        assert not stopping.done(), (stopping.exception() or stopping.result(), handle.info())
        received: list[wire.pb.DownstreamPacket] = []
        while True:  # the client reads again
            packet = await raw.recv()
            assert packet is not grpc.aio.EOF, "ended before the stop arrived"
            received.append(packet)
            if packet.HasField("stop"):
                break
        await asyncio.wait_for(pending, WAIT_S)
        await raw.send(wire.pb.UpstreamPacket(seq=300, stop_confirm=wire.pb.StopConfirm(stop_id=packet.stop.stop_id)))
        rest = await raw.drain()
        assert all(p.HasField("ack") for p in rest), [p.WhichOneof("signal") for p in rest]  # only acks after it
        assert (await asyncio.wait_for(stopping, WAIT_S)).result == wire.ctl.STOP_RESULT_CONFIRMED
        got = [p.tool_result.call_id for p in received if p.HasField("tool_result")]
        watched = [
            r.event.tool_result.call_id
            async for r in stub.WatchSession(wire.ctl.WatchSessionRequest(session_id="stalled"))
            if r.event.HasField("tool_result")
        ]
        assert watched == got  # watch shows no result the client did not get
        dropped = {e.call_id for e in dropped_events(d, "stalled")}
        assert dropped and not dropped & set(got)  # the rest are recorded as dropped, never as results
        assert len(got) < calls


def _echo(seq: int, call_id: str, args: str) -> wire.pb.UpstreamPacket:
    request = wire.pb.ToolCallRequest(tool_name="echo", arguments_json=args, call_id=call_id)
    return wire.pb.UpstreamPacket(seq=seq, tool_call=request)
