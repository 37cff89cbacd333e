"""One timer task for every session of the process, instead of one task per session.

Sessions need wake-ups (the next sparse Ack, idle and wall-clock limits, the stop grace
period, the finish linger). A task per session costs a task, a coroutine frame and a
cancel scope re-armed on every ack cycle, times ten thousand sessions. Here a session
arms a deadline (monotonic seconds) and is called back at it; a deadline that is moved
earlier or withdrawn just leaves its old heap entry behind, and such stale entries are
skipped when they come up or swept when they outnumber the live ones. Entries hold their
session weakly: an ended session is never kept alive by a deadline it no longer needs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
import weakref
from typing import Protocol

import structlog

__all__ = ["TimerClient", "Timers"]

log = structlog.get_logger("dispatcher.sessions.timers")
_clock = time.monotonic
_SWEEP_MIN = 1024


class TimerClient(Protocol):
    def timer_fired(self, now: float) -> None: ...


class Timers:
    """A heap of (deadline, client); `run` calls each client back when its deadline passes."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, weakref.ref[TimerClient]]] = []
        self._armed: dict[int, float] = {}  # id(client) -> its live deadline
        self._order = itertools.count()
        self._wake: asyncio.Future[None] | None = None  # resolved to end the loop's sleep early
        self._sleeping_until = math.inf

    def arm(self, client: TimerClient, deadline: float) -> None:
        """Call `client.timer_fired` once `deadline` passes (replaces its previous deadline)."""
        self._armed[id(client)] = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), weakref.ref(client)))
        if deadline < self._sleeping_until:
            _resolve(self._wake)  # the loop sleeps past this deadline: wake it to sleep less
        if len(self._heap) > _SWEEP_MIN and len(self._heap) > 2 * len(self._armed):
            self._sweep()

    def disarm(self, client: TimerClient) -> None:
        self._armed.pop(id(client), None)

    def armed(self, client: TimerClient) -> float:
        return self._armed.get(id(client), math.inf)

    async def run(self) -> None:
        # A bare future and loop.call_later per sleep: anyio's Event plus move_on_after cost
        # ~6 µs per wake-up, thousands of times a second. (A delay, not call_at: uvloop's
        # loop clock is not time.monotonic.)
        loop = asyncio.get_running_loop()
        while True:
            now = _clock()
            heap = self._heap
            while heap and heap[0][0] <= now:
                deadline, _, ref = heapq.heappop(heap)
                client = ref()
                if client is None or self._armed.get(id(client)) != deadline:
                    continue  # gone, moved or withdrawn since
                del self._armed[id(client)]
                try:
                    client.timer_fired(now)
                except Exception:  # one session's bug must not stop every session's timers
                    log.exception("timers.callback_failed")
            self._sleeping_until = heap[0][0] if heap else math.inf
            self._wake = wake = loop.create_future()
            alarm = loop.call_later(self._sleeping_until - now, _resolve, wake) if heap else None
            try:
                await wake
            finally:
                self._wake = None
                if alarm is not None:
                    alarm.cancel()

    def _sweep(self) -> None:
        live = self._armed
        self._heap = [
            entry for entry in self._heap if (client := entry[2]()) is not None and live.get(id(client)) == entry[0]
        ]
        heapq.heapify(self._heap)


def _resolve(wake: asyncio.Future[None] | None) -> None:
    if wake is not None and not wake.done():
        wake.set_result(None)
