"""Fixtures and helpers shared by every test: a real in-process dispatcher on 127.0.0.1:0,
real channels, and a raw packet-level client for protocol tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import grpc
import pytest
from hypothesis import settings

from commander import CommanderConfig, ConnectionConfig, Observer, SessionResult, run_session
from commander.models import ScriptedAgent
from dispatcher.app import Dispatcher
from dispatcher.config import DispatcherConfig
from dispatcher.tools import ToolRegistry, default_registry
from shared import wire
from shared.log import configure_logging

# The same generated examples on every run (a suite people run must not flake on a new seed),
# and no example database left behind in the tree.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.load_profile("deterministic")

# Every wait in a test is bounded by this, so a hang fails with a message instead of blocking.
WAIT_S = 10.0


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
async def _one_event_loop(anyio_backend: str) -> AsyncIterator[None]:
    """One event loop for the whole run. grpc.aio's completion-queue poller is per process: a
    late event for a previous test's closed loop fails whichever test runs then (seen under
    load; grpc/grpc#42357). A session-scoped async fixture holds anyio's runner open."""
    yield


@pytest.fixture(autouse=True, scope="session")
def _quiet_logging() -> None:
    configure_logging("warning", json=True)


@asynccontextmanager
async def running_dispatcher(
    config: DispatcherConfig | None = None, tools: ToolRegistry | None = None
) -> AsyncIterator[Dispatcher]:
    """A real dispatcher serving on a free loopback port for the duration of the block."""
    dispatcher = Dispatcher(config or DispatcherConfig.for_tests(), tools)
    async with anyio.create_task_group() as tg:
        await tg.start(dispatcher.serve)
        try:
            yield dispatcher
        finally:
            dispatcher.request_shutdown("test finished")


def test_config(**sections: Any) -> DispatcherConfig:
    """`DispatcherConfig.for_tests()` with some sections' fields replaced: test_config(policy={...})."""
    base = DispatcherConfig.for_tests()
    return replace(base, **{name: replace(getattr(base, name), **fields) for name, fields in sections.items()})


test_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def commander_config(address: str, **connection: Any) -> CommanderConfig:
    """A commander config for `address` with a short handshake wait."""
    return CommanderConfig(connection=ConnectionConfig(target=address, handshake_timeout_s=2.0, **connection))


async def run_scripted(
    address: str, prompt: str, *, tokens_per_s: float = 0, observer: Observer | None = None
) -> SessionResult:
    """One session of the scripted agent against `address`, over a channel of its own."""
    async with grpc.aio.insecure_channel(address) as channel:
        return await run_session(
            ScriptedAgent(tokens_per_s=tokens_per_s),
            prompt,
            channel=channel,
            config=commander_config(address),
            observer=observer,
        )


class Gate:
    """A test tool's remote control: `started` is set when a call begins, `release` lets it return."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.release = anyio.Event()
        self.cancelled = anyio.Event()
        self.calls = 0


def gated_tools(gate: Gate) -> ToolRegistry:
    """The built-in tools plus `gate`: waits for `gate.release`; records its own cancellation."""
    registry = default_registry().copy()

    @registry.tool(timeout_s=60)
    async def gate_tool(args: dict[str, Any]) -> dict[str, Any]:
        """Blocks until the test releases it."""
        gate.calls += 1
        gate.started.set()
        try:
            await gate.release.wait()
        except anyio.get_cancelled_exc_class():
            gate.cancelled.set()
            raise
        return {"released": True, **args}

    return registry


def stubborn_tools(entered: asyncio.Event, release: asyncio.Event) -> ToolRegistry:
    """The built-in tools plus `stubborn`: it swallows every cancellation until `release` is set
    (the bug the runtime must survive). Tests set `release` at the end so nothing outlives them."""
    registry = default_registry().copy()

    @registry.tool(timeout_s=60)
    async def stubborn(args: dict[str, Any]) -> dict[str, Any]:
        """Ignores cancellation until the test releases it."""
        entered.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue
        return {}

    return registry


class RawSession:
    """A packet-level client: the test decides every field, reads every packet."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.call = wire.AgentInteractionStub(channel).ChatStream(metadata=tuple(metadata) or None)

    async def send(self, packet: wire.pb.UpstreamPacket) -> None:
        await asyncio.wait_for(self.call.write(packet), WAIT_S)

    async def hello(self, session_id: str = "", seq: int = 1) -> wire.pb.Welcome:
        await self.send(wire.pb.UpstreamPacket(seq=seq, hello=wire.pb.Hello(session_id=session_id, agent_name="test")))
        packet = await self.recv()
        assert packet is not grpc.aio.EOF and packet.HasField("welcome"), f"expected a Welcome, got {packet}"
        return packet.welcome

    async def content(self, seq: int, text: str, *, is_finish: bool = False) -> None:
        await self.send(wire.pb.UpstreamPacket(seq=seq, content=wire.pb.ContentChunk(text=text, is_finish=is_finish)))

    async def tool_call(self, seq: int, tool: str, arguments_json: str = "{}", call_id: str = "", **kw: Any) -> None:
        request = wire.pb.ToolCallRequest(tool_name=tool, arguments_json=arguments_json, call_id=call_id, **kw)
        await self.send(wire.pb.UpstreamPacket(seq=seq, tool_call=request))

    async def recv(self) -> Any:
        """The next downstream packet, or grpc.aio.EOF; fails after WAIT_S."""
        try:
            return await asyncio.wait_for(self.call.read(), WAIT_S)
        except grpc.aio.AioRpcError:
            return grpc.aio.EOF  # a non-OK end: status() tells which
        except TimeoutError:
            raise AssertionError(f"no downstream packet within {WAIT_S} s") from None

    async def recv_kind(self, kind: str) -> wire.pb.DownstreamPacket:
        """Skip acks until a packet of `kind` (ack, stop, tool_result, welcome, error) arrives."""
        while True:
            packet = await self.recv()
            assert packet is not grpc.aio.EOF, f"stream ended while waiting for {kind}"
            if packet.WhichOneof("signal") == kind:
                return packet
            assert packet.WhichOneof("signal") == "ack", f"expected {kind}, got {packet}"

    async def drain(self) -> list[wire.pb.DownstreamPacket]:
        """Every remaining packet until the stream ends."""
        packets = []
        while (packet := await self.recv()) is not grpc.aio.EOF:
            packets.append(packet)
        return packets

    async def status(self) -> tuple[grpc.StatusCode, str, dict[str, str]]:
        """The final status, details and trailers. Reads (and drops) what is left first: grpc
        delivers the status only after every message was read."""
        await self.drain()
        code = await asyncio.wait_for(self.call.code(), WAIT_S)
        details = await self.call.details()
        trailers = {
            k: wire.decode_metadata_value(v)
            for k, v in (await self.call.trailing_metadata() or ())
            if isinstance(v, str)
        }
        return code, details, trailers


async def running_calls(channel: grpc.aio.Channel, session_id: str) -> list[str]:
    """The call ids of `session_id`'s running tool calls, once there is one (a bounded poll of
    GetSession: the control API is the only view of another process's session)."""
    control = wire.SessionControlServiceStub(channel)
    for _ in range(1000):
        info = await control.GetSession(wire.ctl.GetSessionRequest(session_id=session_id))
        if info.running_tool_calls:
            return [call.call_id for call in info.running_tool_calls]
    raise AssertionError(f"no tool call of {session_id} ever ran")


async def wait_until(predicate: Any, message: str, timeout_s: float = WAIT_S) -> None:
    """Bounded poll for state we cannot await directly; fails with `message`."""
    with anyio.move_on_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - state owned by another task, no event to await
            await anyio.sleep(0.005)
        return
    raise AssertionError(f"timed out after {timeout_s} s: {message}")
