"""Running the dispatcher's event loop as a process: the loop's end is bounded too.

`asyncio.run` ends by cancelling every task left and waiting for all of them without a
limit, so one tool that swallows cancellation would keep the process alive after a drain or a
forced exit. Here what is left gets one more cancellation and `_LEFTOVER_WAIT_S`; a task still
running then is abandoned (its name logged), and the process exits without waiting for it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import Any

import structlog

__all__ = ["run_process"]

log = structlog.get_logger("dispatcher")

_LEFTOVER_WAIT_S = 0.2


def run_process(main: Coroutine[Any, Any, int], *, use_uvloop: bool = False) -> int:
    """Run `main` to completion on a new loop and return its status; see the module's note."""
    if use_uvloop:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stubborn: list[str] = []
    status = 1  # unless main returns one
    try:
        status = loop.run_until_complete(main)
        return status
    finally:
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left, timeout=_LEFTOVER_WAIT_S))
            stubborn = [task.get_name() for task in left if not task.done()]
        if stubborn:
            log.warning("dispatcher.exit_abandoned_tasks", tasks=stubborn[:20], count=len(stubborn))
            sys.stdout.flush()
            sys.stderr.flush()
            # Closing the loop under a task that still runs would only log "Task was destroyed
            # but it is pending" for each; exiting now is what the bound promised.
            os._exit(status)
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
