"""The session outbox (delivery classes, one reader, flush) and the one-shot Latch."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from dispatcher.sessions.latch import Latch
from dispatcher.sessions.outbox import Outbox, OutboxClosed
from shared import wire

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]

Packet = wire.pb.DownstreamPacket


def ack(seq: int) -> Packet:
    return Packet(ack=wire.pb.Ack(seq=seq))


def stop(stop_id: str) -> Packet:
    return Packet(stop=wire.pb.StopSignal(stop_id=stop_id))


def result(call_id: str) -> Packet:
    return Packet(tool_result=wire.pb.ToolCallResult(call_id=call_id))


def label(packet: Packet) -> int | str:
    """ack seqs as ints, stops as "stop:<id>", results as their call id."""
    if packet.HasField("ack"):
        return packet.ack.seq
    if packet.HasField("stop"):
        return f"stop:{packet.stop.stop_id}"
    return packet.tool_result.call_id


async def drain(outbox: Outbox, seen: list[int | str] | None = None) -> list[int | str]:
    """Everything the reader gets until None, as it comes (into `seen`), each reported written."""
    seen = [] if seen is None else seen
    while (packet := await outbox.get()) is not None:
        seen.append(label(packet))
        outbox.written()
    return seen


async def settle() -> None:
    """Let every ready task run (no timing involved)."""
    for _ in range(10):
        await anyio.lowlevel.checkpoint()


async def test_in_order_packets_go_out_first_in_first_out() -> None:
    outbox = Outbox(4)
    for call_id in ("a", "b", "c"):
        assert await outbox.put(result(call_id))
    outbox.finish()
    assert not await outbox.put(result("late"))  # finished: refused, not queued
    assert await drain(outbox) == ["a", "b", "c"]


async def test_put_waits_while_full_and_resumes_when_the_reader_takes_one() -> None:
    outbox = Outbox(1)
    await outbox.put(result("a"))
    done = anyio.Event()

    async def writer() -> None:
        await outbox.put(result("b"))
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await settle()
        assert not done.is_set()  # held back by the bound
        first = await outbox.get()
        assert first is not None and label(first) == "a"
        await done.wait()
    outbox.finish()
    assert await drain(outbox) == ["b"]


async def test_an_ack_never_waits_and_a_newer_one_takes_the_queued_ones_place() -> None:
    outbox = Outbox(1)
    await outbox.put(result("a"))  # full now
    outbox.push_ack(ack(3))  # passes the bound: acks never wait
    outbox.push_ack(ack(5))  # cumulative: the queued ack now says 5, no second ack queued
    assert len(outbox) == 2
    outbox.finish()
    assert await drain(outbox) == ["a", 5]


@pytest.mark.parametrize("full", [False, True])
async def test_a_stop_goes_ahead_of_everything_queued_and_drops_the_results(full: bool) -> None:
    outbox = Outbox(2 if full else 8)
    await outbox.put(result("r1"))
    outbox.push_ack(ack(4))
    await outbox.put(result("r2"))
    dropped = outbox.push_urgent(stop("s"))
    assert [label(p) for p in dropped] == ["r1", "r2"]  # never written: the caller records them dropped
    assert outbox.is_sealed
    assert not await outbox.put(result("r3"))  # after a stop, results are refused ...
    outbox.push_ack(ack(9))  # ... acks still go
    assert outbox.push_urgent(stop("second")) == ()  # one stop only
    outbox.finish()
    assert await drain(outbox) == ["stop:s", 9]


async def test_a_writer_waiting_on_a_full_outbox_is_refused_when_the_stop_comes() -> None:
    outbox = Outbox(1)
    await outbox.put(result("r1"))
    outcome: list[bool] = []

    async def writer() -> None:
        outcome.append(await outbox.put(result("r2")))

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await settle()
        assert outcome == []  # waiting for room
        dropped = outbox.push_urgent(stop("s"))
    assert outcome == [False] and [label(p) for p in dropped] == ["r1"]
    outbox.finish()
    assert await drain(outbox) == ["stop:s"]


async def test_a_cancelled_writer_hands_its_wake_up_to_the_next() -> None:
    outbox = Outbox(1)
    await outbox.put(result("1"))
    written = anyio.Event()

    async def second() -> None:
        await outbox.put(result("3"))
        written.set()

    # Plain asyncio tasks: Task.cancel() lands even after the waiter's future was resolved,
    # which is the race this covers (anyio defers its cancellation until the task waits again).
    first = asyncio.get_running_loop().create_task(outbox.put(result("2")))
    await settle()
    queued = asyncio.get_running_loop().create_task(second())  # waits behind `first`
    await settle()
    assert await outbox.get() is not None  # frees one slot: wakes `first` only
    first.cancel()  # ...which leaves before it runs: the slot must go to `second`
    with anyio.fail_after(5):  # a lost wake-up would leave `second` waiting forever
        await written.wait()
    await queued
    assert first.cancelled()
    outbox.finish()
    assert await drain(outbox) == ["3"]


async def test_close_fails_writers_hands_back_the_unwritten_and_ends_the_reader() -> None:
    outbox = Outbox(1)
    await outbox.put(result("queued"))
    failures: list[str] = []

    async def writer() -> None:
        try:
            await outbox.put(result("waiting"))
        except OutboxClosed:
            failures.append("waiting writer")

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await settle()
        left = outbox.close()  # the RPC's writer went away
    assert [label(p) for p in left] == ["queued"] and failures == ["waiting writer"]
    with pytest.raises(OutboxClosed):
        await outbox.put(result("late"))
    assert outbox.push_urgent(stop("late")) == ()  # nobody to tell
    assert len(outbox) == 0 and await outbox.get() is None


async def test_the_reader_waits_for_a_packet_and_gets_none_after_finish() -> None:
    outbox = Outbox(4)
    got: list[int | str] = []
    drained = anyio.Event()

    async def reader() -> None:
        await drain(outbox, got)
        drained.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await settle()
        outbox.push_ack(ack(7))
        await settle()
        assert got == [7] and not drained.is_set()  # still reading: not finished yet
        outbox.finish()
    assert drained.is_set()


@pytest.mark.parametrize("reader_goes", [False, True], ids=["written", "reader-gone"])
async def test_flush_waits_until_what_is_queued_is_written_or_the_reader_is_gone(reader_goes: bool) -> None:
    outbox = Outbox(4)
    assert await outbox.flush()  # nothing queued, nothing in flight
    outbox.push_ack(ack(1))
    flushed: list[bool] = []

    async def flusher() -> None:
        flushed.append(await outbox.flush())

    async with anyio.create_task_group() as tg:
        tg.start_soon(flusher)
        await settle()
        packet = await outbox.get()
        assert packet is not None
        await settle()
        assert flushed == []  # taken, but not yet written
        if reader_goes:
            outbox.close()  # grpc killed the call: the write never completes
        else:
            outbox.written()
    assert flushed == [not reader_goes]
    assert await outbox.flush() is not reader_goes


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        Outbox(0)


async def test_latch_wakes_every_waiter_and_stays_set() -> None:
    latch = Latch()
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await latch.wait()
        woken.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(waiter, n)
        await settle()
        assert woken == [] and not latch.is_set()
        latch.set()
    assert sorted(woken) == [0, 1, 2]
    await latch.wait()  # already set: returns at once
    latch.set()  # idempotent
    assert latch.is_set()


async def test_a_cancelled_latch_waiter_leaves_nothing_behind() -> None:
    latch = Latch()
    async with anyio.create_task_group() as tg:
        tg.start_soon(latch.wait)
        await settle()
        assert latch._waiters
        tg.cancel_scope.cancel()
    assert not latch._waiters  # the cancelled waiter removed itself
