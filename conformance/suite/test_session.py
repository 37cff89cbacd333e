"""SESS: a whole session, how it ends, and its response metadata."""

from __future__ import annotations

import grpc
import pytest

from conformance.client import session_id
from conformance.plugin import requirement
from conformance.suite.steps import ECHO_ARGS, finish_ok, tool_error_name
from conformance.target import Target
from shared import wire


@requirement("SESS-001")
async def test_a_full_session_finishes_ok(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("sess-001"))
        await session.thought(2, "the user wants their words echoed")
        await session.content(3, "Let me check. ")
        await session.tool_call(4, "echo", ECHO_ARGS, call_id="echo-1")
        result = await session.expect_result("echo-1", "the echo tool's result")
        assert not result.HasField("error"), f"echo failed: {tool_error_name(result)} {result.error.message}"
        await session.content(5, "You said: conformance.")
        await finish_ok(session, 6, "a full session (Hello, thought, content, tool call, is_finish, half-close)")


@requirement("SESS-002")
async def test_trailers_name_the_session_and_its_state(target: Target) -> None:
    sid = session_id("sess-002")
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(sid)
        await session.content(2, "Hello.")
        ending = await finish_ok(session, 3, "a finished session")
        assert ending.trailers.get("x-session-id") == sid, f"trailer x-session-id should be {sid!r}: {ending.trailers}"
        assert ending.trailers.get("x-session-state") == "FINISHED", (
            f"trailer x-session-state should be FINISHED: {ending.trailers}"
        )


@requirement("SESS-003")
async def test_a_packet_naming_another_session_ends_the_stream(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("sess-003"))
        await session.content(2, "mine", session=session_id("someone-else"))
        await session.expect_status(grpc.StatusCode.INVALID_ARGUMENT, "a packet naming another session id")


@requirement("SESS-004")
@pytest.mark.parametrize(("code", "state"), [("AGENT_ERROR", "FAILED"), ("CANCELLED", "CANCELLED")])
async def test_an_upstream_error_ends_the_session(target: Target, code: str, state: str) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id(f"sess-004-{state.lower()}"))
        await session.content(2, "partial answer")
        error = wire.pb.ErrorSignal(code=code, message="the conformance kit ends this session")
        await session.send(wire.pb.UpstreamPacket(seq=3, error=error))
        await session.half_close()
        ending = await session.finish()
        assert ending.trailers.get("x-session-state") == state, (
            f"after an upstream ErrorSignal {code} the session should end {state}; {ending.describe()}"
        )
