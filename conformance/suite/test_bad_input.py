"""INPUT: bad packets get a defined answer — an ErrorSignal and the stream goes on, or a status."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from conformance.client import CHAT_STREAM_METHOD, DEFAULT_MAX_RECEIVE_BYTES, StreamEnded, session_id
from conformance.plugin import requirement
from conformance.suite.steps import echo_round_trip, finish_ok
from conformance.target import Target
from shared import wire


@requirement("INPUT-001")
async def test_a_packet_without_payload_gets_missing_payload(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("input-001"))
        await session.send(wire.pb.UpstreamPacket(seq=2))
        error = (await session.expect("error", "ErrorSignal MISSING_PAYLOAD")).error
        assert (error.code, error.seq) == ("MISSING_PAYLOAD", 2), (
            f"expected ErrorSignal MISSING_PAYLOAD about seq 2, got code {error.code!r} seq {error.seq}"
        )
        await echo_round_trip(session, 3, "after-missing", "after a packet without payload")
        await finish_ok(session, 4, "a session after a packet without payload")


@requirement("INPUT-002")
@pytest.mark.parametrize("case", ["hello-not-first", "duplicate-hello"])
async def test_a_misplaced_hello_is_answered_and_ignored(target: Target, case: str) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        if case == "hello-not-first":
            await session.content(1, "no hello first")
            expected = "HELLO_NOT_FIRST"
        else:
            await session.hello(session_id("input-002"))
            expected = "DUPLICATE_HELLO"
        await session.send(wire.pb.UpstreamPacket(seq=2, hello=wire.pb.Hello(session_id=session_id("other"))))
        error = (await session.expect("error", f"ErrorSignal {expected}")).error
        assert error.code == expected, f"expected ErrorSignal {expected}, got {error.code!r}"
        await echo_round_trip(session, 3, "after-hello", f"after {case}")
        await finish_ok(session, 4, f"a session after {case}")


@requirement("INPUT-003")
async def test_a_stop_confirm_without_a_stop_is_answered(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("input-003"))
        confirm = wire.pb.StopConfirm(stop_id="no-such-stop", last_seq=1)
        await session.send(wire.pb.UpstreamPacket(seq=2, stop_confirm=confirm))
        error = (await session.expect("error", "ErrorSignal UNEXPECTED_STOP_CONFIRM")).error
        assert error.code == "UNEXPECTED_STOP_CONFIRM", f"expected UNEXPECTED_STOP_CONFIRM, got {error.code!r}"
        await echo_round_trip(session, 3, "after-confirm", "after an unexpected StopConfirm")
        await finish_ok(session, 4, "a session after an unexpected StopConfirm")


@requirement("INPUT-004")
@pytest.mark.parametrize("first", [True, False], ids=["first-packet", "after-hello"])
async def test_bytes_that_are_not_a_packet_are_invalid_argument(target: Target, first: bool) -> None:
    wait_s = target.options.wait_s
    async with target.channel() as channel:
        # A call without serializers: the test writes bytes.
        call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(CHAT_STREAM_METHOD)(
            metadata=target.options.metadata() or None
        )
        if not first:
            hello = wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id=session_id("input-004")))
            await asyncio.wait_for(call.write(hello.SerializeToString()), wait_s)
        try:
            await asyncio.wait_for(call.write(b"\xff\xff\xff\xff not protobuf"), wait_s)
            while await asyncio.wait_for(call.read(), wait_s) is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError:
            pass
        except TimeoutError:
            raise AssertionError(f"the stream did not end within {wait_s} s of bytes that are not a packet") from None
        code = await asyncio.wait_for(call.code(), wait_s)
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (
            f"bytes that are not an UpstreamPacket: expected INVALID_ARGUMENT, got {code.name} {await call.details()!r}"
        )


@requirement("INPUT-005")
async def test_an_oversized_message_ends_only_its_stream(target: Target) -> None:
    big_channel = [("grpc.max_send_message_length", -1)]
    async with target.channel(big_channel) as channel:
        session = target.session(channel)
        await session.send(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id=session_id("input-005"))))
        first = await session.recv()
        if first is not None and first.WhichOneof("signal") == "welcome":
            limit = first.welcome.limits.max_receive_message_bytes
            if limit == 0:
                pytest.skip("the target advertises no upstream message limit (Welcome.limits: 0 = no limit)")
        else:  # no Welcome: grpc's default limit
            limit = DEFAULT_MAX_RECEIVE_BYTES
        try:
            await session.content(2, "x" * (limit + 1024))
        except StreamEnded:
            pass  # the target may end the stream while the message is still being written
        await session.expect_status(grpc.StatusCode.RESOURCE_EXHAUSTED, f"a {limit + 1024}-byte packet (limit {limit})")
        survivor = target.session(channel)
        await survivor.hello(session_id("input-005-after"))
        await echo_round_trip(survivor, 2, "after-oversized", "a new session on the same connection")
        await finish_ok(survivor, 3, "a session after an oversized message")
