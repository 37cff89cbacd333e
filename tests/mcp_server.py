"""An MCP server for the tests, written with the SDK's MCPServer (mcp 2's name for FastMCP).

    python tests/mcp_server.py RECORD_FILE                 serve over stdio
    python tests/mcp_server.py RECORD_FILE --http PORT_FILE  streamable HTTP on 127.0.0.1:0

Every call, cancellation and start is appended to RECORD_FILE as one line (`start`,
`call NAME`, `cancelled NAME`), so a test sees what the server saw. A start after a `crash`
waits for RECORD_FILE + ".release" to exist before serving: a test can hold the restarted
server down for as long as it checks what the dispatcher answers meanwhile. Over HTTP the
bound port is written to PORT_FILE once the server listens.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

RECORD = Path(sys.argv[1])
RELEASE = Path(str(RECORD) + ".release")

server: MCPServer[Any] = MCPServer("test-server")


def record(line: str) -> None:
    with RECORD.open("a") as file:
        file.write(line + "\n")


@server.tool()
def echo(text: str) -> str:
    """Return the text."""
    record("call echo")
    return text


@server.tool()
def add(a: int, b: int) -> dict[str, int]:
    """Add two integers (structured result)."""
    record("call add")
    return {"sum": a + b}


@server.tool()
def fail(message: str) -> str:
    """Fail with the message (an isError result)."""
    record("call fail")
    raise ToolError(message)


@server.tool()
async def slow() -> str:
    """Wait until cancelled."""
    record("call slow")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        record("cancelled slow")
        raise
    return "never"


@server.tool()
def crash() -> str:
    """Exit the process at once."""
    record("call crash")
    os._exit(3)


@server.tool()
async def grow(ctx: Context) -> str:
    """Add the tool `extra` and tell the client the list changed."""
    record("call grow")

    def extra(n: int) -> int:
        """The number plus one."""
        return n + 1

    server.add_tool(extra, name="extra")
    await ctx.session.send_tool_list_changed()
    return "grown"


def wait_for_release() -> None:
    # A bounded poll of the test's own file, before serving (a test fixture, not the runtime).
    for _ in range(1000):
        if RELEASE.exists():
            return
        time.sleep(0.01)  # sleep-ok: polling a file another process writes, bounded


def main() -> None:
    restarted = RECORD.exists() and "call crash" in RECORD.read_text()
    record("start")
    if restarted:
        wait_for_release()
    if "--http" in sys.argv:
        # Bound and listening before the port is told: no free-port guess, no connect race.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        Path(sys.argv[sys.argv.index("--http") + 1]).write_text(f"{sock.getsockname()[1]}\n")
        app = server.streamable_http_app()
        config = uvicorn.Config(app, log_level="warning")
        asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
