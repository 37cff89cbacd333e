"""COMPAT: a seed-era client — built from the original contract: no Hello, session_id, seq or call_id."""

from __future__ import annotations

import grpc

from conformance.client import session_id
from conformance.plugin import requirement
from conformance.suite.steps import ECHO_ARGS, assert_status, parse_json, tool_error_name
from conformance.target import Target

# Every packet below has seq 0 (unset), no session_id (unless the test says so) and no call_id.


@requirement("COMPAT-001")
async def test_a_seed_era_client_gets_a_working_session(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.thought(0, "echo the question")
        await session.tool_call(0, "echo", ECHO_ARGS)
        packet = await session.expect("tool_result", "the echo result of a seed-era client's call")
        result = packet.tool_result
        assert not result.HasField("error"), f"echo failed: {tool_error_name(result)} {result.error.message}"
        assert parse_json(result.result_json) == ECHO_ARGS, f"echo returned {result.result_json!r}"
        await session.content(0, "The answer.")
        await session.content(0, "", is_finish=True)
        await session.half_close()
        await session.expect_status(grpc.StatusCode.OK, "a seed-era session")


@requirement("COMPAT-002")
async def test_a_seed_era_client_is_told_its_session_id(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.thought(0, "hello")
        metadata = await session.initial_metadata()
        assert metadata.get("x-session-id"), f"no x-session-id in the initial metadata: {metadata}"
        await session.content(0, "", is_finish=True)
        await session.half_close()
        await session.expect_status(grpc.StatusCode.OK, "a seed-era session")


@requirement("COMPAT-003")
async def test_calls_without_call_id_get_results_in_request_order(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.tool_call(0, "sleep", {"seconds": 0.3})
        await session.tool_call(0, "echo", {"after": "sleep"})
        first = (await session.expect("tool_result", "the first result (the slow sleep call's)")).tool_result
        second = (await session.expect("tool_result", "the second result (the echo call's)")).tool_result
        order = [(first.tool_name, first.call_id), (second.tool_name, second.call_id)]
        assert order == [("sleep", "seq-1"), ("echo", "seq-2")], (
            f"results of calls without call_id must come in request order with ids seq-<seq>: got {order}"
        )
        await session.content(0, "", is_finish=True)
        await session.half_close()
        await session.expect_status(grpc.StatusCode.OK, "a seed-era session")


@requirement("COMPAT-004")
async def test_acks_of_an_unsequenced_session_count_packets(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.thought(0, "one")
        await session.content(0, "two")
        await session.content(0, "three")
        await session.content(0, "", is_finish=True)  # the fourth packet
        await session.half_close()
        ending = await session.finish()
        acks = [p.ack.seq for p in session.seen if p.WhichOneof("signal") == "ack"]
        assert acks and acks[-1] == 4, f"after 4 unsequenced packets and is_finish the last Ack must be 4: acks {acks}"
        assert_status(ending, grpc.StatusCode.OK, "a seed-era session")


@requirement("COMPAT-005")
async def test_a_session_id_sent_in_packets_is_the_session_id(target: Target) -> None:
    sid = session_id("compat-005")
    async with target.channel() as channel:
        session = target.session(channel)
        await session.thought(0, "hello", session=sid)
        metadata = await session.initial_metadata()
        assert metadata.get("x-session-id") == sid, f"packets named session {sid!r}; initial metadata: {metadata}"
        await session.content(0, "", is_finish=True, session=sid)
        await session.half_close()
        await session.expect_status(grpc.StatusCode.OK, "a seed-era session naming its session id")
