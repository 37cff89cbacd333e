"""AFTER: packets after is_finish or after a stop are dropped, never run."""

from __future__ import annotations

import grpc

from conformance.client import describe, session_id
from conformance.plugin import requirement
from conformance.suite.steps import assert_status, stop_content
from conformance.target import Target


@requirement("AFTER-001")
async def test_a_tool_call_after_the_finish_never_runs(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("after-001"))
        await session.content(2, "done", is_finish=True)
        await session.tool_call(3, "echo", {"late": True}, call_id="late")
        await session.half_close()
        ending = await session.finish()
        results = [describe(p) for p in session.seen if p.WhichOneof("signal") == "tool_result"]
        assert not results, f"a tool call sent after is_finish ran: {results}"
        assert_status(ending, grpc.StatusCode.OK, "a finished session with a late packet")


@requirement("AFTER-002")
async def test_a_packet_after_the_finish_is_answered(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("after-002"))
        await session.content(2, "done", is_finish=True)
        await session.content(3, "one more thing")
        error = (await session.expect("error", "ErrorSignal PACKET_AFTER_FINISH")).error
        assert (error.code, error.seq) == ("PACKET_AFTER_FINISH", 3), (
            f"expected ErrorSignal PACKET_AFTER_FINISH about seq 3, got code {error.code!r} seq {error.seq}"
        )
        await session.half_close()
        await session.finish()


@requirement("AFTER-003")
async def test_a_tool_call_after_the_stop_never_runs(target: Target) -> None:
    stop_word = target.require_stop_word()
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("after-003"))
        await session.content(2, stop_content(stop_word))
        stop = (await session.expect("stop", "a StopSignal for the stop word")).stop
        at = len(session.seen) - 1
        await session.tool_call(3, "echo", {"after": "stop"}, call_id="after-stop")
        await session.stop_confirm(4, stop)
        await session.half_close()
        await session.finish()
        after = [describe(p) for p in session.seen[at + 1 :] if p.WhichOneof("signal") != "ack"]
        assert not after, f"only Acks may follow the StopSignal; after it came {after}"
