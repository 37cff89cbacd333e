"""Every malformed, oversized, out-of-order or conflicting input gets a defined answer,
and never disturbs another session (each test keeps a healthy bystander session)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import grpc
import pytest

from dispatcher.app import Dispatcher
from shared import wire
from shared.model import SessionState
from tests.conftest import WAIT_S, Gate, RawSession, gated_tools, running_dispatcher, test_config, wait_until

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def with_bystander(channel: grpc.aio.Channel) -> AsyncIterator[RawSession]:
    """A healthy session open across the test; it must still work afterwards."""
    bystander = RawSession(channel)
    await bystander.hello("bystander")
    yield bystander
    await bystander.tool_call(2, "echo", '{"alive":true}', call_id="b1")
    result = await bystander.recv_kind("tool_result")
    assert result.tool_result.result_json == '{"alive":true}', "the bystander session was disturbed"
    await bystander.content(3, "bye", is_finish=True)
    await bystander.call.done_writing()
    code, _, _ = await bystander.status()
    assert code is grpc.StatusCode.OK


async def fatal(raw: RawSession) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    await raw.drain()
    return await raw.status()


async def test_missing_payload_gets_an_error_packet_and_the_stream_goes_on() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        raw = RawSession(ch)
        await raw.hello()
        await raw.send(wire.pb.UpstreamPacket(seq=2))
        error = (await raw.recv_kind("error")).error
        assert (error.code, error.seq) == ("MISSING_PAYLOAD", 2)
        await raw.tool_call(3, "echo", '{"x":1}', call_id="c1")
        assert (await raw.recv_kind("tool_result")).tool_result.result_json == '{"x":1}'


@pytest.mark.parametrize(("second_seq", "code"), [(2, "SEQ_REGRESSION"), (1, "SEQ_REGRESSION"), (0, "SEQ_MISSING")])
async def test_seq_going_backwards_repeating_or_vanishing_ends_the_stream(second_seq: int, code: str) -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        raw = RawSession(ch)
        await raw.hello("seq-test")
        await raw.content(2, "a")
        await raw.content(second_seq, "b")
        status, details, trailers = await fatal(raw)
        assert status is grpc.StatusCode.INVALID_ARGUMENT
        assert "seq" in details and trailers["x-session-state"] == "FAILED"
        ended = d.sessions.registry.get_ended("seq-test")
        assert ended is not None and ended.outcome.error_code == code


async def test_second_hello_and_late_hello_are_answered_and_ignored() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        raw = RawSession(ch)
        await raw.hello()
        await raw.send(wire.pb.UpstreamPacket(seq=2, hello=wire.pb.Hello(session_id="other")))
        assert (await raw.recv_kind("error")).error.code == "DUPLICATE_HELLO"
        legacy = RawSession(ch)
        await legacy.content(1, "no hello first")
        await legacy.send(wire.pb.UpstreamPacket(seq=2, hello=wire.pb.Hello()))
        assert (await legacy.recv_kind("error")).error.code == "HELLO_NOT_FIRST"


async def test_tool_call_with_invalid_json_unknown_tool_or_bad_arguments() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        raw = RawSession(ch)
        await raw.hello()
        cases = [
            ("echo", "{not json", "TOOL_ERROR_CODE_INVALID_ARGUMENTS", "not valid JSON"),
            ("echo", "[1, 2]", "TOOL_ERROR_CODE_INVALID_ARGUMENTS", "JSON object"),
            ("teleport", "{}", "TOOL_ERROR_CODE_UNKNOWN_TOOL", "teleport"),
            ("sleep", '{"seconds": "soon"}', "TOOL_ERROR_CODE_INVALID_ARGUMENTS", "$.seconds"),
        ]
        for seq, (tool, args, code, text) in enumerate(cases, start=2):
            await raw.tool_call(seq, tool, args, call_id=f"c{seq}")
            result = (await raw.recv_kind("tool_result")).tool_result
            assert result.call_id == f"c{seq}"
            assert wire.pb.ToolErrorCode.Name(result.error.code) == code
            assert text in result.error.message


async def test_duplicate_call_id_is_rejected_without_running_twice() -> None:
    gate = Gate()
    async with running_dispatcher(tools=gated_tools(gate)) as d, grpc.aio.insecure_channel(d.address) as ch:
        async with with_bystander(ch):
            raw = RawSession(ch)
            await raw.hello()
            await raw.tool_call(2, "gate_tool", call_id="same")
            with anyio.fail_after(WAIT_S):
                await gate.started.wait()
            await raw.tool_call(3, "gate_tool", call_id="same")
            error = (await raw.recv_kind("error")).error
            assert (error.code, error.call_id, error.seq) == ("DUPLICATE_CALL_ID", "same", 3)
            gate.release.set()
            assert (await raw.recv_kind("tool_result")).tool_result.call_id == "same"
            assert gate.calls == 1


async def test_packets_after_finish_are_dropped_and_answered() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        raw = RawSession(ch)
        await raw.hello("after-finish")
        await raw.content(2, "done", is_finish=True)
        await raw.tool_call(3, "echo", call_id="late")
        error = (await raw.recv_kind("error")).error
        assert (error.code, error.seq) == ("PACKET_AFTER_FINISH", 3)
        await raw.call.done_writing()
        rest = await raw.drain()
        assert not any(p.HasField("tool_result") for p in rest)
        code, _, trailers = await raw.status()
        assert code is grpc.StatusCode.OK and trailers["x-session-state"] == "FINISHED"
        ended = d.sessions.registry.get_ended("after-finish")
        assert ended is not None and ended.dropped_packets == 1


async def test_packets_after_a_stop_are_counted_and_never_forwarded() -> None:
    config = test_config(policy={"block_patterns": ("forbidden",)})
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        raw = RawSession(ch)
        await raw.hello("after-stop")
        await raw.content(2, "this is forbidden")
        stop = (await raw.recv_kind("stop")).stop
        await raw.tool_call(3, "echo", call_id="after")
        await raw.content(4, "more")
        confirm = wire.pb.StopConfirm(stop_id=stop.stop_id, last_seq=4)
        await raw.send(wire.pb.UpstreamPacket(seq=5, stop_confirm=confirm))
        rest = await raw.drain()
        assert not any(p.HasField("tool_result") for p in rest)
        code, _, trailers = await raw.status()
        assert code is grpc.StatusCode.PERMISSION_DENIED and trailers["x-stop-confirmed"] == "true"
        ended = d.sessions.registry.get_ended("after-stop")
        assert ended is not None and ended.dropped_packets == 2


async def test_a_policy_stop_is_followed_by_its_ack_and_counted_once() -> None:
    """A stop decided while nothing is queued: first on the wire, then only acks."""
    config = test_config(policy={"block_patterns": ("forbidden",)})
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        raw = RawSession(ch)
        await raw.hello("direct-stop")  # the Welcome has been read: the handler is idle
        await raw.content(2, "forbidden")
        first = await raw.recv()
        assert first.WhichOneof("signal") == "stop"
        ack = await raw.recv_kind("ack")
        assert ack.ack.seq == 2
        confirm = wire.pb.StopConfirm(stop_id=first.stop.stop_id, last_seq=2)
        await raw.send(wire.pb.UpstreamPacket(seq=3, stop_confirm=confirm))
        assert {p.WhichOneof("signal") for p in await raw.drain()} <= {"ack"}
        code, _, trailers = await raw.status()
        assert code is grpc.StatusCode.PERMISSION_DENIED and trailers["x-stop-confirmed"] == "true"
        ended = d.sessions.registry.get_ended("direct-stop")
        assert ended is not None and ended.info.packets_out["stop"] == 1


async def test_unconfirmed_stop_ends_after_the_grace_period() -> None:
    config = test_config(policy={"block_patterns": ("forbidden",)}, session={"stop_grace_ms": 200})
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        raw = RawSession(ch)
        await raw.hello("ignores-stop")
        await raw.content(2, "forbidden")
        await raw.recv_kind("stop")
        code, _, trailers = await fatal(raw)  # keeps the stream open and never confirms
        assert code is grpc.StatusCode.PERMISSION_DENIED and trailers["x-stop-confirmed"] == "false"


async def test_session_id_already_in_use_is_refused() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        first = RawSession(ch)
        await first.hello("taken")
        second = RawSession(ch)
        await second.send(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id="taken")))
        code, details, _ = await fatal(second)
        assert code is grpc.StatusCode.ALREADY_EXISTS and "taken" in details
        # the first session is untouched
        await first.tool_call(2, "echo", '{"ok":1}', call_id="c")
        assert (await first.recv_kind("tool_result")).tool_result.result_json == '{"ok":1}'


async def test_packet_naming_another_session_ends_the_stream() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        raw = RawSession(ch)
        await raw.hello("mine")
        await raw.send(wire.pb.UpstreamPacket(seq=2, session_id="bystander", content=wire.pb.ContentChunk(text="x")))
        code, details, _ = await fatal(raw)
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "bystander" in details


async def test_malformed_session_id_is_refused() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = RawSession(ch)
        await raw.send(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id="has spaces")))
        code, details, _ = await fatal(raw)
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "printable ASCII" in details


async def test_oversized_upstream_message_ends_only_that_stream() -> None:
    config = test_config(server={"max_receive_message_bytes": 64 * 1024})
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        raw = RawSession(ch)
        await raw.hello("too-big")
        await raw.content(2, "x" * (128 * 1024))
        code, details, _ = await fatal(raw)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
        await wait_until(
            lambda: d.sessions.registry.get_ended("too-big") is not None, "the oversized session was recorded"
        )
        ended = d.sessions.registry.get_ended("too-big")
        assert ended is not None and ended.outcome.state in (SessionState.FAILED, SessionState.CANCELLED)


async def test_oversized_tool_result_becomes_a_tool_error() -> None:
    config = test_config(server={"max_send_message_bytes": 64 * 1024})
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        raw = RawSession(ch)
        await raw.hello()
        await raw.tool_call(2, "echo", '{"blob":"' + "y" * 100_000 + '"}', call_id="big")
        result = (await raw.recv_kind("tool_result")).tool_result
        assert wire.pb.ToolErrorCode.Name(result.error.code) == "TOOL_ERROR_CODE_RESULT_TOO_LARGE"
        await raw.tool_call(3, "echo", '{"small":1}', call_id="small")
        assert (await raw.recv_kind("tool_result")).tool_result.result_json == '{"small":1}'


async def test_client_disconnecting_mid_tool_call_cancels_the_tool() -> None:
    gate = Gate()
    async with running_dispatcher(tools=gated_tools(gate)) as d, grpc.aio.insecure_channel(d.address) as ch:
        async with with_bystander(ch):
            raw = RawSession(ch)
            await raw.hello("walks-away")
            await raw.tool_call(2, "gate_tool", call_id="pending")
            with anyio.fail_after(WAIT_S):
                await gate.started.wait()
            raw.call.cancel()
            with anyio.fail_after(WAIT_S):
                await gate.cancelled.wait()
            await wait_until(
                lambda: d.sessions.registry.get_ended("walks-away") is not None, "the session was recorded"
            )
            ended = d.sessions.registry.get_ended("walks-away")
            assert ended is not None and ended.outcome.state is SessionState.CANCELLED


async def test_a_client_that_never_reads_is_pushed_back_and_memory_stays_bounded() -> None:
    """Tool results pile up only to the outbox bound; then the dispatcher stops reading and
    HTTP/2 flow control blocks the client's writes."""
    config = test_config(
        session={"outbox_size": 4, "max_concurrent_tool_calls": 2},
        server={"lookahead_bytes": 64 * 1024},
    )
    payload = '{"blob":"' + "z" * 16_000 + '"}'
    # The client does not read, and (unlike grpc's default BDP-grown windows) advertises a
    # small receive window, as a stalled peer would.
    stalled = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 64 * 1024)]
    async with (
        running_dispatcher(config) as d,
        grpc.aio.insecure_channel(d.address) as ch,
        grpc.aio.insecure_channel(d.address, options=stalled) as stalled_channel,
        with_bystander(ch),
    ):
        raw = RawSession(stalled_channel)
        await raw.hello("never-reads")
        sent_bytes = 0
        blocked = False
        for seq in range(2, 2000):
            try:
                await asyncio.wait_for(raw.call.write(_echo(seq, payload)), 1.0)
            except TimeoutError:
                blocked = True
                break
            sent_bytes += len(payload)
        assert blocked, f"the client wrote {sent_bytes} bytes without ever being pushed back"
        # Bounded: the outbox, the running calls and the HTTP/2 windows, not the 32 MB attempted.
        assert sent_bytes < 8 * 1024 * 1024, sent_bytes
        runner = d.sessions.registry.get_open("never-reads")
        assert runner is not None
        assert len(runner.outbox) <= 4 + 1  # outbox_size in-order packets, and at most one cumulative ack
        # Walking away while session tasks are blocked on the full outbox is a cancel, not a crash.
        raw.call.cancel()
        await wait_until(lambda: d.sessions.registry.get_ended("never-reads") is not None, "the session was recorded")
        ended = d.sessions.registry.get_ended("never-reads")
        assert ended is not None and ended.outcome.state is SessionState.CANCELLED, ended.outcome


def _echo(seq: int, args: str) -> wire.pb.UpstreamPacket:
    return wire.pb.UpstreamPacket(seq=seq, tool_call=wire.pb.ToolCallRequest(tool_name="echo", arguments_json=args))


async def test_dispatcher_survives_all_of_the_above_at_once() -> None:
    """A burst of broken streams next to a good one: the process keeps serving."""
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        broken = [RawSession(ch) for _ in range(20)]
        for i, raw in enumerate(broken):
            await raw.send(wire.pb.UpstreamPacket(seq=5, hello=wire.pb.Hello(session_id=f"b{i}")))
            await raw.send(wire.pb.UpstreamPacket(seq=3, content=wire.pb.ContentChunk(text="backwards")))
        for raw in broken:
            code, _, _ = await fatal(raw)
            assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert isinstance(d, Dispatcher) and d.sessions.registry.open_count == 1  # only the bystander


async def test_after_the_stop_only_acks_follow_even_with_results_in_flight() -> None:
    """Tool results finishing around the stop never reach the commander after it."""
    config = test_config(policy={"block_patterns": ("forbidden",)})
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch:
        for attempt in range(20):
            raw = RawSession(ch)
            await raw.hello(f"race-{attempt}")
            for seq in range(2, 12):
                await raw.tool_call(seq, "echo", '{"n":1}', call_id=f"c{seq}")
            await raw.content(12, "forbidden")
            await raw.call.done_writing()  # no confirm: the half-close ends the stopped stream
            packets = await raw.drain()
            kinds = [p.WhichOneof("signal") for p in packets]
            assert "stop" in kinds, kinds
            after = kinds[kinds.index("stop") + 1 :]
            assert set(after) <= {"ack"}, f"attempt {attempt}: {after}"


@pytest.mark.parametrize("first", [True, False], ids=["first-packet", "later-packet"])
async def test_bytes_that_are_not_an_upstream_packet_are_invalid_argument(first: bool) -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch, with_bystander(ch):
        # A channel-level call with no serializers: the test writes raw bytes.
        call = ch.stream_stream("/southwest.ai.agent.v1.AgentInteraction/ChatStream")()
        if not first:
            await call.write(
                wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id="garbage")).SerializeToString()
            )
        await call.write(b"\xff\xff\xff\xff not protobuf")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while await asyncio.wait_for(call.read(), WAIT_S) is not grpc.aio.EOF:
                pass
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid UpstreamPacket" in (caught.value.details() or "")
        if not first:
            await wait_until(lambda: d.sessions.registry.get_ended("garbage") is not None, "the session was recorded")
            ended = d.sessions.registry.get_ended("garbage")
            assert ended is not None and ended.outcome.error_code == "MALFORMED_PACKET"
