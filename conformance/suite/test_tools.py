"""TOOL: tool calls matched by call_id, running concurrently, and tool errors that never end the stream.

The kit needs two tools of the target (see docs/contract.md, "What the kit needs"): `echo`
(returns its arguments object) and `sleep` ({"seconds": n}: waits n seconds).
"""

from __future__ import annotations

import time

import pytest

from conformance.client import session_id
from conformance.plugin import requirement
from conformance.suite.steps import ECHO_ARGS, echo_round_trip, finish_ok, parse_json, tool_error_name
from conformance.target import Target

UNKNOWN_TOOL = "conformance-no-such-tool"


@requirement("TOOL-001")
async def test_a_result_echoes_its_call_id(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("tool-001"))
        await session.tool_call(2, "echo", ECHO_ARGS, call_id="kit-call-7")
        result = await session.expect_result("kit-call-7", "the echo result")
        assert result.tool_name == "echo", f"result tool_name should be 'echo', got {result.tool_name!r}"
        assert not result.HasField("error"), f"echo failed: {tool_error_name(result)} {result.error.message}"
        assert parse_json(result.result_json) == ECHO_ARGS, f"echo returned {result.result_json!r}, not {ECHO_ARGS}"
        await finish_ok(session, 3, "a session with one tool call")


@requirement("TOOL-002")
async def test_calls_with_their_own_ids_run_concurrently(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        welcome = await session.hello(session_id("tool-002"))
        if welcome.limits.max_concurrent_tool_calls == 1:
            pytest.skip("the target runs one tool call at a time (Welcome.limits.max_concurrent_tool_calls = 1)")
        await session.tool_call(2, "sleep", {"seconds": 0.5}, call_id="slow")
        await session.tool_call(3, "echo", {"n": 2}, call_id="fast")
        first = (await session.expect("tool_result", "the fast echo call's result")).tool_result
        assert first.call_id == "fast", (
            f"the echo call (call_id 'fast') should overtake the 0.5 s sleep call; first result is {first.call_id!r}"
        )
        await session.expect_result("slow", "the slow sleep call's result, after the fast one")
        await finish_ok(session, 4, "a session with two concurrent tool calls")


@requirement("TOOL-003")
async def test_an_unknown_tool_is_a_tool_error(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("tool-003"))
        await session.tool_call(2, UNKNOWN_TOOL, {}, call_id="u1")
        result = await session.expect_result("u1", f"a result for the call to {UNKNOWN_TOOL!r}")
        assert tool_error_name(result) == "UNKNOWN_TOOL", f"expected error UNKNOWN_TOOL, got {tool_error_name(result)}"
        await echo_round_trip(session, 3, "after-unknown", "after an unknown tool")
        await finish_ok(session, 4, "a session after an unknown tool")


@requirement("TOOL-004")
@pytest.mark.parametrize(
    ("tool", "arguments_json"),
    [("echo", "{not json"), ("echo", "[1, 2]"), ("sleep", '{"seconds": "soon"}')],
    ids=["invalid-json", "not-an-object", "schema-failure"],
)
async def test_invalid_arguments_are_a_tool_error(target: Target, tool: str, arguments_json: str) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("tool-004"))
        await session.tool_call(2, tool, arguments_json, call_id="bad-args")
        result = await session.expect_result("bad-args", f"a result for {tool} with arguments {arguments_json!r}")
        assert tool_error_name(result) == "INVALID_ARGUMENTS", (
            f"{tool} with arguments {arguments_json!r}: expected error INVALID_ARGUMENTS, got {tool_error_name(result)}"
        )
        await echo_round_trip(session, 3, "after-bad-args", "after invalid arguments")
        await finish_ok(session, 4, "a session after invalid arguments")


@requirement("TOOL-005")
async def test_timeout_ms_bounds_the_call(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("tool-005"))
        started = time.monotonic()
        await session.tool_call(2, "sleep", {"seconds": 30}, call_id="bounded", timeout_ms=200)
        result = await session.expect_result("bounded", "the result of sleep 30 s with timeout_ms 200")
        elapsed = time.monotonic() - started
        assert tool_error_name(result) == "TIMEOUT", f"expected error TIMEOUT, got {tool_error_name(result)}"
        assert elapsed < 10, f"the 200 ms timeout took {elapsed:.1f} s"
        await finish_ok(session, 3, "a session after a timed-out call")


@requirement("TOOL-006")
async def test_a_duplicate_call_id_is_rejected_and_not_run(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("tool-006"))
        await session.tool_call(2, "echo", {"n": 1}, call_id="dup")
        await session.expect_result("dup", "the first call's result")
        await session.tool_call(3, "echo", {"n": 2}, call_id="dup")
        error = (await session.expect("error", "ErrorSignal DUPLICATE_CALL_ID for the reused call_id")).error
        assert (error.code, error.call_id) == ("DUPLICATE_CALL_ID", "dup"), (
            f"expected ErrorSignal DUPLICATE_CALL_ID for call_id 'dup', got code {error.code!r} call_id "
            f"{error.call_id!r}"
        )
        # The next result must be this echo's: the duplicate never ran.
        await echo_round_trip(session, 4, "after-dup", "after a duplicate call_id")
        await finish_ok(session, 5, "a session after a duplicate call_id")
