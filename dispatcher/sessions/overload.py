"""Load shedding: how far behind the event loop runs, and whether new sessions should be refused.

One dispatcher process is one event loop. Past its capacity every session on it slows down
together: a paced agent's packets queue in HTTP/2 buffers and every round trip grows. Refusing
the *next* session clearly (RESOURCE_EXHAUSTED, retry later or elsewhere) keeps the running ones
inside their latency; taking it degrades all of them. The measure is the loop's own lag: a task
sleeps `interval_s` and records how late it woke. One late wake-up is a GC pause or a burst of
opens; `OVER_SAMPLES` in a row is an overload, and one sample under the limit ends it.
"""

from __future__ import annotations

import asyncio
import time

import structlog

__all__ = ["LoopLag"]

log = structlog.get_logger("dispatcher")

OVER_SAMPLES = 2


class LoopLag:
    """The event loop's lag, sampled every `interval_s`; `overloaded` once it stays over `limit_s`
    (0 = never: shedding off)."""

    __slots__ = ("_over", "interval_s", "lag_s", "limit_s")

    def __init__(self, limit_s: float, interval_s: float = 0.25) -> None:
        self.limit_s = limit_s
        self.interval_s = interval_s
        self.lag_s = 0.0  # the latest sample
        self._over = 0  # consecutive samples over the limit

    @property
    def overloaded(self) -> bool:
        return self._over >= OVER_SAMPLES

    def observe(self, lag_s: float) -> None:
        """One sample (also the seam the tests drive directly)."""
        was = self.overloaded
        self.lag_s = lag_s
        self._over = self._over + 1 if self.limit_s > 0 and lag_s > self.limit_s else 0
        if self.overloaded != was:
            lag_ms, limit_ms = round(lag_s * 1000), round(self.limit_s * 1000)
            if self.overloaded:
                log.warning("server.overloaded", loop_lag_ms=lag_ms, limit_ms=limit_ms, refusing="new sessions")
            else:
                log.info("server.recovered", loop_lag_ms=lag_ms, limit_ms=limit_ms)

    def refusal(self) -> str:
        return (
            f"dispatcher overloaded: its event loop runs {round(self.lag_s * 1000)} ms behind "
            f"(limit {round(self.limit_s * 1000)} ms); retry later or on another instance"
        )

    async def run(self) -> None:
        """Sample until cancelled (the dispatcher's shutdown)."""
        if self.limit_s <= 0:
            return
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.interval_s)
            self.observe(max(0.0, time.monotonic() - started - self.interval_s))
