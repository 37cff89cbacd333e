"""The session outbox (bounded queue, urgent lane, one reader) and the one-shot Latch."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from dispatcher.sessions.latch import Latch
from dispatcher.sessions.outbox import Outbox, OutboxClosed
from shared import wire

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


def ack(seq: int) -> wire.pb.DownstreamPacket:
    return wire.pb.DownstreamPacket(ack=wire.pb.Ack(seq=seq))


def stop(stop_id: str) -> wire.pb.DownstreamPacket:
    return wire.pb.DownstreamPacket(stop=wire.pb.StopSignal(stop_id=stop_id))


async def drain(outbox: Outbox, seen: list[int | str] | None = None) -> list[int | str]:
    """Everything the reader gets until None, as it comes (into `seen`): ack seqs and stop ids."""
    seen = [] if seen is None else seen
    while (packet := await outbox.get()) is not None:
        seen.append(packet.ack.seq if packet.HasField("ack") else packet.stop.stop_id)
    return seen


async def settle() -> None:
    """Let every ready task run (no timing involved)."""
    for _ in range(10):
        await anyio.lowlevel.checkpoint()


async def test_offer_drops_once_full_and_the_reader_drains_in_order() -> None:
    outbox = Outbox(2)
    assert outbox.offer(ack(1)) and outbox.offer(ack(2))
    assert not outbox.offer(ack(3))  # full: an ack is dropped, the next one covers it
    outbox.finish()
    assert not outbox.offer(ack(4))
    assert await drain(outbox) == [1, 2]


async def test_urgent_packets_pass_the_bound_and_are_read_first() -> None:
    outbox = Outbox(1)
    outbox.push_urgent(stop("fits"))  # room left: keeps its place behind what is queued
    outbox.push_urgent(stop("over"))  # full: goes to the urgent lane, read first
    assert len(outbox) == 2
    outbox.finish()
    assert await drain(outbox) == ["over", "fits"]


async def test_put_waits_while_full_and_resumes_when_the_reader_takes_one() -> None:
    outbox = Outbox(1)
    await outbox.put(ack(1))
    done = anyio.Event()

    async def writer() -> None:
        await outbox.put(ack(2))
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await settle()
        assert not done.is_set()  # held back by the bound
        first = await outbox.get()
        assert first is not None and first.ack.seq == 1
        await done.wait()
    outbox.finish()
    assert await drain(outbox) == [2]


async def test_a_cancelled_writer_hands_its_wake_up_to_the_next() -> None:
    outbox = Outbox(1)
    await outbox.put(ack(1))
    written = anyio.Event()

    async def second() -> None:
        await outbox.put(ack(3))
        written.set()

    # Plain asyncio tasks: Task.cancel() lands even after the waiter's future was resolved,
    # which is the race this covers (anyio defers its cancellation until the task waits again).
    first = asyncio.get_running_loop().create_task(outbox.put(ack(2)))
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
    assert await drain(outbox) == [3]


async def test_close_fails_waiting_and_later_writers_and_ends_the_reader() -> None:
    outbox = Outbox(1)
    await outbox.put(ack(1))
    failures: list[str] = []

    async def writer() -> None:
        try:
            await outbox.put(ack(2))
        except OutboxClosed:
            failures.append("waiting writer")

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await settle()
        outbox.close()  # the RPC's reader went away
    assert failures == ["waiting writer"]
    with pytest.raises(OutboxClosed):
        await outbox.put(ack(3))
    outbox.push_urgent(stop("late"))  # nobody to tell: dropped without an error
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
        outbox.offer(ack(7))
        await settle()
        assert got == [7] and not drained.is_set()  # still reading: not finished yet
        outbox.finish()
    assert drained.is_set()


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


async def test_lend_only_while_the_reader_is_parked_with_nothing_queued() -> None:
    outbox = Outbox(4)
    assert not outbox.lend()  # no reader waiting: it may be writing right now
    got: list[int | str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, outbox, got)
        await settle()
        assert outbox.lend()
        assert not outbox.lend()  # one turn at a time
        outbox.offer(ack(1))  # queued behind the lent turn
        outbox.push_urgent(stop("s"))
        await settle()
        assert got == []  # the reader takes nothing while the turn is lent
        outbox.give_back()
        await settle()
        assert got == [1, "s"]  # in queue order (the urgent one fitted under the bound)
        outbox.offer(ack(2))
        assert not outbox.lend()  # something queued: it goes first, through the reader
        outbox.finish()
    assert got == [1, "s", 2]


async def test_a_turn_never_given_back_ends_the_reader_at_finish() -> None:
    """A lent write cut short (the session ending) keeps the turn: the reader must not write
    behind it, and ends when the outbox finishes."""
    outbox = Outbox(4)
    got: list[int | str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, outbox, got)
        await settle()
        assert outbox.lend()
        outbox.offer(ack(1))
        outbox.finish()
    assert got == []
