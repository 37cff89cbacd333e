"""A seed-era client's load shape: the original contract, paced one-token packets, a probe per second.

This is how an independent client written against the published contract alone loads a server
(the capacity issue measured it with grpc-go): no Hello, no `seq`, no `call_id`, no timeout, so
the dispatcher runs its compatibility path. Every session

- opens at `start_at` plus a random offset within one token period (no handshake to wait for:
  the first packet opens the session);
- sends one thought, then one 4-byte content chunk per packet at `tokens_per_s`;
- writes an `echo` tool call every `tool_every_s` (the probe) while the tokens go on; its round
  trip, the call's write -> the next ToolCallResult read, is the figure (with no call id, results
  are matched by order: one probe is outstanding at a time, a probe due while one is still out
  is counted as skipped; probes sent in a session's first `warmup_s`, while every session is opening
  at once, are sent but not sampled: the figure is the steady state);
- after `duration_s` writes `is_finish`, half-closes and reads to the end of the stream.

A session is OK when its call ended with status OK and its last probe was answered.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import grpc

from scripts.bench.streams import TOKEN, LoadSpec, Tally, describe, sleep_until
from shared import wire

__all__ = ["seed_era"]

THOUGHT = "planning the answer"
CATCH_UP_S = 0.5  # a session that fell further behind than this does not flood to catch up


async def seed_era(spec: LoadSpec, stubs: list[Any], tally: Tally) -> None:
    rng = random.Random(spec.seed)
    tally.window_start = spec.start_at
    tally.window_end = spec.start_at + spec.duration_s
    async with asyncio.TaskGroup() as group:
        for index in range(spec.sessions):
            offset = rng.uniform(0, 1 / spec.tokens_per_s)
            probe_offset = rng.uniform(0, spec.tool_every_s)
            group.create_task(_session(spec, stubs[index % len(stubs)], tally, offset, probe_offset))


async def _session(spec: LoadSpec, stub: Any, tally: Tally, offset: float, probe_offset: float) -> None:
    session_id = str(uuid.uuid4())
    await sleep_until(spec.start_at + offset)
    call = stub.ChatStream()
    answered: asyncio.Queue[float] = asyncio.Queue()
    probe_out = False
    written = 0

    def packet(**payload: Any) -> wire.pb.UpstreamPacket:
        return wire.UpstreamPacket(session_id=session_id, timestamp=time.time_ns() // 1_000_000, **payload)

    async def read() -> None:
        while (downstream := await call.read()) is not grpc.aio.EOF:
            if downstream.HasField("tool_result"):
                answered.put_nowait(time.monotonic())

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(read())
            await call.write(packet(thought=wire.ThoughtChain(step_name="plan", delta=THOUGHT)))
            started = time.monotonic()
            end = started + spec.duration_s
            period = 1 / spec.tokens_per_s
            next_token = started + period
            next_probe = started + probe_offset
            probe_sent_at = 0.0
            while True:
                now = time.monotonic()
                while not answered.empty():
                    answered_at = answered.get_nowait()
                    if probe_sent_at >= started + spec.warmup_s:
                        Tally.sample(tally.rtt_ms, answered_at - probe_sent_at)
                    tally.calls += 1
                    probe_out = False
                if now >= end:
                    break
                due = min(next_token, next_probe, end)
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                if next_probe <= now:
                    next_probe += spec.tool_every_s
                    if probe_out:
                        tally.error("probe due while the previous one was still unanswered")
                        continue
                    request = wire.ToolCallRequest(tool_name="echo", arguments_json='{"probe": true}')
                    probe_sent_at = time.monotonic()
                    probe_out = True
                    await call.write(packet(tool_call=request))
                    tally.packets += 1
                else:
                    await call.write(packet(content=wire.ContentChunk(text=TOKEN)))
                    written += 1
                    next_token = max(next_token + period, now - CATCH_UP_S)
            await call.write(packet(content=wire.ContentChunk(is_finish=True)))
            await call.done_writing()
            if probe_out:
                sent_at = probe_sent_at
                async with asyncio.timeout(spec.stop_wait_s):
                    Tally.sample(tally.rtt_ms, await answered.get() - sent_at)
                tally.calls += 1
                probe_out = False
        code = await call.code()
    except Exception as exc:
        call.cancel()
        tally.error(describe(exc))
        return
    finally:
        tally.tokens += written
        tally.packets += written
    if code == grpc.StatusCode.OK:
        tally.completed += 1
    else:
        tally.error(f"session ended {code.name}: {await call.details()}")
