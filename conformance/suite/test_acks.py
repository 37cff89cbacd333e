"""ACK: when acks come and what they cover."""

from __future__ import annotations

from typing import Any

import pytest

from conformance.client import session_id
from conformance.plugin import requirement
from conformance.suite.steps import stop_content
from conformance.target import Target


def _acks(packets: list[Any]) -> list[int]:
    return [p.ack.seq for p in packets if p.WhichOneof("signal") == "ack"]


@requirement("ACK-001")
@pytest.mark.parametrize("after", ["tool-call", "finish", "stop-confirm"])
async def test_an_ack_follows_a_tool_call_a_finish_and_a_stop_confirmation(target: Target, after: str) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id(f"ack-001-{after}"))
        if after == "tool-call":
            await session.tool_call(2, "sleep", {"seconds": 0.5}, call_id="slow")
            await session.expect("tool_result", "the sleep call's result", skip=("ack",))
            before_result = _acks(session.seen[:-1])
            assert before_result and before_result[-1] >= 2, (
                f"an Ack covering the tool call (seq 2) should come right after it, before the 0.5 s call's "
                f"result; acks before the result: {before_result}"
            )
            return
        if after == "finish":
            await session.content(2, "done", is_finish=True)
            last = 2
        else:
            await session.content(2, stop_content(target.require_stop_word()))
            stop = (await session.expect("stop", "a StopSignal for the stop word")).stop
            await session.stop_confirm(3, stop)
            last = 3
        await session.half_close()
        ending = await session.finish()
        acks = _acks(ending.packets)
        assert acks and acks[-1] >= last, (
            f"an Ack covering seq {last} ({after}) should come before the stream ends; acks after it: {acks}; "
            f"{ending.describe()}"
        )


@requirement("ACK-002")
async def test_acks_are_cumulative(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("ack-002"))
        for seq in (2, 3, 5, 8):
            await session.content(seq, f"chunk {seq} ")
        await session.tool_call(9, "echo", {"n": 9}, call_id="c9")
        await session.expect_result("c9", "the echo result")
        acks = _acks(session.seen)
        assert acks == sorted(acks), f"Ack seqs must never decrease: {acks}"
        assert all(a <= 9 for a in acks), f"an Ack covers a seq never sent (highest sent: 9): {acks}"
        assert acks and acks[-1] == 9, f"the tool call's Ack should cover seq 9 (and so 1..8): acks {acks}"


@requirement("ACK-003")
async def test_acks_come_within_the_advertised_cadence(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        limits = (await session.hello(session_id("ack-003"))).limits
        every, interval_ms = limits.ack_every_packets, limits.ack_interval_ms
        if not every and not interval_ms:
            pytest.skip("the target advertises no ack cadence (Welcome.limits ack_every_packets / ack_interval_ms)")
        count = 3 if interval_ms else every
        if count > 1000:
            pytest.skip(f"ack_every_packets {every} is too large to exercise")
        for seq in range(2, count + 2):
            await session.content(seq, "x")
        last = count + 1
        wait_s = interval_ms / 1000 + session.wait_s
        while True:
            packet = await session.expect("ack", f"an Ack covering seq {last} within the cadence", wait_s=wait_s)
            if packet.ack.seq >= last:
                break
