"""A session's downstream queue: many writers (the runner's pump, tool calls, timers), one reader
(the ChatStream handler, which yields each packet to grpc).

Why not an anyio memory object stream: that stream yields to the event loop on every
receive and send (a checkpoint) and builds an Event for every wait, both visible in
profiles of the hot path, and its state (a buffer plus two waiter dicts, two stream
objects) was a good part of an idle session's memory. This queue only allocates a future
when someone really has to wait.

Ordinary packets are bounded by `capacity`: `put` waits while the queue is full, which stops
the pump reading, so HTTP/2 flow control pushes back on the commander. Acks are `offer`ed
and simply dropped when the queue is full (acks are cumulative: the next one covers it).
Urgent packets (a stop and its ack, from timers or other sessions' callers, which must never
wait) go past the bound; at most a couple per session.

`lend()` hands the writer's turn to another task for one packet: only while the reader is
parked with nothing queued, i.e. when no write of the reader's is in flight. The session
task uses it to write a stop itself the moment it decides one, instead of waking the
reader, which under load runs a whole event-loop round later.
"""

from __future__ import annotations

import asyncio
from collections import deque

from shared import wire

__all__ = ["Outbox", "OutboxClosed"]

Packet = wire.pb.DownstreamPacket


class OutboxClosed(Exception):
    """The outbox takes no more packets: the session finished or the RPC's reader went away."""


class Outbox:
    __slots__ = ("_capacity", "_closed", "_finished", "_lent", "_queue", "_reader", "_urgent", "_writers")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"outbox capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._queue: deque[Packet] = deque()
        self._urgent: deque[Packet] | None = None  # only ever holds what overflowed the bound
        self._finished = False  # no more writes; the reader drains what is queued
        self._closed = False  # the reader is gone: writes fail, nothing more is read
        self._lent = False  # another task holds the writer's turn: the reader takes nothing
        self._reader: asyncio.Future[None] | None = None
        self._writers: deque[asyncio.Future[None]] | None = None

    def __len__(self) -> int:
        return len(self._queue) + (len(self._urgent) if self._urgent else 0)

    # -- writers ----------------------------------------------------------------------

    def offer(self, packet: Packet) -> bool:
        """Queue `packet` if there is room now; False (packet dropped) otherwise."""
        if self._finished or self._closed or len(self._queue) >= self._capacity:
            return False
        self._queue.append(packet)
        self._wake_reader()
        return True

    def push_urgent(self, packet: Packet) -> None:
        """Queue `packet` even past the bound (after what is queued, when it fits); never waits.
        Dropped when the outbox no longer accepts packets: there is nobody to tell."""
        if self._finished or self._closed:
            return
        if len(self._queue) < self._capacity:
            self._queue.append(packet)
        else:
            if self._urgent is None:
                self._urgent = deque()
            self._urgent.append(packet)  # the reader takes these before the queue
        self._wake_reader()

    async def put(self, packet: Packet) -> None:
        """Queue `packet`, waiting while the outbox is full; OutboxClosed once it no longer accepts."""
        while True:
            if self._finished or self._closed:
                raise OutboxClosed
            if len(self._queue) < self._capacity:
                self._queue.append(packet)
                self._wake_reader()
                return
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

    def lend(self) -> bool:
        """Take the writer's turn from the reader (True), if it is parked with nothing queued;
        the reader then takes nothing until `give_back()`. False: write through the queue."""
        reader = self._reader
        if self._lent or reader is None or reader.done() or self._queue or self._urgent:
            return False
        self._lent = True
        return True

    def give_back(self) -> None:
        """The lent write is done: the reader takes what was queued meanwhile."""
        self._lent = False
        self._wake_reader()

    def finish(self) -> None:
        """No more packets: the reader gets what is queued, then None."""
        self._finished = True
        self._wake_reader()
        self._wake_all_writers()

    # -- the reader -------------------------------------------------------------------

    async def get(self) -> Packet | None:
        """The next packet (urgent ones first); None once finished and drained, or closed."""
        while True:
            if self._closed:
                return None
            if not self._lent:
                if self._urgent:
                    return self._urgent.popleft()
                if self._queue:
                    packet = self._queue.popleft()
                    if self._writers:
                        self._wake_writer()
                    return packet
            if self._finished:
                return None  # a write still lent then was cut short: the RPC is ending anyway
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None

    def close(self) -> None:
        """The reader is gone (the RPC ended): writers fail with OutboxClosed from now on."""
        self._closed = True
        self._queue.clear()
        self._urgent = None
        self._wake_reader()
        self._wake_all_writers()

    # -- wake-ups ---------------------------------------------------------------------

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
