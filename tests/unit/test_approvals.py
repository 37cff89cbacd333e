"""The approval waiting logic without a network: `Approvals` (wait, decide, timeout, stop),
which tools need approval, the executor's prepared calls for them, the settings, the lines
dispatcherctl prints."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio.lowlevel
import pytest

from dispatcher.config import ToolsConfig
from dispatcher.sessions.approvals import Approvals, Decided, Decision
from dispatcher.tools import PreparedCall, ToolExecutor, ToolOutcome, ToolRegistry, ToolSpec, default_registry
from dispatcherctl.render import decision_line
from dispatcherctl.stream import event_line
from shared import wire

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]

ALICE_YES = Decision(True, "fine", "operator:alice")


async def started_wait(approvals: Approvals, call_id: str, timeout_s: float = 10.0) -> asyncio.Task[Decision]:
    task = asyncio.get_running_loop().create_task(approvals.wait(call_id, timeout_s, "dispatcher:test"))
    await anyio.lowlevel.checkpoint()  # the task registers its wait
    assert approvals.is_waiting(call_id)
    return task


async def test_a_decision_ends_the_wait_and_a_second_one_is_already_decided() -> None:
    approvals = Approvals()
    task = await started_wait(approvals, "c1")
    assert approvals.decide("c1", ALICE_YES) == (Decided.DECIDED, ALICE_YES)
    # decided, but the waiting task has not resumed yet: the first decision stays in force
    assert approvals.decide("c1", Decision(False, "no", "operator:bob")) == (Decided.ALREADY_DECIDED, ALICE_YES)
    assert await task == ALICE_YES
    assert not approvals.is_waiting("c1") and len(approvals) == 0
    assert approvals.decide("c1", Decision(False, "no", "operator:bob")) == (Decided.ALREADY_DECIDED, ALICE_YES)


async def test_no_decision_within_the_timeout_is_a_timed_out_denial_by_the_dispatcher() -> None:
    approvals = Approvals()
    decision = await approvals.wait("c1", 0.01, "dispatcher:test")
    assert decision == Decision(False, "no decision within 0.01 s", "dispatcher:test", timed_out=True)
    assert approvals.decide("c1", ALICE_YES) == (Decided.ALREADY_DECIDED, decision)


async def test_a_cancelled_wait_propagates_and_is_remembered_as_not_awaiting() -> None:
    approvals = Approvals()
    task = await started_wait(approvals, "c1")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not approvals.is_waiting("c1")
    assert approvals.decide("c1", ALICE_YES) == (Decided.NOT_AWAITING, None)


async def test_an_unknown_call_is_unknown() -> None:
    assert Approvals().decide("zz", ALICE_YES) == (Decided.UNKNOWN, None)


async def test_calls_wait_apart() -> None:
    approvals = Approvals()
    first, second = await started_wait(approvals, "a"), await started_wait(approvals, "b")
    approvals.decide("b", Decision(False, "no", "backend:web"))
    assert (await second).reason == "no" and not first.done()
    approvals.decide("a", ALICE_YES)
    assert (await first).approved


def registry_with_marked_tools() -> ToolRegistry:
    registry = default_registry().copy()

    @registry.tool(requires_approval=True)
    def marked(args: dict[str, Any]) -> dict[str, Any]:
        return {"ran": True}

    @registry.tool()
    async def shell_run(args: dict[str, Any]) -> dict[str, Any]:
        return {}

    return registry


def test_which_tools_need_approval_marks_and_patterns() -> None:
    registry = registry_with_marked_tools()
    assert registry.get("marked") is not None and registry.get("marked").requires_approval  # type: ignore[union-attr]
    assert registry.approval == {"marked"}
    registry.approve_matching(["shell_*", "calc*"])
    assert registry.approval == {"marked", "shell_run", "calculator"}
    registry.register(ToolSpec(name="shell_late", func=lambda args: args, schema={"type": "object"}))
    assert "shell_late" in registry.approval  # a tool that comes later (an MCP server's) is covered too
    registry.approve_matching(["SHELL_*"])
    assert registry.approval == {"marked"}  # case-sensitive on every platform


async def test_the_executor_prepares_an_inline_call_that_needs_approval_and_runs_it_later() -> None:
    registry = registry_with_marked_tools()
    registry.approve_matching(["shell_run"])
    executor = ToolExecutor(registry)
    prepared = executor.prepare("c1", "marked", "{}")
    assert isinstance(prepared, PreparedCall) and prepared.needs_approval
    outcome = await executor.run(prepared)
    assert outcome.result_json == '{"ran":true}' and not outcome.is_error
    shell = executor.prepare("c2", "shell_run", "{}")
    assert isinstance(shell, PreparedCall) and shell.needs_approval
    echoed = executor.prepare("c3", "echo", "{}")  # unmarked inline: answered at once, as before
    assert isinstance(echoed, ToolOutcome) and echoed.result_json == "{}"
    invalid = executor.prepare("c4", "marked", "[1]")  # bad arguments never wait for a human
    assert isinstance(invalid, ToolOutcome) and invalid.is_error


@pytest.mark.parametrize("bad", [0, -1.0, math.nan])
def test_the_approval_timeout_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="approval timeout"):
        ToolsConfig(approval_timeout_s=bad)


def test_decision_lines_and_watch_lines() -> None:
    decided = wire.ctl.DecideToolCallResponse(
        session_id="s", result=wire.ctl.DECIDE_RESULT_DECIDED, decision=wire.ctl.ApprovalDecision(
            call_id="c1", approved=False, reason="not\non prod", decided_by="operator:alice"
        )
    )  # fmt: skip
    assert decision_line(decided, "c1") == "denied s c1: denied by operator:alice (not on prod)"
    timed_out = wire.ctl.DecideToolCallResponse(
        session_id="s",
        result=wire.ctl.DECIDE_RESULT_ALREADY_DECIDED,
        decision=wire.ctl.ApprovalDecision(call_id="c1", timed_out=True, decided_by="dispatcher:x"),
    )
    assert decision_line(timed_out, "c1") == "already decided s c1: timed out"
    idle = wire.ctl.DecideToolCallResponse(session_id="s", result=wire.ctl.DECIDE_RESULT_NOT_AWAITING)
    assert decision_line(idle, "c1").startswith("not awaiting approval s c1:")

    request = wire.ctl.SessionEvent(
        seq=3,
        approval_request=wire.ctl.ApprovalRequest(
            call_id="c1", tool_name="deploy", arguments_json='{"v": 1}', timeout_ms=1500
        ),
    )
    assert (
        event_line(request)
        == '#3 approval_request deploy {"v": 1} [c1] waits up to 1.5 s (dispatcherctl approve / deny)'
    )
    decision = wire.ctl.SessionEvent(seq=4, approval_decision=decided.decision)
    assert event_line(decision) == "#4 approval_decision denied by operator:alice (not on prod) [c1]"
