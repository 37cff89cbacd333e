"""Coalescing: the merge rules on plain lists of packets (what merges, what never does, the
bounds), then the Link's writer over a fake call whose writes the test holds back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import grpc
import pytest

from commander.coalesce import Coalescer, coalesce
from commander.config import CommanderConfig, ConnectionConfig
from commander.transport import Link
from shared import wire
from shared.settings import load_config
from tests.conftest import WAIT_S

pytestmark = pytest.mark.timeout(10)

pb = wire.pb
BIG = 1 << 20


def content(text: str, *, is_finish: bool = False) -> wire.pb.UpstreamPacket:
    return pb.UpstreamPacket(content=pb.ContentChunk(text=text, is_finish=is_finish))


def thought(step: str, delta: str) -> wire.pb.UpstreamPacket:
    return pb.UpstreamPacket(thought=pb.ThoughtChain(step_name=step, delta=delta))


def tool_call(call_id: str) -> wire.pb.UpstreamPacket:
    return pb.UpstreamPacket(tool_call=pb.ToolCallRequest(tool_name="echo", arguments_json="{}", call_id=call_id))


def merged(packets: list[wire.pb.UpstreamPacket], *, max_bytes: int = BIG, max_packets: int = BIG) -> list[str]:
    """The result as short strings: kind, then the step for thoughts, the text, '!' for is_finish."""
    out = []
    for packet in coalesce(packets, max_bytes=max_bytes, max_packets=max_packets):
        kind = packet.WhichOneof("payload")
        if kind == "content":
            out.append(f"content:{packet.content.text}{'!' if packet.content.is_finish else ''}")
        elif kind == "thought":
            out.append(f"thought[{packet.thought.step_name}]:{packet.thought.delta}")
        elif kind == "tool_call":
            out.append(f"tool_call:{packet.tool_call.call_id}")
        else:
            out.append(str(kind))
    return out


def test_consecutive_content_merges_into_one_packet() -> None:
    assert merged([content("The "), content("answer "), content("is 42.")]) == ["content:The answer is 42."]


def test_a_single_packet_is_sent_as_it_is() -> None:
    packet = content("alone")
    [out] = coalesce([packet], max_bytes=BIG, max_packets=BIG)
    assert out is packet and out.content.text == "alone"


def test_thoughts_merge_only_within_one_step() -> None:
    packets = [thought("plan", "a"), thought("plan", "b"), thought("observe", "c"), thought("plan", "d")]
    assert merged(packets) == ["thought[plan]:ab", "thought[observe]:c", "thought[plan]:d"]


def test_kinds_never_merge_across_each_other_and_order_is_kept() -> None:
    packets = [
        thought("plan", "x"),
        content("a"),
        content("b"),
        thought("plan", "y"),
        thought("plan", "z"),
        content("c"),
    ]
    assert merged(packets) == ["thought[plan]:x", "content:ab", "thought[plan]:yz", "content:c"]


def test_non_mergeable_packets_pass_through_and_split_runs() -> None:
    hello = pb.UpstreamPacket(hello=pb.Hello(agent_name="a"))
    error = pb.UpstreamPacket(error=pb.ErrorSignal(code="AGENT_ERROR", message="boom"))
    confirm = pb.UpstreamPacket(stop_confirm=pb.StopConfirm(stop_id="s"))
    packets = [
        hello,
        content("a"),
        tool_call("call-1"),
        tool_call("call-2"),
        content("b"),
        content("c"),
        error,
        content("d"),
        confirm,
        pb.UpstreamPacket(),  # no payload: not ours to judge, sent as it is
    ]
    assert merged(packets) == [
        "hello",
        "content:a",
        "tool_call:call-1",
        "tool_call:call-2",
        "content:bc",
        "error",
        "content:d",
        "stop_confirm",
        "None",
    ]


def test_is_finish_ends_a_run_and_stays_on_the_merged_packet() -> None:
    packets = [content("a"), content("b"), content("", is_finish=True), content("late")]
    assert merged(packets) == ["content:ab!", "content:late"]


def test_a_finish_chunk_never_starts_a_run() -> None:
    assert merged([content("end", is_finish=True), content("after")]) == ["content:end!", "content:after"]


def test_size_bound_counts_utf8_bytes_and_never_splits() -> None:
    assert merged([content("aaaa"), content("bbbb"), content("cc")], max_bytes=8) == ["content:aaaabbbb", "content:cc"]
    # "é" is 2 bytes: 3 of them (6 bytes) and 2 more would be 10 > 8.
    assert merged([content("ééé"), content("éé"), content("x")], max_bytes=8) == ["content:ééé", "content:ééx"]
    # A packet over the bound alone goes out alone and whole.
    assert merged([content("a"), content("x" * 20), content("b")], max_bytes=8) == [
        "content:a",
        "content:" + "x" * 20,
        "content:b",
    ]


def test_count_bound() -> None:
    assert merged([content(str(i)) for i in range(7)], max_packets=3) == ["content:012", "content:345", "content:6"]
    assert merged([content(str(i)) for i in range(7)], max_packets=1) == [f"content:{i}" for i in range(7)]


def test_the_first_packet_of_a_run_is_reused_as_the_merged_packet() -> None:
    first, second = content("a"), content("b")
    [out] = coalesce([first, second], max_bytes=BIG, max_packets=BIG)
    assert out is first and first.content.text == "ab"  # no copy: the writer owns what it took
    assert second.content.text == "b"


def test_the_concatenated_text_is_unchanged() -> None:
    tokens = [f" tok{i}" for i in range(1000)]
    out = coalesce([content(t) for t in tokens], max_bytes=100, max_packets=BIG)
    assert "".join(p.content.text for p in out) == "".join(tokens)
    assert all(len(p.content.text) <= 100 for p in out) and len(out) < len(tokens)


def test_the_coalescer_is_reusable_run_after_run() -> None:
    coalescer = Coalescer(max_bytes=BIG, max_packets=BIG)
    assert coalescer.open(content("a"))
    assert coalescer.add(content("b")) and coalescer.add(content("c", is_finish=True))
    assert coalescer.is_full and not coalescer.add(content("d"))
    packet = coalescer.close()
    assert (packet.content.text, packet.content.is_finish) == ("abc", True)
    assert coalescer.open(thought("s", "x"))
    assert not coalescer.add(content("y"))  # refused: the run is unchanged
    assert coalescer.close().thought.delta == "x"
    assert not coalescer.open(tool_call("call-1"))


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        Coalescer(max_bytes=0, max_packets=1)
    with pytest.raises(ValueError, match="coalesce_max_bytes"):
        ConnectionConfig(coalesce_max_bytes=0)
    with pytest.raises(ValueError, match="half of max_send_message_bytes"):
        ConnectionConfig(coalesce_max_bytes=3 * 1024 * 1024)


def test_settings_have_flags_and_env_names() -> None:
    config = load_config(
        CommanderConfig,
        env_prefix="COMMANDER_",
        environ={"COMMANDER_CONNECTION_COALESCE_MAX_BYTES": "4096"},
        flags={"connection__coalesce": False},
    )
    assert config.connection.coalesce is False and config.connection.coalesce_max_bytes == 4096
    assert CommanderConfig().connection.coalesce is True  # on by default


# -- the writer, over a fake call whose writes the test lets through -----------------------


class FakeCall:
    """The part of a grpc.aio stream-stream call the Link uses; `write` waits for `allow()`."""

    def __init__(self) -> None:
        self.written: list[wire.pb.UpstreamPacket] = []
        self._permits = anyio.Semaphore(0)
        self._changed = anyio.Event()
        self._ended = anyio.Event()

    async def write(self, packet: wire.pb.UpstreamPacket) -> None:
        copy = pb.UpstreamPacket()
        copy.CopyFrom(packet)
        self.written.append(copy)
        self._changed.set()
        await self._permits.acquire()

    def allow(self, writes: int) -> None:
        for _ in range(writes):
            self._permits.release()

    async def wait_written(self, count: int) -> None:
        """Until the writer has entered its `count`-th write."""
        with anyio.fail_after(WAIT_S):
            while len(self.written) < count:
                self._changed = anyio.Event()
                await self._changed.wait()

    async def done_writing(self) -> None:
        self._ended.set()

    async def read(self) -> Any:
        await self._ended.wait()
        return grpc.aio.EOF

    async def initial_metadata(self) -> tuple[()]:
        return ()

    async def trailing_metadata(self) -> tuple[()]:
        return ()

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    async def details(self) -> str:
        return ""

    def done(self) -> bool:
        return self._ended.is_set()

    def cancel(self) -> bool:
        self._ended.set()
        return True


class FakeChannel:
    """Hands out one FakeCall, as the generated stub asks a channel for its multicallable."""

    def __init__(self, call: FakeCall) -> None:
        self.call = call

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return lambda **call_kwargs: self.call


@asynccontextmanager
async def running_link(call: FakeCall, *, coalesce: bool) -> AsyncIterator[Link]:
    link = Link(
        FakeChannel(call),  # type: ignore[arg-type]  # duck-typed: only stream_stream is used
        session_id="s",
        outbox_size=16,
        on_packet=lambda packet: None,
        on_end=lambda: None,
    )
    if coalesce:
        link.coalesce_with(Coalescer(max_bytes=BIG, max_packets=BIG))
    async with anyio.create_task_group() as tg:
        await tg.start(link.run)
        yield link
        link.close_upstream()
        call.allow(1000)
        with anyio.fail_after(WAIT_S):
            await link.ended.wait()


def shown(packet: wire.pb.UpstreamPacket) -> str:
    return merged([packet])[0]


BACKLOG = [
    content("a"),
    content("b"),
    thought("plan", "x"),
    thought("plan", "y"),
    tool_call("call-1"),
    content("c"),
    content("", is_finish=True),
]


@pytest.mark.anyio
async def test_the_writer_merges_what_queued_behind_a_slow_write() -> None:
    call = FakeCall()
    async with running_link(call, coalesce=True) as link:
        await link.send(pb.UpstreamPacket(hello=pb.Hello()))
        await call.wait_written(1)  # the hello's write is in progress: everything else queues
        for packet in BACKLOG:
            await link.send(packet)
    assert [shown(p) for p in call.written] == [
        "hello",
        "content:ab",
        "thought[plan]:xy",
        "tool_call:call-1",
        "content:c!",
    ]
    assert [p.seq for p in call.written] == [1, 2, 3, 4, 5] and link.last_seq == 5


@pytest.mark.anyio
async def test_without_a_coalescer_the_writer_sends_each_packet_alone() -> None:
    call = FakeCall()
    async with running_link(call, coalesce=False) as link:
        await link.send(pb.UpstreamPacket(hello=pb.Hello()))
        await call.wait_written(1)
        for packet in BACKLOG:
            await link.send(packet)
    assert [shown(p) for p in call.written] == ["hello"] + [shown(p) for p in BACKLOG]
    assert [p.seq for p in call.written] == list(range(1, len(BACKLOG) + 2))


@pytest.mark.anyio
async def test_discard_after_a_stop_counts_agent_packets_including_the_one_held_back() -> None:
    call = FakeCall()
    async with running_link(call, coalesce=True) as link:
        await link.send(pb.UpstreamPacket(hello=pb.Hello()))
        await call.wait_written(1)
        for packet in [content("a"), content("b"), tool_call("call-1"), content("c")]:
            await link.send(packet)
        call.allow(1)  # the hello is written; "a"+"b" go together, the tool call is held back
        await call.wait_written(2)
        assert link.discard_queued() == 2  # the held tool call and "c": agent packets, not messages
        await link.send(pb.UpstreamPacket(stop_confirm=pb.StopConfirm(stop_id="stop-1")))
    assert [shown(p) for p in call.written] == ["hello", "content:ab", "stop_confirm"]
    assert call.written[-1].seq == 3 and call.written[-1].stop_confirm.last_seq == 2
