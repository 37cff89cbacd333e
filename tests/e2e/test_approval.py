"""End to end: `dispatcherctl approve` / `deny` against a `dispatcher serve --tools ... --approve`
subprocess while a raw session's calls wait for approval; `dispatcherctl watch` shows the
request and the decision."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import grpc
import pytest

from shared import wire
from tests.conftest import RawSession
from tests.e2e.conftest import DispatcherFactory, DispatcherProcess
from tests.e2e.test_dispatcherctl import ctl, one_line_error

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

APPROVAL_TOOLS = '''
from typing import Any

from dispatcher.tools import ToolRegistry

registry = ToolRegistry()


@registry.tool(requires_approval=True)
async def deploy(args: dict[str, Any]) -> dict[str, Any]:
    """Deploys (pretends to)."""
    return {"deployed": args.get("version")}
'''


async def ctl_async(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(ctl, target, *args)


async def awaiting(dispatcher: DispatcherProcess, call_id: str) -> None:
    await asyncio.to_thread(dispatcher.wait_for_event, "tool.awaiting_approval", call_id=call_id)


async def test_dispatcherctl_approves_and_denies_waiting_calls(
    tmp_path: Path, start_dispatcher: DispatcherFactory
) -> None:
    (tmp_path / "approval_tools.py").write_text(APPROVAL_TOOLS)
    dispatcher = start_dispatcher("--tools", "approval_tools:registry", "--approve", "ech*", cwd=tmp_path)
    target = dispatcher.address
    async with grpc.aio.insecure_channel(target) as channel:
        raw = RawSession(channel)
        await raw.hello("e2e-approval")
        await raw.tool_call(2, "deploy", '{"version": "1.2"}', call_id="d1")
        await awaiting(dispatcher, "d1")

        approved = await ctl_async(target, "approve", "e2e-approval", "d1", "--reason", "release window")
        assert approved.returncode == 0, approved.stderr
        assert approved.stdout.startswith("approved e2e-approval d1: approved by operator:anonymous (release")
        result = (await raw.recv_kind("tool_result")).tool_result
        assert json.loads(result.result_json) == {"deployed": "1.2"}

        await raw.tool_call(3, "echo", '{"a": 1}', call_id="e1")  # --approve ech* makes a built-in wait
        await awaiting(dispatcher, "e1")
        usage = await ctl_async(target, "deny", "e2e-approval", "e1")
        assert usage.returncode == 2 and "--reason" in usage.stderr
        denied = await ctl_async(target, "deny", "e2e-approval", "e1", "--reason", "no echoes today", "--json")
        assert denied.returncode == 0, denied.stderr
        answer = json.loads(denied.stdout)
        assert answer["result"] == "DECIDE_RESULT_DECIDED" and answer["decision"]["reason"] == "no echoes today"
        result = (await raw.recv_kind("tool_result")).tool_result
        assert result.error.code == wire.pb.TOOL_ERROR_CODE_DENIED and "no echoes today" in result.error.message

        again = await ctl_async(target, "approve", "e2e-approval", "e1")
        assert again.returncode == 1
        assert again.stdout.startswith("already decided e2e-approval e1: denied by operator:anonymous")
        line = one_line_error(await ctl_async(target, "approve", "e2e-approval", "nope"), 4)
        assert "no tool call 'nope'" in line
        line = one_line_error(await ctl_async(target, "approve", "no-such-session", "d1"), 4)
        assert "no-such-session" in line

        await raw.content(4, "done", is_finish=True)
        await raw.status()

    watched = (await ctl_async(target, "watch", "e2e-approval")).stdout
    assert '#3 approval_request deploy {"version": "1.2"} [d1] waits up to 300 s' in watched, watched
    assert "approval_decision approved by operator:anonymous (release window) [d1]" in watched, watched
    assert "approval_decision denied by operator:anonymous (no echoes today) [e1]" in watched, watched
    assert "tool_result echo error DENIED:" in watched, watched
