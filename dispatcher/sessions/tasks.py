"""The dispatcher's session tasks: started per stream, cancelled and awaited at shutdown.

Plain asyncio tasks in a set rather than children of the root anyio task group: on anyio
4.16 `TaskGroup.start_soon` costs ~20 µs and an `asyncio.Event` (~0.8 KiB) per task, paid
by every session a process opens and kept by every idle one. The structure is the same:
`aclose()` (from the dispatcher's shutdown) cancels whatever is left and waits for it, for a
bounded time: a session task bounds its own cleanup, so none should need it, and the process
exits all the same. A session task handles its own errors (`SessionRunner.run` logs a crash
and records the outcome).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

__all__ = ["SessionTasks"]

log = structlog.get_logger("dispatcher")


class SessionTasks:
    __slots__ = ("_closed", "_tasks")

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        if self._closed:
            work.close()
            raise RuntimeError("the dispatcher has shut down; no new session tasks")
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # pragma: no cover - run() catches its own
            log.error("session.task_failed", task=task.get_name(), error=repr(task.exception()))

    async def aclose(self, grace_s: float) -> list[str]:
        """Cancel every session task still running and wait up to `grace_s` for them to end;
        the names of those still running then."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        return [task.get_name() for task in tasks if not task.done()]
