"""`--mcp`: a real MCP server process (tests/mcp_server.py, the SDK's MCPServer) behind a real
in-process dispatcher, over stdio and over streamable HTTP.

The server appends what it saw to a record file (`call NAME`, `cancelled NAME`, `start`), so
each test checks the server's side too: no call for invalid arguments, `notifications/cancelled`
for a stopped call, a second `start` after a crash.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from dispatcher.app import Dispatcher
from dispatcher.tools.mcp import McpStartError
from shared import wire
from tests.conftest import WAIT_S, RawSession, running_dispatcher, test_config, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(45)]

SERVER = Path(__file__).resolve().parents[1] / "mcp_server.py"


def seen(record: Path) -> list[str]:
    """What the MCP server recorded so far, one entry a line."""
    return record.read_text().splitlines() if record.exists() else []


def stdio_value(record: Path, prefix: str = "t") -> str:
    return f"{prefix}=stdio:{sys.executable} {SERVER} {record}"


async def call(raw: RawSession, seq: int, tool: str, args: dict[str, Any], call_id: str) -> wire.pb.ToolCallResult:
    await raw.tool_call(seq, tool, json.dumps(args), call_id=call_id)
    result = (await raw.recv_kind("tool_result")).tool_result
    assert result.call_id == call_id
    return result


async def session(d: Dispatcher, channel: grpc.aio.Channel, session_id: str) -> RawSession:
    raw = RawSession(channel)
    await raw.hello(session_id)
    return raw


@asynccontextmanager
async def serving(record: Path, session_id: str) -> AsyncIterator[tuple[Dispatcher, grpc.aio.Channel, RawSession]]:
    """A dispatcher serving the test server over stdio, a channel to it and a session on that."""
    async with (
        running_dispatcher(test_config(tools={"mcp": (stdio_value(record),)})) as d,
        grpc.aio.insecure_channel(d.address) as ch,
    ):
        yield d, ch, await session(d, ch, session_id)


@asynccontextmanager
async def slow_call(record: Path, session_id: str) -> AsyncIterator[tuple[grpc.aio.Channel, RawSession]]:
    """A session whose `t.slow` call is under way; on leaving, the server must have seen it cancelled."""
    async with serving(record, session_id) as (_, ch, raw):
        await raw.tool_call(2, "t.slow", "{}", call_id="s1")
        await wait_until(lambda: "call slow" in seen(record), "the server got the call")
        yield ch, raw
        await wait_until(lambda: "cancelled slow" in seen(record), "the server saw notifications/cancelled")


async def test_the_servers_tools_are_served_namespaced_with_their_schemas(tmp_path: Path) -> None:
    record = tmp_path / "record"
    async with running_dispatcher(test_config(tools={"mcp": (stdio_value(record),)})) as d:
        names = d.tools.names()
        assert {"t.echo", "t.add", "t.fail", "t.slow", "t.crash", "t.grow"} <= set(names), names
        assert "calculator" in names  # the built-ins are still served
        add = d.tools.get("t.add")
        assert add is not None and add.description == "Add two integers (structured result)."
        assert add.schema["required"] == ["a", "b"]
        assert add.schema["properties"]["a"]["type"] == "integer"


async def test_results_errors_and_invalid_arguments_map_to_tool_results(tmp_path: Path) -> None:
    record = tmp_path / "record"
    async with serving(record, "mcp-results") as (_d, _, raw):
        added = await call(raw, 2, "t.add", {"a": 2, "b": 40}, "c1")
        assert not added.HasField("error") and json.loads(added.result_json) == {"sum": 42}  # structuredContent
        echoed = await call(raw, 3, "t.echo", {"text": "hi"}, "c2")
        assert json.loads(echoed.result_json) == {"result": "hi"}

        failed = await call(raw, 4, "t.fail", {"message": "the disk is on fire"}, "c3")
        assert failed.error.code == wire.pb.TOOL_ERROR_CODE_FAILED
        assert "the disk is on fire" in failed.error.message  # the tool's own text, for the model

        invalid = await call(raw, 5, "t.add", {"a": "two"}, "c4")
        assert invalid.error.code == wire.pb.TOOL_ERROR_CODE_INVALID_ARGUMENTS, invalid
        assert seen(record).count("call add") == 1  # the invalid call never reached the server

        after = await call(raw, 6, "t.echo", {"text": "still here"}, "c5")  # the stream lives on
        assert json.loads(after.result_json) == {"result": "still here"}


async def test_a_stop_during_a_slow_call_sends_notifications_cancelled(tmp_path: Path) -> None:
    record = tmp_path / "record"
    async with slow_call(record, "mcp-stop") as (ch, raw):
        control = wire.SessionControlServiceStub(ch)
        stopping = asyncio.ensure_future(
            control.StopSession(wire.ctl.StopSessionRequest(session_id="mcp-stop", reason="enough"))
        )
        stop = (await raw.recv_kind("stop")).stop
        await wait_until(lambda: "cancelled slow" in seen(record), "the server saw notifications/cancelled")
        await raw.send(wire.pb.UpstreamPacket(seq=3, stop_confirm=wire.pb.StopConfirm(stop_id=stop.stop_id)))
        assert (await asyncio.wait_for(stopping, WAIT_S)).result == wire.ctl.STOP_RESULT_CONFIRMED


async def test_the_calls_timeout_sends_notifications_cancelled(tmp_path: Path) -> None:
    record = tmp_path / "record"
    async with serving(record, "mcp-timeout") as (_d, _, raw):
        await raw.tool_call(2, "t.slow", "{}", call_id="s1", timeout_ms=300)
        result = (await raw.recv_kind("tool_result")).tool_result
        assert result.error.code == wire.pb.TOOL_ERROR_CODE_TIMEOUT, result
        await wait_until(lambda: "cancelled slow" in seen(record), "the server saw notifications/cancelled")


async def test_the_caller_gone_mid_call_sends_notifications_cancelled(tmp_path: Path) -> None:
    async with slow_call(tmp_path / "record", "mcp-gone") as (_, raw):
        raw.call.cancel()


async def test_a_server_that_exits_is_restarted_and_is_unavailable_meanwhile(tmp_path: Path) -> None:
    record = tmp_path / "record"
    async with (
        running_dispatcher(test_config(tools={"mcp": (stdio_value(record),)})) as d,
        grpc.aio.insecure_channel(d.address) as ch,
    ):
        (connection,) = d.mcp
        raw = await session(d, ch, "mcp-restart")
        crashed = await call(raw, 2, "t.crash", {}, "c1")
        assert crashed.error.code == wire.pb.TOOL_ERROR_CODE_FAILED
        assert crashed.error.message.startswith("unavailable:"), crashed
        # The restarted server waits for the release file before it serves: down meanwhile.
        await wait_until(lambda: seen(record).count("start") == 2, "the server was started again")
        down = await call(raw, 3, "t.echo", {"text": "x"}, "c2")
        assert down.error.code == wire.pb.TOOL_ERROR_CODE_FAILED
        assert down.error.message.startswith("unavailable:") and "'t'" in down.error.message, down
        assert "t.echo" in d.tools  # still listed while down
        (tmp_path / "record.release").touch()
        await wait_until(lambda: connection.connects == 2, "reconnected")
        back = await call(raw, 4, "t.echo", {"text": "back"}, "c3")
        assert json.loads(back.result_json) == {"result": "back"}, back


async def test_a_tool_list_change_is_picked_up(tmp_path: Path) -> None:
    record = tmp_path / "record"
    async with serving(record, "mcp-grow") as (d, _, raw):
        assert "t.extra" not in d.tools
        grown = await call(raw, 2, "t.grow", {}, "c1")
        assert not grown.HasField("error"), grown
        await wait_until(lambda: "t.extra" in d.tools, "the new tool listed")
        extra = await call(raw, 3, "t.extra", {"n": 41}, "c2")
        assert json.loads(extra.result_json) == {"result": 42}, extra


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The test server over streamable HTTP on 127.0.0.1 (a port the kernel picked)."""
    record, port_file = tmp_path / "http-record", tmp_path / "port"
    process = subprocess.Popen(
        [sys.executable, str(SERVER), str(record), "--http", str(port_file)], stdin=subprocess.DEVNULL
    )
    try:
        for _ in range(int(WAIT_S / 0.01)):  # a bounded poll: the port file is written once bound
            if port_file.exists() and port_file.read_text().endswith("\n"):
                break
            if process.poll() is not None:
                raise AssertionError(f"the HTTP MCP server exited with {process.returncode}")
            time.sleep(0.01)  # sleep-ok: polling a file another process writes, bounded
        else:
            raise AssertionError("the HTTP MCP server did not bind")
        yield f"http://127.0.0.1:{int(port_file.read_text())}/mcp", record
    finally:
        process.terminate()
        process.wait(timeout=WAIT_S)


async def test_over_streamable_http(http_server: tuple[str, Path]) -> None:
    url, record = http_server
    async with (
        running_dispatcher(test_config(tools={"mcp": (f"web=http:{url}",)})) as d,
        grpc.aio.insecure_channel(d.address) as ch,
    ):
        assert {"web.echo", "web.add"} <= set(d.tools.names())
        raw = await session(d, ch, "mcp-http")
        added = await call(raw, 2, "web.add", {"a": 1, "b": 2}, "c1")
        assert json.loads(added.result_json) == {"sum": 3}
        failed = await call(raw, 3, "web.fail", {"message": "nope"}, "c2")
        assert failed.error.code == wire.pb.TOOL_ERROR_CODE_FAILED and "nope" in failed.error.message
        await raw.tool_call(4, "web.slow", "{}", call_id="s1", timeout_ms=300)
        timed_out = (await raw.recv_kind("tool_result")).tool_result
        assert timed_out.error.code == wire.pb.TOOL_ERROR_CODE_TIMEOUT
        await wait_until(lambda: "cancelled slow" in seen(record), "the server saw notifications/cancelled")


async def test_an_unreachable_server_is_a_start_up_error(tmp_path: Path) -> None:
    dispatcher = Dispatcher(test_config(tools={"mcp": (f"x=stdio:{tmp_path / 'missing'}",)}))
    with pytest.raises(McpStartError, match="cannot connect: FileNotFoundError"):
        await asyncio.wait_for(dispatcher.serve(), WAIT_S)


async def test_approve_patterns_cover_an_mcp_servers_tools(tmp_path: Path) -> None:
    """`--approve 't.*'`: the MCP tools, registered after the dispatcher was built, wait for a decision."""
    record = tmp_path / "record"
    config = test_config(tools={"mcp": (stdio_value(record),), "approve": ("t.add",)})
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = await session(d, ch, "mcp-approve")
        await raw.tool_call(2, "t.add", json.dumps({"a": 1, "b": 2}), call_id="a1")
        stub = wire.SessionControlServiceStub(ch)
        watch = stub.WatchSession(wire.ctl.WatchSessionRequest(session_id="mcp-approve"))
        async for response in watch:
            if response.event.HasField("approval_request"):
                assert response.event.approval_request.call_id == "a1"
                break
        watch.cancel()
        assert "call add" not in seen(record)  # nothing reached the server before the decision
        await stub.DecideToolCall(wire.ctl.DecideToolCallRequest(session_id="mcp-approve", call_id="a1", approve=True))
        result = (await raw.recv_kind("tool_result")).tool_result
        assert json.loads(result.result_json) == {"sum": 3}
        raw.call.cancel()
