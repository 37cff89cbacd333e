"""A session's downstream queue: where the order of everything written to the stream is decided.

Many tasks put packets in (the session task, tool calls, timers, other sessions' callers);
exactly one takes them out: the ChatStream handler, the stream's only writer. Each packet
comes with its delivery class (`Delivery`, decided by the session machine), and this queue
is the one place that honours it:

- IN_ORDER packets (tool results, error signals, the Welcome, the Assignment) go out first
  in, first out. At most `capacity` wait; `put` then waits for room, which stops the session
  reading upstream, so HTTP/2 flow control pushes back on the commander.
- ACK packets never wait: at most one is queued, and a newer ack replaces its seq in place
  (acks are cumulative), so an ack is never lost to a full queue either.
- The URGENT packet (the stop) goes out before anything queued, whether the queue is full or
  not. From then on the queue is *sealed*: the in-order packets still queued are taken out
  and handed back to the caller as dropped, and later ones are refused the same way. Only
  acks may follow a stop.

So the journal can tell the truth: a packet handed back as dropped was never written, and
the reader reports each packet it wrote (`written`), which is when a tool result counts as
delivered. `flush()` waits until everything queued so far has been written, or the reader
is gone: the session uses it to learn whether the stream is still alive.

Why not an anyio memory object stream: that stream checkpoints on every send and receive
and builds an Event per wait, both visible in profiles of the hot path, and its state was a
good part of an idle session's memory. This queue allocates a future only to wait.
"""

from __future__ import annotations

import asyncio
from collections import deque

from shared import wire

__all__ = ["Outbox", "OutboxClosed"]

Packet = wire.pb.DownstreamPacket
_NOTHING: tuple[Packet, ...] = ()


class OutboxClosed(Exception):
    """The outbox takes no more packets: the RPC's writer is gone."""


class Outbox:
    __slots__ = (
        "_ack",
        "_capacity",
        "_closed",
        "_finished",
        "_flushers",
        "_in_flight",
        "_queue",
        "_reader",
        "_sealed",
        "_urgent",
        "_writers",
        "full_waits",
    )

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"outbox capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._queue: deque[Packet] = deque()  # in-order packets, and at most one ack among them
        self._ack: Packet | None = None  # the ack queued in `_queue`, while not yet taken
        self._urgent: Packet | None = None
        self._sealed = False  # a stop was queued: in-order packets are dropped from now on
        self._finished = False  # no more packets: the reader drains what is queued
        self._closed = False  # the reader is gone: nothing more is read or written
        self._in_flight = False  # the reader took a packet and has not reported it written
        self._reader: asyncio.Future[None] | None = None
        self._writers: deque[asyncio.Future[None]] | None = None
        self._flushers: list[asyncio.Future[bool]] | None = None
        self.full_waits = 0  # times a sender found the queue full and waited (a metric)

    def __len__(self) -> int:
        return len(self._queue) + (self._urgent is not None)

    @property
    def is_sealed(self) -> bool:
        return self._sealed

    # -- writers ----------------------------------------------------------------------

    async def put(self, packet: Packet) -> bool:
        """Queue an in-order packet, waiting while the queue is full. False: dropped, because a
        stop went out first (or the outbox finished). OutboxClosed once the reader is gone."""
        while True:
            if self._closed:
                raise OutboxClosed
            if self._sealed or self._finished:
                return False
            if self._in_order_count() < self._capacity:
                self._queue.append(packet)
                self._wake_reader()
                return True
            self.full_waits += 1
            waiter = asyncio.get_running_loop().create_future()
            if self._writers is None:
                self._writers = deque()
            self._writers.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_writer()  # we were handed a free slot but leave: pass it on
                elif self._writers is not None and waiter in self._writers:
                    self._writers.remove(waiter)
                raise

    def put_nowait(self, packet: Packet) -> bool:
        """Queue an in-order packet if there is room now (the Assignment, before anything else)."""
        if self._closed or self._sealed or self._finished or self._in_order_count() >= self._capacity:
            return False
        self._queue.append(packet)
        self._wake_reader()
        return True

    def preload(self, packets: list[Packet]) -> None:
        """Queue in-order packets whatever the capacity: what a resumed stream re-sends (a new
        outbox, before its reader starts; the replay buffer bounds how many)."""
        if self._closed or self._sealed or self._finished:
            return
        self._queue.extend(packets)
        self._wake_reader()

    def seal(self) -> None:
        """Take no more in-order packets (a resumed stream whose stop is already queued)."""
        self._sealed = True
        self._wake_all_writers()

    def push_ack(self, packet: Packet) -> None:
        """Queue a cumulative ack; one still queued takes its seq instead. Never waits."""
        if self._closed or self._finished:
            return
        queued = self._ack
        if queued is not None:
            queued.ack.seq = packet.ack.seq
            return
        self._ack = packet
        self._queue.append(packet)
        self._wake_reader()

    def push_urgent(self, packet: Packet) -> tuple[Packet, ...]:
        """Queue the stop ahead of everything and seal the queue. Returns the in-order packets
        it displaced (never written). Never waits."""
        if self._closed or self._finished or self._urgent is not None:
            return _NOTHING
        self._urgent = packet
        self._sealed = True
        dropped = tuple(p for p in self._queue if p is not self._ack)
        if dropped:
            self._queue = deque(p for p in self._queue if p is self._ack)
        self._wake_reader()
        self._wake_all_writers()  # they find the queue sealed: their packets are dropped
        return dropped

    def finish(self) -> None:
        """No more packets: the reader gets what is queued, then None."""
        self._finished = True
        self._wake_reader()
        self._wake_all_writers()

    async def flush(self) -> bool:
        """True once everything queued so far has been written; False if the reader went away
        first (the RPC is over). Waits as long as the reader takes: bound it from outside."""
        if self._closed:
            return False
        if self._is_drained():
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._flushers is None:
            self._flushers = []
        self._flushers.append(waiter)
        try:
            return await waiter
        finally:
            if self._flushers is not None and waiter in self._flushers:
                self._flushers.remove(waiter)

    # -- the reader -------------------------------------------------------------------

    async def get(self) -> Packet | None:
        """The next packet to write (the stop first); None once finished and drained, or closed.
        Call `written()` once the packet is on the stream."""
        while True:
            if self._closed:
                return None
            urgent = self._urgent
            if urgent is not None:
                self._urgent = None
                self._in_flight = True
                return urgent
            if self._queue:
                packet = self._queue.popleft()
                if packet is self._ack:
                    self._ack = None
                elif self._writers:
                    self._wake_writer()
                self._in_flight = True
                return packet
            if self._finished:
                return None
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None

    def written(self) -> None:
        """The packet last taken is on the stream."""
        self._in_flight = False
        if self._flushers and self._is_drained():
            self._resolve_flushers(True)

    def close(self) -> tuple[Packet, ...]:
        """The reader is gone (the RPC ended). Returns the in-order packets never written (the
        one in flight, if any, among them); writers fail with OutboxClosed from now on."""
        if self._closed:
            return _NOTHING
        self._closed = True
        left = tuple(p for p in self._queue if p is not self._ack)
        self._queue.clear()
        self._ack = None
        self._urgent = None
        self._wake_reader()
        self._wake_all_writers()
        self._resolve_flushers(False)
        return left

    # -- internals ----------------------------------------------------------------------

    def _in_order_count(self) -> int:
        return len(self._queue) - (self._ack is not None)

    def _is_drained(self) -> bool:
        return not self._queue and self._urgent is None and not self._in_flight

    def _resolve_flushers(self, result: bool) -> None:
        flushers, self._flushers = self._flushers, None
        for waiter in flushers or ():
            if not waiter.done():
                waiter.set_result(result)

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _wake_writer(self) -> None:
        writers = self._writers
        while writers:
            waiter = writers.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _wake_all_writers(self) -> None:
        writers, self._writers = self._writers, None
        for waiter in writers or ():
            if not waiter.done():
                waiter.set_result(None)
