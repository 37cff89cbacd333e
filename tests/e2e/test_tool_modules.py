"""`dispatcher serve --tools PACKAGE.MODULE:NAME`: the user's own tools, as subprocesses.

The README's tool example is taken from the README itself and run as written; a tool module
with a tool that swallows cancellation shows that the session still ends and frees its slot;
every bad `--tools` value is a one-line start-up error.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from shared import wire
from tests.conftest import RawSession, running_calls
from tests.e2e.conftest import DISPATCHER, DispatcherFactory

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(first_line: str) -> str:
    """The README code block whose first line is `first_line`."""
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        if block.startswith(first_line + "\n"):
            return str(block)
    raise AssertionError(f"no python block starting {first_line!r} in the README")


def run_dispatcher(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DISPATCHER), *args], cwd=cwd, capture_output=True, text=True, timeout=30)


STUBBORN = '''
import asyncio
from typing import Any

from dispatcher.tools import ToolRegistry

registry = ToolRegistry()


@registry.tool(timeout_s=600)
async def stubborn(args: dict[str, Any]) -> dict[str, Any]:
    """Swallows every cancellation."""
    while True:
        try:
            await asyncio.sleep(3600)  # sleep-ok: the stubborn tool under test, not a wait of the test
        except asyncio.CancelledError:
            continue
'''


async def test_the_readme_tool_example_is_served_as_written(
    tmp_path: Path, start_dispatcher: DispatcherFactory
) -> None:
    (tmp_path / "my_tools.py").write_text(readme_block("# my_tools.py"))
    listed = run_dispatcher("tools", "--tools", "my_tools:tools", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^weather: Current weather for a city\.", listed.stdout, re.M), listed.stdout
    assert '"required": ["city"]' in listed.stdout

    dispatcher = start_dispatcher("--tools", "my_tools:tools", cwd=tmp_path)
    async with grpc.aio.insecure_channel(dispatcher.address) as channel:
        raw = RawSession(channel)
        await raw.hello("weather")
        await raw.tool_call(2, "weather", '{"city": "Oslo"}', call_id="w1")
        result = (await raw.recv_kind("tool_result")).tool_result
        assert result.result_json == '{"city":"Oslo","temp_c":21}', result
        await raw.tool_call(3, "echo", "{}", call_id="e1")  # the built-ins are still there
        assert (await raw.recv_kind("tool_result")).tool_result.result_json == "{}"
        raw.call.cancel()


async def test_a_tool_that_swallows_cancellation_cannot_hold_a_session_or_the_shutdown(
    tmp_path: Path, start_dispatcher: DispatcherFactory
) -> None:
    (tmp_path / "stubborn_tools.py").write_text(STUBBORN)
    dispatcher = start_dispatcher(
        "--tools", "stubborn_tools:registry", "--server-max-sessions", "1", "--session-tool-cancel-grace-ms", "100",
        cwd=tmp_path,
    )  # fmt: skip
    async with grpc.aio.insecure_channel(dispatcher.address) as channel:
        held = RawSession(channel)
        await held.hello("stubborn")
        await held.tool_call(2, "stubborn", "{}", call_id="s1")
        assert await running_calls(channel, "stubborn") == ["s1"]
        control = wire.SessionControlServiceStub(channel)
        stopped = await control.StopSession(wire.ctl.StopSessionRequest(session_id="stubborn", reason="enough"))
        assert stopped.result == wire.ctl.STOP_RESULT_NOT_CONFIRMED  # the raw client never confirms
        dispatcher.wait_for_event("tool.abandoned", session_id="stubborn", call_id="s1")
        fresh = RawSession(channel)  # the only session slot is free again
        assert (await fresh.hello("next")).session_id == "next"
        fresh.call.cancel()
        held.call.cancel()
    dispatcher.send_signal(signal.SIGTERM)
    assert dispatcher.wait_exit(timeout=10) == 0, dispatcher.describe()  # the abandoned task does not hold it


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("no_colon", "expected PACKAGE.MODULE:NAME"),
        ("not_a_module_here:tools", "cannot import not_a_module_here: ModuleNotFoundError"),
        ("broken_tools:tools", "cannot import broken_tools: ZeroDivisionError"),
        ("bad_schema:tools", "invalid JSON schema"),
        ("my_tools:missing", "has no attribute 'missing'"),
        ("my_tools:NUMBER", "NUMBER is a int, not a ToolRegistry"),
        ("my_tools:tools", "'echo' is already registered"),
    ],
)
def test_a_bad_tools_value_is_a_one_line_start_up_error(tmp_path: Path, value: str, words: str) -> None:
    (tmp_path / "broken_tools.py").write_text("1 / 0\n")
    (tmp_path / "bad_schema.py").write_text(
        "from dispatcher.tools import ToolRegistry\ntools = ToolRegistry()\n"
        "@tools.tool(schema={'type': 'nonsense'})\ndef t(args): return args\n"
    )
    (tmp_path / "my_tools.py").write_text(
        "from dispatcher.tools import ToolRegistry\nNUMBER = 1\ntools = ToolRegistry()\n"
        "@tools.tool()\ndef echo(args): return args\n"  # clashes with the built-in
    )
    for command in (["tools"], ["serve", "--listen", "127.0.0.1:0"]):
        done = run_dispatcher(*command, "--tools", value, cwd=tmp_path)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.startswith("dispatcher: ")]
        assert len(lines) == 1 and words in lines[0] and value in lines[0], done.stderr
