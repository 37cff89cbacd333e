"""A one-shot flag that tasks can wait on, allocating nothing until someone does.

Every session has two of these (outcome decided, session done) and most are never awaited;
an `anyio.Event` on asyncio carries an `asyncio.Event` and its waiter deque (~0.8 KiB)
from birth, which at ten thousand sessions is memory for nothing.
"""

from __future__ import annotations

import asyncio

__all__ = ["Latch"]


class Latch:
    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
