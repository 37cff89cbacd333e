"""The stop the session task writes itself (`SessionRunner._write_stop`): its two ways of
failing, which a real stream cannot stage without racing the transport. The writer here
stands in for `context.write` only; the runner, machine, outbox and timers are the real ones
(the path that succeeds runs over a real server in tests/integration/test_bad_input.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import anyio.lowlevel
import grpc
import pytest

from dispatcher.config import DispatcherConfig, PolicyConfig
from dispatcher.sessions.registry import SessionRegistry
from dispatcher.sessions.runner import SessionRunner
from dispatcher.sessions.timers import Timers
from dispatcher.stream.service import AgentInteractionService
from dispatcher.tools import ToolExecutor, default_registry
from shared import wire

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]

HELLO = wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id="s"))
BLOCKED = wire.pb.UpstreamPacket(seq=2, content=wire.pb.ContentChunk(text="forbidden"))


class Commander:
    """Upstream: the packet the policy stops on once `go` is set, then nothing more."""

    def __init__(self) -> None:
        self.go = anyio.Event()

    async def packets(self) -> AsyncIterator[wire.pb.UpstreamPacket]:
        await self.go.wait()
        yield BLOCKED
        await asyncio.Event().wait()


def make_runner(commander: Commander) -> SessionRunner:
    config = DispatcherConfig(policy=PolicyConfig(block_patterns=("forbidden",), max_session_s=0, idle_timeout_s=0))
    service = AgentInteractionService(
        config=config,
        registry=SessionRegistry(max_open=0, ended_kept=10, journals_kept=10),
        executor=ToolExecutor(default_registry()),
        spawn=lambda runner, first: None,
        is_draining=lambda: False,
        timers=Timers(),
    )
    return service.open_session("s", first_requests=commander.packets(), peer="test", commander="test")


class Handler:
    """The ChatStream handler's part: take packets until the outbox ends."""

    def __init__(self, runner: SessionRunner) -> None:
        self.runner = runner
        self.seen: list[str] = []
        self.welcomed = anyio.Event()

    async def read(self) -> None:
        while (packet := await self.runner.outbox.get()) is not None:
            if packet.HasField("welcome"):
                self.welcomed.set()
            else:
                self.seen.append(packet.WhichOneof("signal"))


async def start_and_block(tg: anyio.abc.TaskGroup, runner: SessionRunner, commander: Commander) -> Handler:
    """Open the session, let the handler drain the Welcome and park, then send the blocked word."""
    handler = Handler(runner)
    tg.start_soon(handler.read)
    tg.start_soon(runner.run, HELLO)
    await handler.welcomed.wait()
    for _ in range(10):  # the handler goes back to waiting on an empty outbox
        await anyio.lowlevel.checkpoint()
    commander.go.set()
    return handler


async def test_a_stop_write_that_fails_ends_the_session_as_the_peer_gone() -> None:
    commander = Commander()
    runner = make_runner(commander)
    attempted: list[str] = []

    async def write(packet: wire.pb.DownstreamPacket) -> None:
        attempted.append(packet.WhichOneof("signal"))
        raise grpc.aio.UsageError("RPC already finished")  # what grpc raises on a finished call

    runner.attach_writer(write)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            handler = await start_and_block(tg, runner, commander)
            await runner.done.wait()
    assert attempted == ["stop"]
    assert handler.seen == ["ack"]  # the turn was given back: the ack queued behind it still went out
    outcome = runner.outcome
    assert outcome is not None and not outcome.stop_confirmed
    assert outcome.reason.endswith("(peer went away: the stream ended while the stop was being written)")


async def test_a_stop_write_cut_short_keeps_the_turn_and_the_reader_ends_with_the_session() -> None:
    commander = Commander()
    runner = make_runner(commander)
    writing = anyio.Event()

    async def write(_packet: wire.pb.DownstreamPacket) -> None:
        writing.set()
        await asyncio.Event().wait()  # a write grpc never completes (a commander not reading)

    runner.attach_writer(write)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            handler = await start_and_block(tg, runner, commander)
            await writing.wait()
            runner.peer_gone("the commander disconnected")  # cancels the session task mid-write
            await runner.done.wait()
    assert handler.seen == []  # nothing is written behind a write that may still be in flight
    outcome = runner.outcome
    assert outcome is not None and not outcome.stop_confirmed
    assert outcome.reason.endswith("(peer went away: the commander disconnected)")
