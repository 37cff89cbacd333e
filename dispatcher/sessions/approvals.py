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

import structlog

from dispatcher.core.journal import Journal
from dispatcher.tools import PreparedCall, ToolErrorCode, ToolExecutor, ToolOutcome
from shared import wire

__all__ = ["Approvals", "Decided", "Decision", "decide_response", "run_once_approved"]

log = structlog.get_logger("dispatcher.session")

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


async def run_once_approved(
    approvals: Approvals,
    call: PreparedCall,
    arguments_json: str,
    *,
    executor: ToolExecutor,
    journal: Journal,
    timeout_s: float,
    timed_out_by: str,
) -> ToolOutcome:
    """Journal the request, wait for the call's decision, journal it; then run the call, or
    answer DENIED / TIMEOUT. A stop cancels the wait like the call itself (journaled as
    dropped by `ToolTasks`)."""
    call_id, tool_name = call.call_id, call.spec.name
    request = wire.ctl.ApprovalRequest(
        call_id=call_id, tool_name=tool_name, arguments_json=arguments_json, timeout_ms=round(timeout_s * 1000)
    )
    journal.append("approval_request", request)
    log.info("tool.awaiting_approval", timeout_s=timeout_s)
    decision = await approvals.wait(call_id, timeout_s, timed_out_by)
    journal.append("approval_decision", decision_to_wire(call_id, decision))
    if decision.approved:
        return await executor.run(call)
    if decision.timed_out:
        message = f"tool {tool_name!r} needs approval and got no decision within {timeout_s:g} s"
        return ToolOutcome.failure(call_id, tool_name, ToolErrorCode.TIMEOUT, message)
    message = f"tool {tool_name!r} was denied by {decision.decided_by}: {decision.reason}"
    return ToolOutcome.failure(call_id, tool_name, ToolErrorCode.DENIED, message)


_DECIDE_RESULTS = {
    Decided.DECIDED: wire.ctl.DECIDE_RESULT_DECIDED,
    Decided.ALREADY_DECIDED: wire.ctl.DECIDE_RESULT_ALREADY_DECIDED,
    Decided.NOT_AWAITING: wire.ctl.DECIDE_RESULT_NOT_AWAITING,
}


def decide_response(
    session_id: str, call_id: str, decided: Decided, decision: Decision | None
) -> wire.ctl.DecideToolCallResponse:
    response = wire.ctl.DecideToolCallResponse(session_id=session_id, result=_DECIDE_RESULTS[decided])
    if decision is not None:
        response.decision.CopyFrom(decision_to_wire(call_id, decision))
    return response


def decision_to_wire(call_id: str, decision: Decision) -> wire.ctl.ApprovalDecision:
    return wire.ctl.ApprovalDecision(
        call_id=call_id,
        approved=decision.approved,
        reason=decision.reason,
        decided_by=decision.decided_by,
        timed_out=decision.timed_out,
    )
