"""`--mcp` with real processes: `dispatcher tools --mcp` lists a server's tools, a bad value is a
one-line start-up error, and `dispatcher serve` serves the published reference server
@modelcontextprotocol/server-filesystem (installed by `make node-deps` from interop/node's
lockfile). Without node or that package the reference test skips, except in CI (CI=true),
where it fails: CI must run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from shared import wire
from tests.conftest import RawSession
from tests.e2e.conftest import DISPATCHER, ENV, ROOT, DispatcherFactory

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SERVER = ROOT / "tests" / "mcp_server.py"
FILESYSTEM = ROOT / "interop" / "node" / "node_modules" / "@modelcontextprotocol" / "server-filesystem"


def _filesystem_server_or_skip() -> tuple[str, Path]:
    node = shutil.which("node")
    entry = FILESYSTEM / "dist" / "index.js"
    missing = None
    if node is None:
        missing = "node is not on PATH (install Node.js 20+)"
    elif not entry.is_file():
        missing = f"{entry} is missing"
    if missing is None:
        assert node is not None
        return node, entry
    message = f"{missing}: run `make node-deps` (npm ci in interop/node)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the MCP reference-server test, but {message}")
    pytest.skip(message)


def test_dispatcher_tools_lists_an_mcp_servers_tools(tmp_path: Path) -> None:
    value = f"demo=stdio:{sys.executable} {SERVER} {tmp_path / 'record'}"
    result = subprocess.run(
        [str(DISPATCHER), "tools", "--mcp", value], capture_output=True, text=True, timeout=30, env=ENV
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "demo.add: Add two integers (structured result). (timeout 60 s)" in lines, result.stdout
    schema = json.loads(lines[lines.index("demo.add: Add two integers (structured result). (timeout 60 s)") + 1][10:])
    assert schema["required"] == ["a", "b"]
    assert any(line.startswith("calculator: ") for line in lines)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nonsense", "expected [PREFIX=]stdio:COMMAND ARGS or [PREFIX=]http:URL"),
        ("x=stdio:/no/such/mcp-server", "cannot connect: FileNotFoundError"),
    ],
)
def test_a_bad_mcp_value_is_a_one_line_start_up_error(value: str, message: str) -> None:
    result = subprocess.run(
        [str(DISPATCHER), "serve", "--listen", "127.0.0.1:0", "--mcp", value],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dispatcher: --mcp ") and message in last, result.stderr


async def test_the_reference_filesystem_server_reads_a_file(
    tmp_path: Path, start_dispatcher: DispatcherFactory
) -> None:
    node, entry = _filesystem_server_or_skip()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note.txt").write_text("hello from MCP\n")
    dispatcher = start_dispatcher("--mcp", f"fs=stdio:{node} {entry} {shared}")
    async with grpc.aio.insecure_channel(dispatcher.address) as channel:
        raw = RawSession(channel)
        await raw.hello("mcp-fs")
        path = json.dumps({"path": str(shared / "note.txt")})
        await raw.tool_call(2, "fs.read_text_file", path, call_id="r1")
        result = (await raw.recv_kind("tool_result")).tool_result
        assert not result.HasField("error"), result
        assert "hello from MCP" in result.result_json, result
        outside = json.dumps({"path": "/etc/hostname"})
        await raw.tool_call(3, "fs.read_text_file", outside, call_id="r2")  # the server's own refusal
        refused = (await raw.recv_kind("tool_result")).tool_result
        assert refused.error.code == wire.pb.TOOL_ERROR_CODE_FAILED and refused.error.message, refused
        await raw.tool_call(4, "fs.read_text_file", "{}", call_id="r3")  # the schema requires `path`
        invalid = (await raw.recv_kind("tool_result")).tool_result
        assert invalid.error.code == wire.pb.TOOL_ERROR_CODE_INVALID_ARGUMENTS, invalid
