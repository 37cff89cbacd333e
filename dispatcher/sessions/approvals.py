"""One session's tool calls waiting for a human decision, by call id.

A call that needs approval waits in its own tool task (`wait`), before its tool runs; the
control plane decides it from another task (`decide`), which never waits. A stop or the
session's end cancels the waiting task like any tool call: the wait then ends without a
decision and the call is remembered as stopped (a later decision is told NOT_AWAITING).
asyncio only, like the rest of the dispatcher (docs/architecture.md, "Cancellation").
"""

from __future__ import annotations

import asyncio
import enum
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Approvals", "Decided", "Decision"]

# Decisions remembered per session after their call moved on, so that a second decision
# gets a defined answer (ALREADY_DECIDED) rather than NOT_FOUND; oldest forgotten first.
_KEPT = 1024


@dataclass(frozen=True, slots=True)
class Decision:
    approved: bool
    reason: str
    decided_by: str
    timed_out: bool = False


class Decided(enum.Enum):
    """What a `decide` call did (DecideResult in control.proto)."""

    DECIDED = "decided"
    ALREADY_DECIDED = "already_decided"
    NOT_AWAITING = "not_awaiting"
    UNKNOWN = "unknown"  # the session has no such call waiting, decided or stopped


class Approvals:
    __slots__ = ("_closed", "_waiting")

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[Decision]] = {}
        # call id -> the decision in force, or None for a call stopped while it waited
        self._closed: OrderedDict[str, Decision | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def is_waiting(self, call_id: str) -> bool:
        return call_id in self._waiting

    async def wait(self, call_id: str, timeout_s: float, timed_out_by: str) -> Decision:
        """Wait for `call_id`'s decision, at most `timeout_s`; then the timeout decides (a
        denial by `timed_out_by`). Cancellation (a stop) propagates, recorded as no decision."""
        decision: Decision | None = None
        future = self._waiting[call_id] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout_s):
                decision = await future
        except TimeoutError:
            decision = Decision(False, f"no decision within {timeout_s:g} s", timed_out_by, timed_out=True)
        finally:
            del self._waiting[call_id]
            self._remember(call_id, decision)
        return decision

    def decide(self, call_id: str, decision: Decision) -> tuple[Decided, Decision | None]:
        """Decide a waiting call (never waits). Returns what happened and the decision in force."""
        future = self._waiting.get(call_id)
        if future is not None and not future.done():
            future.set_result(decision)
            return Decided.DECIDED, decision
        if future is not None:  # decided in this loop iteration; its task has not resumed yet
            return Decided.ALREADY_DECIDED, future.result()
        if call_id in self._closed:
            earlier = self._closed[call_id]
            return (Decided.NOT_AWAITING, None) if earlier is None else (Decided.ALREADY_DECIDED, earlier)
        return Decided.UNKNOWN, None

    def _remember(self, call_id: str, decision: Decision | None) -> None:
        self._closed[call_id] = decision
        while len(self._closed) > _KEPT:
            self._closed.popitem(last=False)
