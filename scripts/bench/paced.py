"""Paced agents: tokens at an LLM-like pace (or full speed), tool calls and stop triggers.

An "agent" task per session produces tokens (bursty, `tokens_per_s`; 0 = as fast as the
outbox takes them) into a bounded outbox that a writer task drains into the call (cancelling
a `call.write()` would cancel the RPC), plus an `echo` call every ~`tool_every_s` (the agent
waits for its result) and stop triggers: a content packet with the marker word the server's
policy stops on. On the StopSignal the reader cancels the agent at once, the writer discards
what is queued, sends StopConfirm and half-closes; the slot then opens a new session, so the
number of sessions stays constant. Agents start only once every session of the loader is open.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import grpc

from scripts.bench.streams import (
    TOKEN,
    TOOL_TIMEOUT_S,
    LoadSpec,
    Stream,
    Tally,
    new_session_id,
    open_all,
    sleep_until,
)
from shared import wire

__all__ = ["paced"]

OUTBOX_SIZE = 32  # the commander's default --connection-outbox-size
MAX_BURST_TOKENS = 8


class Window:
    """The measured window of a paced run. It opens at `start_at`, unless this loader's sessions
    were still opening then: agents stream only once every session is open, warm up for
    `warmup_s`, and the window opens after that (the delay is reported as `late_s`)."""

    def __init__(self, spec: LoadSpec) -> None:
        self.warmup_s = spec.warmup_s
        self.duration_s = spec.duration_s
        self.start = spec.start_at
        self.end = spec.start_at + spec.duration_s
        self.ready = asyncio.Event()

    def all_opened(self, now: float) -> None:
        self.start = max(self.start, now + self.warmup_s)
        self.end = self.start + self.duration_s
        self.ready.set()

    def __contains__(self, moment: float) -> bool:
        return self.start <= moment < self.end


@dataclass(slots=True)
class Generation:
    """One session of a paced slot: the agent, its outbox, what the reader saw."""

    stream: Stream
    outbox: asyncio.Queue[wire.pb.UpstreamPacket | None]  # None: the agent is done
    stop_at: float  # when the agent sends the stop trigger (inf: never)
    trigger_queued: bool = False
    tool_future: asyncio.Future[float] | None = None
    tool_seq: int = 0
    tool_sent_at: float = 0.0
    trigger_at: float = 0.0
    stop: wire.pb.StopSignal | None = None
    stop_seen_at: float = 0.0
    halt_at: float = 0.0
    stop_seen_wall_ms: float = 0.0  # wall clock, to compare with StopSignal.issued_at_ms
    halt_wall_ms: float = 0.0
    gave_up_at: float = 0.0
    discarded: int = 0
    agent: asyncio.Task[None] | None = None


class PacedSlot:
    """One of the `spec.sessions` concurrent sessions; opens a new session after each stop."""

    def __init__(self, spec: LoadSpec, tally: Tally, rng: random.Random, window: Window) -> None:
        self.spec = spec
        self.tally = tally
        self.rng = rng
        self.window = window
        self.stop_rate = spec.stops_per_s / spec.sessions if spec.sessions else 0.0  # per second, this slot
        self.next_stop = math.inf

    def _draw_stop(self, after: float) -> float:
        if self.stop_rate <= 0:
            return math.inf
        moment = max(after, self.window.start) + self.rng.expovariate(self.stop_rate)
        return moment if moment < self.window.end else math.inf

    def in_window(self, moment: float) -> bool:
        return moment in self.window

    async def run(self, stream: Stream) -> None:
        await self.window.ready.wait()  # every session of this loader is open
        self.next_stop = self._draw_stop(self.window.start)
        while await self.generation(stream) and time.monotonic() < self.window.end:
            stream = Stream(stream.stub, new_session_id())
            await stream.open()

    async def generation(self, stream: Stream) -> bool:
        """Run one session until it finishes (False) or is stopped (True)."""
        gen = Generation(stream, asyncio.Queue(OUTBOX_SIZE), stop_at=self.next_stop)
        async with asyncio.TaskGroup() as group:
            gen.agent = group.create_task(self.agent(gen))
            group.create_task(self.writer(gen))
            group.create_task(self.reader(gen))
        if gen.trigger_at and self.in_window(gen.trigger_at):
            if gen.stop is None:
                # Censored: no stop within stop_wait_s after the window. Kept as a sample of what
                # it at least was, so an overloaded server shows in p99 instead of vanishing.
                self.tally.stops_missed += 1
                Tally.sample(self.tally.stop_ms, gen.gave_up_at - gen.trigger_at)
            else:
                # The agent may have given up before the stop came: then the StopSignal read is the halt.
                halted = gen.halt_at or gen.stop_seen_at
                Tally.sample(self.tally.stop_ms, halted - gen.trigger_at)
                Tally.sample(self.tally.stop_signal_ms, gen.stop_seen_at - gen.trigger_at)
                if gen.stop.issued_at_ms:
                    halted_wall_ms = gen.halt_wall_ms or gen.stop_seen_wall_ms
                    Tally.sample(self.tally.issued_stop_ms, (halted_wall_ms - gen.stop.issued_at_ms) / 1000)
        if gen.stop is None:
            return False
        self.next_stop = self._draw_stop(time.monotonic())
        return True

    async def agent(self, gen: Generation) -> None:
        """The token source: bursty tokens, an echo call now and then, the stop trigger when due."""
        spec, rng, outbox = self.spec, self.rng, gen.outbox
        rate = spec.tokens_per_s
        await sleep_until(self.window.start - spec.warmup_s)
        now = time.monotonic()
        next_token = now + (rng.uniform(0, MAX_BURST_TOKENS / rate) if rate else 0.0)
        next_tool = now + rng.uniform(0, 2 * spec.tool_every_s) if spec.tool_every_s else math.inf
        window_end = self.window.end
        give_up = window_end + spec.stop_wait_s
        try:
            while True:
                now = time.monotonic()
                if (not gen.trigger_queued and now >= window_end) or now >= give_up:
                    break
                due = min(next_token, next_tool, gen.stop_at, give_up if gen.trigger_queued else window_end)
                if due > now:
                    await asyncio.sleep(due - now)
                    now = time.monotonic()
                if gen.stop_at <= now:
                    gen.stop_at = math.inf
                    gen.trigger_queued = True
                    await outbox.put(wire.UpstreamPacket(content=wire.ContentChunk(text=f" {spec.marker} ")))
                elif next_tool <= now:
                    gen.tool_future = asyncio.get_running_loop().create_future()
                    request = wire.ToolCallRequest(
                        tool_name="echo", arguments_json='{"q": "weather"}', call_id=f"t{rng.getrandbits(48)}"
                    )
                    await outbox.put(wire.UpstreamPacket(tool_call=request))
                    async with asyncio.timeout(TOOL_TIMEOUT_S):
                        await gen.tool_future
                    gen.tool_future = None
                    now = time.monotonic()
                    next_tool = now + rng.uniform(0.5, 1.5) * spec.tool_every_s
                    next_token = max(next_token, now)
                elif next_token <= now:
                    burst = rng.randint(1, MAX_BURST_TOKENS) if rate else 1
                    for _ in range(burst):
                        await outbox.put(wire.UpstreamPacket(content=wire.ContentChunk(text=TOKEN)))
                    if rate:
                        # An agent that fell far behind (an overloaded loop) does not catch up
                        # in one flood: offered and achieved rates are both reported.
                        next_token = max(next_token + burst / rate * rng.uniform(0.5, 1.5), now - 0.5)
        except asyncio.CancelledError:
            gen.halt_at = time.monotonic()
            gen.halt_wall_ms = time.time_ns() / 1e6
            raise
        gen.gave_up_at = time.monotonic()
        await outbox.put(None)

    def _is_plain_token(self, packet: wire.pb.UpstreamPacket | None) -> bool:
        return (
            packet is not None
            and packet.WhichOneof("payload") == "content"
            and self.spec.marker not in packet.content.text
        )

    async def writer(self, gen: Generation) -> None:
        stream, outbox, tally = gen.stream, gen.outbox, self.tally
        carry: wire.pb.UpstreamPacket | None = None
        has_carry = False
        try:
            while True:
                if has_carry:
                    packet, has_carry = carry, False
                else:
                    packet = await outbox.get()
                if packet is None:
                    if gen.stop is not None:  # the reader ended the agent: confirm the stop
                        await self._confirm(gen)
                    else:
                        await stream.finish()
                    return
                tokens = 0
                if self._is_plain_token(packet):
                    tokens = 1
                    while self.spec.coalesce and not outbox.empty():
                        more = outbox.get_nowait()
                        if not self._is_plain_token(more):
                            carry, has_carry = more, True  # sent next, in order
                            break
                        assert more is not None
                        packet.content.text += more.content.text
                        tokens += 1
                now = time.monotonic()
                if packet.WhichOneof("payload") == "tool_call":
                    gen.tool_seq, gen.tool_sent_at = stream.seq + 1, now
                elif self.spec.marker in packet.content.text:
                    gen.trigger_at = now
                    tally.stops_triggered += 1
                if self.in_window(now):
                    tally.packets += 1
                    tally.tokens += tokens
                await stream.write(packet)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            if gen.stop is None:
                raise  # after a stop the server may end the call first: not an error

    async def _confirm(self, gen: Generation) -> None:
        assert gen.stop is not None
        halt_us = round((gen.halt_at - gen.stop_seen_at) * 1e6) if gen.halt_at else 0
        confirm = wire.StopConfirm(
            stop_id=gen.stop.stop_id, last_seq=gen.stream.seq, halt_us=halt_us, discarded_packets=gen.discarded
        )
        await gen.stream.write(wire.UpstreamPacket(stop_confirm=confirm))
        await gen.stream.call.done_writing()

    async def reader(self, gen: Generation) -> None:
        try:
            async for packet in gen.stream.packets():
                await self._on_packet(gen, packet)
        except grpc.aio.AioRpcError:
            if gen.stop is None:
                raise  # a stopped session ends with the stop's status (PERMISSION_DENIED for a policy stop)

    async def _on_packet(self, gen: Generation, packet: wire.pb.DownstreamPacket) -> None:
        tally = self.tally
        kind = packet.WhichOneof("signal")
        if kind == "ack":
            if gen.tool_seq and packet.ack.seq >= gen.tool_seq:
                if self.in_window(gen.tool_sent_at):
                    Tally.sample(tally.delivery_ms, time.monotonic() - gen.tool_sent_at)
                gen.tool_seq = 0
        elif kind == "tool_result":
            future = gen.tool_future
            if future is not None and not future.done():
                now = time.monotonic()
                if self.in_window(gen.tool_sent_at):
                    Tally.sample(tally.rtt_ms, now - gen.tool_sent_at)
                    tally.calls += 1
                future.set_result(now)
        elif kind == "stop" and gen.stop is None:
            gen.stop_seen_at = time.monotonic()
            gen.stop_seen_wall_ms = time.time_ns() / 1e6
            gen.stop = packet.stop
            assert gen.agent is not None
            gen.agent.cancel()  # the agent halts at once; nothing it queued is sent
            while not gen.outbox.empty():
                gen.outbox.get_nowait()
                gen.discarded += 1
            await asyncio.wait({gen.agent})
            gen.outbox.put_nowait(None)  # wakes the writer: StopConfirm, then half-close


async def paced(spec: LoadSpec, stubs: list[Any], tally: Tally) -> None:
    rng = random.Random(spec.seed or os.getpid())
    window = Window(spec)

    async def session(_index: int, stream: Stream) -> None:
        await PacedSlot(spec, tally, random.Random(rng.getrandbits(64)), window).run(stream)

    def all_opened(now: float) -> None:
        window.all_opened(now)
        tally.late_s = window.start - spec.start_at
        tally.window_start, tally.window_end = window.start, window.end

    await open_all(spec, stubs, tally, session, all_opened)
