"""Free pool commanders (`commander serve`) and the callers waiting for one.

A pool stream opens with `Hello{awaits_assignment: true}` and then waits, idle, in
`free`. StartSession/Ask take the longest-idle slot, or wait for one up to a bounded
time; at most `max_waiting` callers wait at once, so a burst with no free commander is
refused at once instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from dispatcher.sessions.runner import SessionRunner
from shared import wire
from shared.errors import NoFreeCommander

__all__ = ["CommanderPool", "PoolSlot"]


@dataclass(eq=False, slots=True)
class PoolSlot:
    """One idle pool stream; `assigned` fires when a session is handed to it or it must end."""

    hello: wire.pb.UpstreamPacket
    requests: AsyncIterator[wire.pb.UpstreamPacket]
    peer: str
    commander: str
    assigned: asyncio.Event = field(default_factory=asyncio.Event)
    runner: SessionRunner | None = None
    refusal: str = ""  # set instead of a runner when the slot must end (shutdown)
    gone: bool = False

    def hand(self, runner: SessionRunner) -> None:
        self.runner = runner
        self.assigned.set()

    def on_rpc_done(self, _context: Any) -> None:
        """The pool stream ended (commander left, connection lost): leave the pool, or end the
        session it was just handed."""
        self.gone = True
        if self.runner is not None:
            self.runner.peer_gone("the pool commander went away")
        elif not self.assigned.is_set():
            self.refuse("the pool commander went away")

    def refuse(self, reason: str) -> None:
        self.refusal = reason
        self.assigned.set()


class CommanderPool:
    """Idle pool slots, longest-idle first, and a bounded set of waiting callers."""

    def __init__(self, *, max_waiting: int) -> None:
        self._free: OrderedDict[int, PoolSlot] = OrderedDict()
        self._max_waiting = max_waiting
        self._waiting = 0
        self._changed = asyncio.Event()

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def waiting_count(self) -> int:
        """Callers waiting for a free commander now."""
        return self._waiting

    def add(self, slot: PoolSlot) -> None:
        self._free[id(slot)] = slot
        self._changed.set()
        self._changed = asyncio.Event()

    def remove(self, slot: PoolSlot) -> None:
        self._free.pop(id(slot), None)

    async def take(self, wait_s: float) -> PoolSlot | None:
        """The longest-idle free slot, waiting up to `wait_s`; None when none came.

        Raises NoFreeCommander when `max_waiting` callers are already waiting.
        """
        while self._free:
            slot = self._free.popitem(last=False)[1]
            if not slot.gone:
                return slot
        if self._waiting >= self._max_waiting:
            raise NoFreeCommander(f"no free commander and {self._waiting} callers already waiting for one; retry later")
        self._waiting += 1
        try:
            async with asyncio.timeout(wait_s):
                while True:
                    while self._free:
                        slot = self._free.popitem(last=False)[1]
                        if not slot.gone:
                            return slot
                    await self._changed.wait()
        except TimeoutError:
            return None
        finally:
            self._waiting -= 1

    def close(self, reason: str) -> None:
        """End every idle slot (shutdown)."""
        while self._free:
            self._free.popitem(last=False)[1].refuse(reason)
