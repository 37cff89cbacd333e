"""MCP tool servers: `dispatcher serve --mcp 'fs=stdio:CMD ARGS'` and `--mcp 'web=http:URL'`.

Each server is one `McpConnection`: a task of its own owns the SDK's contexts (the stdio
process or the HTTP client, and the `Client` session: anyio cancel scopes must be entered
and left in one task), lists the server's tools into the registry as `PREFIX.NAME` (with the
tool's `inputSchema`, so the executor checks arguments before any call), follows
`notifications/tools/list_changed`, and reconnects with backoff when the connection ends.

A tool call runs in the call's own task (the executor's) and awaits the SDK's `call_tool`
there: cancelling that task (a stop, the caller gone, the call's timeout) makes the SDK send
`notifications/cancelled` for the request, and never touches the connection's task. While a
server is down its tools stay listed and answer a FAILED tool error starting `unavailable:`.

The protocol is the handshake-era one (`initialize`, `mode="legacy"`), which every published
server speaks, and whose `notifications/cancelled` and `notifications/tools/list_changed`
this module relies on.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import structlog
from mcp import Client
from mcp.client.session import IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, CallToolResult, Implementation, TextContent, ToolListChangedNotification

from dispatcher.tools.executor import ToolFailure
from dispatcher.tools.registry import ToolRegistry, ToolSpec
from shared.errors import describe_exception

__all__ = ["McpConnection", "McpServerSpec", "McpStartError", "McpTimings", "connect_all", "parse_mcp_value"]

log = structlog.get_logger("dispatcher.mcp")

_VALUE = re.compile(r"^(?:(?P<prefix>[A-Za-z0-9_-]+)=)?(?P<kind>stdio|http):(?P<rest>.+)$", re.S)
# Interpreters whose script, not themselves, names a server (`node dist/index.js`).
_INTERPRETERS = frozenset({"node", "npx", "python", "python3", "uv", "uvx", "deno", "bun"})
_PAGES_MAX = 100  # tools/list pages per refresh: a paginator that never ends cannot hang us
_CLIENT_INFO = Implementation(name="southwest-dispatcher", version="0.1.0")


class McpStartError(ValueError):
    """An `--mcp` value is malformed, or its server could not be reached at start-up: the
    operator's to fix (`dispatcher serve` prints it on one line and exits 2)."""


@dataclass(frozen=True, slots=True)
class McpServerSpec:
    """One `--mcp` value: `[PREFIX=]stdio:CMD ARGS` or `[PREFIX=]http:URL`."""

    prefix: str
    kind: Literal["stdio", "http"]
    command: tuple[str, ...] = ()
    url: str = ""

    def describe(self) -> str:
        target = f"stdio:{shlex.join(self.command)}" if self.kind == "stdio" else f"http:{self.url}"
        return f"{self.prefix}={target}"


def parse_mcp_value(value: str) -> McpServerSpec:
    """Parse one `--mcp` value. Without `PREFIX=` the prefix is derived: for stdio the command's
    file name without extension (for an interpreter such as `node` or `python`, its script's,
    and for a script called index/main/server/__main__ its folder's: the package's name); for
    http the URL's host name with dots as underscores."""
    match = _VALUE.match(value.strip())
    if match is None:
        raise McpStartError(f"--mcp {value!r}: expected [PREFIX=]stdio:COMMAND ARGS or [PREFIX=]http:URL")
    rest = match["rest"].strip()
    if match["kind"] == "http":
        if not re.match(r"^https?://[^/\s]+", rest):
            raise McpStartError(f"--mcp {value!r}: expected http:http://HOST[:PORT]/PATH")
        host = re.sub(r"^https?://(?:[^@/]*@)?", "", rest).split("/")[0].rsplit(":", 1)[0]
        return McpServerSpec(match["prefix"] or _clean_prefix(host), "http", url=rest)
    try:
        command = tuple(shlex.split(rest))
    except ValueError as exc:
        raise McpStartError(f"--mcp {value!r}: {exc}") from None
    if not command:
        raise McpStartError(f"--mcp {value!r}: no command")
    return McpServerSpec(match["prefix"] or _derived_prefix(command), "stdio", command=command)


def _derived_prefix(command: tuple[str, ...]) -> str:
    path = command[0]
    if os.path.basename(path).split(".")[0] in _INTERPRETERS:
        path = next((arg for arg in command[1:] if not arg.startswith("-")), path)
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in {"index", "main", "server", "__main__"}:
        folders = path.replace("\\", "/").split("/")[:-1]
        parts = [part for part in folders if part not in {"", ".", "dist", "build", "src"}]
        stem = parts[-1] if parts else stem
    return _clean_prefix(stem)


def _clean_prefix(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "mcp"


@dataclass(frozen=True, slots=True)
class McpTimings:
    """How long to wait for a server: its first connection, each call, the reconnect backoff."""

    connect_timeout_s: float = 15.0
    call_timeout_s: float = 60.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 30.0


_DEFAULT_TIMINGS = McpTimings()


class McpConnection:
    """One MCP server: connected by `start()`, reconnected with backoff, ended by `aclose()`."""

    def __init__(
        self,
        spec: McpServerSpec,
        registry: ToolRegistry,
        timings: McpTimings = _DEFAULT_TIMINGS,
    ) -> None:
        self.spec = spec
        self._registry = registry
        self._connect_timeout_s = timings.connect_timeout_s
        self._call_timeout_s = timings.call_timeout_s
        self._backoff_initial_s = timings.backoff_initial_s
        self._backoff_max_s = timings.backoff_max_s
        self._client: Client | None = None  # set while connected
        self._wake = asyncio.Event()  # the connection task's one wake-up: EOF, list changed, close
        self._ended = False
        self._stale = False
        self._closing = False
        self._up = asyncio.Event()
        self._first_failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self.connects = 0  # how many times a connection came up (tests and logs)

    @property
    def is_connected(self) -> bool:
        return self._client is not None

    async def start(self) -> None:
        """Connect and list the tools; McpStartError when the first connection fails."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mcp:{self.spec.prefix}")
        waiter = asyncio.ensure_future(self._up.wait())
        try:
            await asyncio.wait([waiter, self._task], timeout=self._connect_timeout_s, return_when="FIRST_COMPLETED")
        finally:
            waiter.cancel()
        if not self._up.is_set():
            failure = self._first_failure
            await self.aclose()
            silent = f"no answer in {self._connect_timeout_s:g} s"
            reason = describe_exception(failure) if failure is not None else silent
            raise McpStartError(f"--mcp {self.spec.describe()!r}: cannot connect: {reason}")

    async def aclose(self, bound_s: float = 2.0) -> None:
        """End the connection (the stdio process with it); bounded, then the task is cancelled."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None or task.done():
            return
        _, pending = await asyncio.wait([task], timeout=bound_s)
        if pending:
            task.cancel()
            _, pending = await asyncio.wait([task], timeout=bound_s)
            if pending:
                log.warning("mcp.close_abandoned", prefix=self.spec.prefix)

    async def _run(self) -> None:
        delay = self._backoff_initial_s
        while not self._closing:
            up_s = 0.0
            try:
                up_s = await self._connect_once()
            except Exception as exc:  # the server's or the transport's: logged, then retried
                if not self._up.is_set():
                    self._first_failure = exc
                    return
                log.warning("mcp.connection_failed", prefix=self.spec.prefix, error=describe_exception(exc))
            finally:
                self._client = None
            if self._closing:
                return
            if up_s > self._backoff_max_s:  # a server that ran a while starts its backoff afresh
                delay = self._backoff_initial_s
            log.warning("mcp.restarting", prefix=self.spec.prefix, delay_s=round(delay, 3))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max_s)

    async def _connect_once(self) -> float:
        """One connection, from spawn or connect to its end; returns how long it was up."""
        self._ended = False
        up_s = 0.0
        async with Client(
            self._transport(),
            mode="legacy",
            cache=None,
            message_handler=self._on_message,
            client_info=_CLIENT_INFO,
        ) as client:
            await self._refresh(client)
            self._client = client
            self.connects += 1
            self._up.set()
            log.info("mcp.connected", prefix=self.spec.prefix, server=self.spec.describe(), connects=self.connects)
            loop = asyncio.get_running_loop()
            up_since = loop.time()
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._ended or self._closing:
                    break
                if self._stale:
                    self._stale = False
                    await self._refresh(client)
            self._client = None
            up_s = loop.time() - up_since
        if not self._closing:
            log.warning("mcp.disconnected", prefix=self.spec.prefix, up_s=round(up_s, 3))
        return up_s

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        spec = self.spec
        if spec.kind == "stdio":
            params = StdioServerParameters(command=spec.command[0], args=list(spec.command[1:]))
            transport = stdio_client(params)
        else:
            transport = streamable_http_client(spec.url)
        async with transport as (read, write):
            yield _WatchedReadStream(read, self._on_eof), write

    def _on_eof(self) -> None:
        self._ended = True
        self._wake.set()

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, ToolListChangedNotification):
            self._stale = True
            self._wake.set()

    async def _refresh(self, client: Client) -> None:
        """List the server's tools and make them this prefix's, in one registry step."""
        specs: list[ToolSpec] = []
        cursor: str | None = None
        for _ in range(_PAGES_MAX):
            page = await client.list_tools(cursor=cursor)
            for tool in page.tools:
                name = f"{self.spec.prefix}.{tool.name}"
                try:
                    specs.append(
                        ToolSpec(
                            name=name,
                            func=_McpTool(self, tool.name, name),
                            schema=tool.input_schema,
                            description=tool.description or "",
                            timeout_s=self._call_timeout_s,
                        )
                    )
                except (TypeError, ValueError) as exc:  # e.g. a schema that is not Draft 2020-12
                    log.warning("mcp.tool_skipped", prefix=self.spec.prefix, tool=tool.name, error=str(exc))
            cursor = page.next_cursor
            if cursor is None:
                break
        self._registry.replace_prefix(self.spec.prefix, specs)
        log.info("mcp.tools_listed", prefix=self.spec.prefix, tools=[spec.name for spec in specs])

    async def call(self, remote_name: str, args: dict[str, Any]) -> Any:
        """One tool call: its JSON result, or ToolFailure (isError, unavailable, MCP error)."""
        client = self._client
        if client is None:
            raise ToolFailure(f"unavailable: MCP server {self.spec.prefix!r} is not connected (restarting)")
        try:
            result = await client.call_tool(remote_name, args)
        except MCPError as exc:
            if exc.error.code == CONNECTION_CLOSED:
                raise ToolFailure(f"unavailable: MCP server {self.spec.prefix!r} closed the connection") from exc
            raise ToolFailure(f"MCP server {self.spec.prefix!r} refused the call: {exc.error.message}") from exc
        return _result_value(result)


class _McpTool:
    """A ToolSpec's func for one remote tool: `async def __call__`, so it gets its own task."""

    __slots__ = ("__name__", "_connection", "_remote_name")

    def __init__(self, connection: McpConnection, remote_name: str, name: str) -> None:
        self._connection = connection
        self._remote_name = remote_name
        self.__name__ = name

    async def __call__(self, args: dict[str, Any]) -> Any:
        return await self._connection.call(self._remote_name, args)


def _result_value(result: CallToolResult) -> Any:
    """`structuredContent` when the tool gave one; else a lone text block's text; else the
    content blocks as JSON. `isError` is a ToolFailure carrying the tool's text."""
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    if result.is_error:
        raise ToolFailure("\n".join(texts) or "the MCP tool reported an error")
    if result.structured_content is not None:
        return result.structured_content
    if len(result.content) == 1 and texts:
        return texts[0]
    return {"content": [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]}


class _WatchedReadStream:
    """The transport's read stream, telling `on_eof` when it ends (the SDK does not say)."""

    def __init__(self, inner: Any, on_eof: Any) -> None:
        self._inner = inner
        self._on_eof = on_eof

    def __getattr__(self, name: str) -> Any:  # last_context and the like
        return getattr(self._inner, name)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._on_eof()
            raise

    def __aiter__(self) -> _WatchedReadStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._inner.__anext__()
        except StopAsyncIteration:
            self._on_eof()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _WatchedReadStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self._on_eof()
        result: bool | None = await self._inner.__aexit__(exc_type, exc, tb)
        return result


async def connect_all(
    values: Iterable[str], registry: ToolRegistry, timings: McpTimings = _DEFAULT_TIMINGS
) -> list[McpConnection]:
    """Parse every `--mcp` value and connect each server into `registry`, all at once; on any
    failure the ones already up are closed and the first McpStartError is raised."""
    specs = [parse_mcp_value(value) for value in values]
    prefixes = [spec.prefix for spec in specs]
    for prefix in prefixes:
        if prefixes.count(prefix) > 1:
            raise McpStartError(f"--mcp: the prefix {prefix!r} is used twice; name them with PREFIX=")
        if any(name.startswith(prefix + ".") for name in registry.names()):
            raise McpStartError(f"--mcp: the prefix {prefix!r} is taken by a served tool")
    connections = [McpConnection(spec, registry, timings) for spec in specs]
    results = await asyncio.gather(*(connection.start() for connection in connections), return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        await asyncio.gather(*(connection.aclose() for connection in connections))
        raise failures[0]
    return connections
