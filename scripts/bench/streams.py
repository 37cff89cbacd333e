"""The loader's building blocks: its spec, what it counts, one stamped ChatStream call, opening many.

Times are `time.monotonic()`: CLOCK_MONOTONIC on Linux, comparable between the processes of
one run, so the orchestrator can hand every loader the same `start_at`.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from shared import wire

__all__ = [
    "MAX_SAMPLES",
    "TOKEN",
    "TOOL_TIMEOUT_S",
    "LoadSpec",
    "Stream",
    "Tally",
    "guarded",
    "new_session_id",
    "open_all",
    "sleep_until",
]

TOKEN = "tok "
OPEN_TIMEOUT_S = 20.0
TOOL_TIMEOUT_S = 10.0
OPENS_IN_FLIGHT = 64
MAX_SAMPLES = 200_000  # per list, per process: bounds the result size


@dataclass(frozen=True, slots=True)
class LoadSpec:
    target: str
    mode: str  # throughput | tool | paced | idle
    sessions: int
    channels: int = 1
    start_at: float = 0.0  # time.monotonic() at which the measured window opens
    duration_s: float = 2.0  # the measured window
    deadline_s: float = 60.0  # hard cap on this process's whole run
    packets_per_session: int = 0  # throughput
    max_calls_per_session: int = 100_000  # tool
    tokens_per_s: float = 50.0  # paced; 0 = full speed
    tool_every_s: float = 0.0  # paced; mean gap between tool calls, 0 = none
    stops_per_s: float = 0.0  # paced; stop triggers per second over all sessions of this process
    coalesce: bool = False  # paced; the writer joins queued tokens into one packet
    warmup_s: float = 1.0  # paced; agents start streaming this long before start_at
    stop_wait_s: float = 3.0  # paced; after the window, how long a session that sent a trigger waits for its stop
    marker: str = "BENCHSTOP"
    seed: int = 0


@dataclass(slots=True)
class Tally:
    """What one loader measured; also reported when the deadline cut the run short."""

    opened: int = 0
    open_ms: float = 0.0  # time to open every first session
    late_s: float = 0.0  # how long after start_at the last first session was open
    packets: int = 0  # packets written inside the window (content and tool calls)
    tokens: int = 0  # tokens written inside the window
    window_start: float = math.inf  # throughput/tool: first write; paced: start_at
    window_end: float = 0.0  # throughput: last stream end; tool/paced: end of the window
    completed: int = 0  # throughput: sessions whose final Ack covered every packet
    calls: int = 0
    rtt_ms: list[float] = field(default_factory=list)  # tool call round trips
    delivery_ms: list[float] = field(default_factory=list)  # tool call write -> its Ack
    stop_ms: list[float] = field(default_factory=list)  # trigger write -> agent cancelled
    stop_signal_ms: list[float] = field(default_factory=list)  # trigger write -> StopSignal read
    # StopSignal.issued_at_ms (the server's wall clock when it decided) -> agent cancelled
    # (this loader's wall clock, same machine): the dispatcher-issued stop latency, 1 ms resolution.
    issued_stop_ms: list[float] = field(default_factory=list)
    stops_triggered: int = 0
    stops_missed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, text: str) -> None:
        key = text.splitlines()[0][:160] if text else "error"
        if key in self.errors or len(self.errors) < 20:
            self.errors[key] = self.errors.get(key, 0) + 1

    @staticmethod
    def sample(target: list[float], value_s: float) -> None:
        if len(target) < MAX_SAMPLES:
            target.append(value_s * 1000)


class Stream:
    """One ChatStream call, stamping its packets as the commander does."""

    def __init__(self, stub: Any, session_id: str) -> None:
        self.stub = stub
        self.session_id = session_id
        self.call = stub.ChatStream()
        self.seq = 0

    async def write(self, packet: wire.pb.UpstreamPacket) -> int:
        self.seq += 1
        packet.seq = self.seq
        packet.session_id = self.session_id
        packet.timestamp = time.time_ns() // 1_000_000
        await self.call.write(packet)
        return self.seq

    async def open(self) -> None:
        hello = wire.Hello(session_id=self.session_id, agent_name="bench-load", features=list(wire.FEATURES))
        await self.write(wire.UpstreamPacket(hello=hello))
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            first = await self.call.read()
        if first is grpc.aio.EOF or not first.HasField("welcome"):
            raise RuntimeError(f"open: expected a Welcome, got {first!r:.80}")

    async def packets(self) -> AsyncIterator[wire.pb.DownstreamPacket]:
        """Downstream packets until the end of the stream (`async for` on the call cannot be
        mixed with `call.write()` on one RPC)."""
        while (packet := await self.call.read()) is not grpc.aio.EOF:
            yield packet

    async def finish(self) -> None:
        await self.write(wire.UpstreamPacket(content=wire.ContentChunk(is_finish=True)))
        await self.call.done_writing()


def new_session_id() -> str:
    return str(uuid.uuid4())  # 36 characters, as in the baseline notes


async def sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


async def guarded(tally: Tally, work: Awaitable[None]) -> None:
    """One session's failure is counted, never the end of the run (a benchmark reports, it does not crash)."""
    try:
        await work
    except Exception as exc:
        tally.error(describe(exc))


async def open_all(
    spec: LoadSpec,
    stubs: list[Any],
    tally: Tally,
    on_open: Callable[[int, Stream], Awaitable[None]],
    on_all_opened: Callable[[float], None] | None = None,
) -> None:
    """Open `spec.sessions` sessions (a bounded number in flight) and run `on_open` for each;
    `on_all_opened(now)` once every session has been opened (or has failed to)."""
    gate = asyncio.Semaphore(OPENS_IN_FLIGHT)
    started = time.monotonic()
    attempted = 0

    async def one(index: int) -> None:
        nonlocal attempted
        try:
            async with gate:
                stream = Stream(stubs[index % len(stubs)], new_session_id())
                await stream.open()
            tally.opened += 1
        finally:
            attempted += 1
            if attempted == spec.sessions:
                now = time.monotonic()
                tally.open_ms = (now - started) * 1000
                tally.late_s = max(0.0, now - spec.start_at) if spec.start_at else 0.0
                if on_all_opened is not None:
                    on_all_opened(now)
        await on_open(index, stream)

    async with asyncio.TaskGroup() as group:
        for index in range(spec.sessions):
            group.create_task(guarded(tally, one(index)))
