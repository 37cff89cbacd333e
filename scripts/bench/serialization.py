"""Per-packet encode/decode cost of our packets, beside the same packets in the original contract's shape.

"Ours" is what the commander and the dispatcher actually put on the wire (seq, call ids,
timeouts, execution times, cumulative Ack.seq); "original" is the same message with only
the original contract's fields set (proto3 leaves unset fields off the wire). Both use the
same generated classes, so the ratio prices the added fields, not a different codec.
Build + serialize is timed together because building the message object dominates.
"""

from __future__ import annotations

import statistics
import time
import timeit
from collections.abc import Callable
from functools import partial

from google.protobuf.message import Message

from shared import wire

__all__ = ["measure_codec"]

SESSION_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
REPEATS = 5


def _content(ours: bool) -> wire.pb.UpstreamPacket:
    packet = wire.UpstreamPacket(
        session_id=SESSION_ID, timestamp=time.time_ns() // 1_000_000, content=wire.ContentChunk(text="tok ")
    )
    if ours:
        packet.seq = 123_456
    return packet


def _tool_call(ours: bool) -> wire.pb.UpstreamPacket:
    call = wire.ToolCallRequest(tool_name="echo", arguments_json='{"q": "weather in Lyon"}')
    if ours:
        call.call_id = "c-1f3a9b"
        call.timeout_ms = 5000
    packet = wire.UpstreamPacket(session_id=SESSION_ID, timestamp=time.time_ns() // 1_000_000, tool_call=call)
    if ours:
        packet.seq = 123_457
    return packet


def _tool_result(ours: bool) -> wire.pb.DownstreamPacket:
    result = wire.ToolCallResult(tool_name="echo", result_json='{"q": "weather in Lyon"}')
    if ours:
        result.call_id = "c-1f3a9b"
        result.execution_time_us = 87
    return wire.DownstreamPacket(tool_result=result)


def _ack(ours: bool) -> wire.pb.DownstreamPacket:
    return wire.DownstreamPacket(ack=wire.Ack(seq=123_456) if ours else wire.Ack())


def _per_call_ns(function: Callable[[], object], number: int) -> float:
    """Median over REPEATS of the mean time of one call, in ns (after a warm-up)."""
    timeit.timeit(function, number=min(number, 2000))
    runs = timeit.repeat(function, number=number, repeat=REPEATS)
    return statistics.median(runs) / number * 1e9


def measure_codec(number: int) -> list[tuple[str, float, float]]:
    """(operation, ours ns, original-shape ns) for each operation."""
    rows: list[tuple[str, float, float]] = []
    builders: list[tuple[str, Callable[[bool], Message], type[Message]]] = [
        ("content packet", _content, wire.pb.UpstreamPacket),
        ("tool call packet", _tool_call, wire.pb.UpstreamPacket),
        ("tool result packet", _tool_result, wire.pb.DownstreamPacket),
        ("ack packet", _ack, wire.pb.DownstreamPacket),
    ]
    for name, build, message_type in builders:
        encode: list[float] = []
        decode: list[float] = []
        for ours in (True, False):
            data = build(ours).SerializeToString()
            encode.append(_per_call_ns(partial(_build_and_serialize, build, ours), number))
            decode.append(_per_call_ns(partial(_parse, message_type, data), number))
        rows.append((f"{name}: build + serialize", encode[0], encode[1]))
        rows.append((f"{name}: parse + read payload", decode[0], decode[1]))
    return rows


def _build_and_serialize(build: Callable[[bool], Message], ours: bool) -> bytes:
    return build(ours).SerializeToString()


def _parse(message_type: type[Message], data: bytes) -> object:
    message = message_type.FromString(data)
    kind = message.WhichOneof("payload" if message_type is wire.pb.UpstreamPacket else "signal")
    return getattr(message, kind or "")
