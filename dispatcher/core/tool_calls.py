"""One session's tool calls as the protocol sees them: which run, which ids were used, and
in what order results may go out. Sans-IO, a part of the session machine.

Calls with a `call_id` are answered as they finish. Calls without one (an original-contract
commander correlates by order) get the id `seq-<n>` and their results are released strictly
in request order: a result that finishes early waits for the calls before it.
"""

from __future__ import annotations

from collections import deque

from shared import wire
from shared.model import now_ms

__all__ = ["ToolCallBook"]


class ToolCallBook:
    __slots__ = ("_ordered", "_ordered_done", "_running", "_seen", "done_count", "started")

    def __init__(self) -> None:
        self._running: dict[str, bool] = {}  # call_id -> released in request order
        self._seen: set[str] = set()
        self._ordered: deque[str] | None = None  # ordered call ids still to be released
        self._ordered_done: dict[str, wire.pb.ToolCallResult] = {}
        self.started: dict[str, tuple[str, int]] = {}  # running call_id -> (tool, started_at_ms)
        self.done_count = 0

    @property
    def has_running(self) -> bool:
        return bool(self._running)

    def running(self) -> list[str]:
        return list(self._running)

    def is_duplicate(self, call_id: str) -> bool:
        return call_id in self._seen

    def mark_seen(self, call_id: str) -> None:
        """A call id an earlier process of this session used (a restart): never run again."""
        self._seen.add(call_id)

    def start(self, call_id: str, tool_name: str, *, ordered: bool) -> None:
        self._seen.add(call_id)
        self._running[call_id] = ordered
        self.started[call_id] = (tool_name, now_ms())
        if ordered:
            if self._ordered is None:
                self._ordered = deque()
            self._ordered.append(call_id)

    def finish(self, call_id: str, result: wire.pb.ToolCallResult) -> list[wire.pb.ToolCallResult] | None:
        """The results now free to go out, in order; None when the call is not running (it
        was cancelled by a stop or the session's end: its result must not be sent)."""
        ordered = self._running.pop(call_id, None)
        if ordered is None:
            return None
        self.started.pop(call_id, None)
        self.done_count += 1
        if not ordered:
            return [result]
        self._ordered_done[call_id] = result
        released = []
        while self._ordered and self._ordered[0] in self._ordered_done:
            released.append(self._ordered_done.pop(self._ordered.popleft()))
        return released

    def forget_running(self) -> list[wire.pb.ToolCallResult]:
        """Every running call is being cancelled: none of their results will be sent. Returns
        the finished results that were still waiting for an earlier call (never sent)."""
        held = list(self._ordered_done.values())
        self._running.clear()
        self.started.clear()
        if self._ordered:
            self._ordered.clear()
        self._ordered_done.clear()
        return held
