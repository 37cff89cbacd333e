"""Load generator: one process driving many ChatStream sessions with raw wire packets.

Run as `python -m scripts.bench.load '<LoadSpec as JSON>'`; prints one JSON result line on
stdout (the idle mode prints a `ready` line first and holds its sessions until stdin closes).
The same code drives `dispatcher serve` and the bare baseline server: only the target differs.

Every packet is stamped as the commander stamps it (seq, session_id, timestamp) and every
session opens with Hello and waits for the Welcome. Times are `time.monotonic()`, which is
CLOCK_MONOTONIC on Linux and therefore comparable between the processes of one run (the
orchestrator hands every loader the same `start_at`).

Modes:
  throughput  each session writes `packets_per_session` content packets as fast as it can,
              then is_finish and half-close; done when the final Ack covering the last seq
              has arrived and the stream has ended.
  tool        each session calls `echo` in a loop, one call at a time; round trip = write of
              the call -> its ToolCallResult read.
  paced       agents streaming tokens, calling tools and triggering stops (scripts/bench/paced.py).
  idle        open sessions (Hello, Welcome) and hold them until stdin closes.
  seed        a seed-era client: the original contract only, paced tokens, a probe per second
              (scripts/bench/seed.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import grpc

from scripts.bench.paced import paced
from scripts.bench.seed import seed_era
from scripts.bench.streams import TOKEN, TOOL_TIMEOUT_S, LoadSpec, Stream, Tally, open_all, sleep_until
from shared import wire

__all__ = ["LoadSpec", "main", "run"]


# -- throughput ----------------------------------------------------------------------------------


async def throughput(spec: LoadSpec, stubs: list[Any], tally: Tally) -> None:
    send_until = spec.start_at + spec.duration_s  # a cap: normally every packet is sent before

    async def session(_index: int, stream: Stream) -> None:
        last_ack = 0

        async def read() -> None:
            nonlocal last_ack
            async for packet in stream.packets():
                if packet.HasField("ack"):
                    last_ack = packet.ack.seq

        async with asyncio.TaskGroup() as group:
            group.create_task(read())
            await sleep_until(spec.start_at)
            tally.window_start = min(tally.window_start, time.monotonic())
            sent = 0
            for _ in range(spec.packets_per_session):
                await stream.write(wire.UpstreamPacket(content=wire.ContentChunk(text=TOKEN)))
                sent += 1
                if sent % 256 == 0 and time.monotonic() > send_until:
                    tally.error("send cap reached before every packet was sent")
                    break
            await stream.finish()
        tally.window_end = max(tally.window_end, time.monotonic())
        tally.packets += sent
        if last_ack >= stream.seq:
            tally.completed += 1
        else:
            tally.error(f"final ack {last_ack} does not cover seq {stream.seq}")

    await open_all(spec, stubs, tally, session)


# -- tool round trips ----------------------------------------------------------------------------


async def tool_calls(spec: LoadSpec, stubs: list[Any], tally: Tally) -> None:
    window_end = spec.start_at + spec.duration_s
    tally.window_start = spec.start_at

    async def session(_index: int, stream: Stream) -> None:
        waiting: dict[str, asyncio.Future[float]] = {}

        async def read() -> None:
            async for packet in stream.packets():
                if packet.HasField("tool_result"):
                    future = waiting.pop(packet.tool_result.call_id, None)
                    if future is not None and not future.done():
                        future.set_result(time.monotonic())

        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            group.create_task(read())
            await sleep_until(spec.start_at)
            number = 0
            while time.monotonic() < window_end and number < spec.max_calls_per_session:
                call_id = f"c{number}"
                waiting[call_id] = future = loop.create_future()
                request = wire.ToolCallRequest(
                    tool_name="echo", arguments_json=f'{{"n": {number}}}', call_id=call_id, timeout_ms=5000
                )
                sent = time.monotonic()
                await stream.write(wire.UpstreamPacket(tool_call=request))
                async with asyncio.timeout(TOOL_TIMEOUT_S):
                    done = await future
                Tally.sample(tally.rtt_ms, done - sent)
                tally.calls += 1
                number += 1
            await stream.finish()
        tally.window_end = max(tally.window_end, time.monotonic())

    await open_all(spec, stubs, tally, session)


# -- idle sessions (memory) ----------------------------------------------------------------------


async def idle(spec: LoadSpec, stubs: list[Any], tally: Tally) -> None:
    held: list[Stream] = []

    async def session(_index: int, stream: Stream) -> None:
        held.append(stream)

    await open_all(spec, stubs, tally, session)
    print(json.dumps({"event": "ready", "opened": tally.opened, "open_ms": tally.open_ms}), flush=True)
    # Hold the sessions until the orchestrator has read the server's RSS and closes our stdin.
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        await stdin.read()
    finally:
        transport.close()
    for stream in held:
        stream.call.cancel()


MODES: dict[str, Callable[[LoadSpec, list[Any], Tally], Awaitable[None]]] = {
    "throughput": throughput,
    "tool": tool_calls,
    "paced": paced,
    "idle": idle,
    "seed": seed_era,
}


async def run(spec: LoadSpec) -> dict[str, Any]:
    tally = Tally()
    options = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
    channels = [grpc.aio.insecure_channel(spec.target, options=options) for _ in range(spec.channels)]
    stubs = [wire.AgentInteractionStub(channel) for channel in channels]
    cut_short = False
    try:
        async with asyncio.timeout(spec.deadline_s):
            await MODES[spec.mode](spec, stubs, tally)
    except TimeoutError:
        cut_short = True
        tally.error(f"loader deadline of {spec.deadline_s:g} s reached; partial results")
    finally:
        for channel in channels:
            await channel.close(grace=None)
    result = asdict(tally)
    result["cut_short"] = cut_short
    for key in ("window_start", "window_end"):
        if not math.isfinite(result[key]):
            result[key] = 0.0
    return result


def main() -> int:
    spec = LoadSpec(**json.loads(sys.argv[1]))
    result = asyncio.run(run(spec))
    print(json.dumps({"event": "result", **result}), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
