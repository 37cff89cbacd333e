"""The chaos tool: `chaos_record` writes each execution's call id on the tool side.

`dispatcher serve --tools scripts.chaos.tools:tools` (from the repository root) with
`CHAOS_TOOL_LOG=/path/file`: every execution appends `start SESSION CALL_ID N`, then `done ...`
when it returns or `cancelled ...` when it is cancelled (a stop, the session's end), one line
each. A harness counts `start` lines per (session, call id): a call executed twice shows twice,
whatever the journal says. The call holds the tool for `hold_ms` (so a fault can land mid-call).

The session and call ids come from the log context the dispatcher binds in each tool task
(`session_id`, `call_id`: the ids of the journal); `key`, when the caller passes one, is recorded
instead of a missing call id.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import structlog

from dispatcher.tools import ToolRegistry

__all__ = ["ENV", "FileSink", "chaos_registry", "tools"]

ENV = "CHAOS_TOOL_LOG"
Sink = Callable[[str, str, str, int], None]  # (event, session_id, call_id, n)

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer"}, "hold_ms": {"type": "integer", "minimum": 0}, "key": {"type": "string"}},
    "required": ["n"],
}


class FileSink:
    """Appends one line per event to a file (O_APPEND: lines from many tasks never interleave)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def __call__(self, event: str, session_id: str, call_id: str, n: int) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self._fd, f"{event} {session_id} {call_id} {n}\n".encode())


def _env_sink(event: str, session_id: str, call_id: str, n: int) -> None:
    path = os.environ.get(ENV)
    if not path:
        return  # served without a log: the tool still works, nothing is counted
    global _file_sink
    if _file_sink is None or _file_sink.path != path:
        _file_sink = FileSink(path)
    _file_sink(event, session_id, call_id, n)


_file_sink: FileSink | None = None


def chaos_registry(sink: Sink = _env_sink, registry: ToolRegistry | None = None) -> ToolRegistry:
    """A registry with `chaos_record` writing to `sink` (in-process tests pass their own)."""
    registry = registry if registry is not None else ToolRegistry()

    @registry.tool(schema=SCHEMA, timeout_s=120, max_concurrency=100_000)
    async def chaos_record(args: dict[str, Any]) -> dict[str, Any]:
        """Records its execution (session, call id) on the tool side, holds for hold_ms, returns n."""
        bound = structlog.contextvars.get_contextvars()
        session_id = str(bound.get("session_id", "?"))
        call_id = str(bound.get("call_id") or args.get("key") or "?")
        n = int(args["n"])
        sink("start", session_id, call_id, n)
        try:
            await asyncio.sleep(int(args.get("hold_ms", 0)) / 1000)  # the tool's work
        except asyncio.CancelledError:
            sink("cancelled", session_id, call_id, n)
            raise
        sink("done", session_id, call_id, n)
        return {"n": n, "call_id": call_id}

    return registry


tools = chaos_registry()
