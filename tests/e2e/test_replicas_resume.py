"""A replica killed with SIGKILL mid-answer: its commander reconnects through the balancer,
lands on another replica, and resumes the same session there from what Redis holds — every
event once, the tool call run once."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import anyio
import grpc
import pytest

from commander.context import AgentContext
from commander.session import run_session
from shared.model import SessionState
from tests.conftest import commander_config
from tests.e2e.conftest import BIN, DispatcherFactory, run_cli
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, used by name

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

LEASE_MS = 900


class Balancer:
    """A loopback L4 balancer with one backend at a time: what a commander dials."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.backend.rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sink.close()


def watched(target: str, session_id: str) -> list[dict[str, Any]]:
    result = run_cli(str(BIN / "dispatcherctl"), "--target", target, "watch", session_id, "--from", "1", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in map(json.loads, result.stdout.splitlines()) if "seq" in line]


async def test_a_session_of_a_killed_replica_is_resumed_on_another(
    start_dispatcher: DispatcherFactory, redis_server: RedisServer
) -> None:
    flags = ("--store", redis_server.url, "--replica-lease-ms", str(LEASE_MS))
    a = start_dispatcher(*flags, instance_id="a")
    b = start_dispatcher(*flags, instance_id="b")
    balancer = Balancer(a.address)
    address = await balancer.start()
    said: list[str] = []

    async def agent(ctx: AgentContext, prompt: str) -> None:
        for n in range(120):
            if n == 30:
                assert await ctx.call_tool("echo", {"text": "once"}) == {"text": "once"}
            if n == 80:
                a.proc.send_signal(signal.SIGKILL)  # the replica dies mid-answer...
                a.proc.wait(timeout=10)
                balancer.backend = b.address  # ...and the balancer sends new connections to b
            said.append(f"t{n:04d} ")
            await ctx.say(said[-1])
            await anyio.sleep(0.002)

    try:
        async with grpc.aio.insecure_channel(address) as channel:
            result = await run_session(agent, "", channel=channel, config=commander_config(address), session_id="moved")
    finally:
        await balancer.close()
    assert (result.state, result.resumes) == (SessionState.FINISHED, 1), result
    assert result.dispatcher_id == "dispatcher:a"  # its first Welcome's; it ended on b
    b.wait_for_event("replicas.taking_over", session_id="moved")
    events = watched(b.address, "moved")
    assert "".join(e["content"]["text"] for e in events if "content" in e) == "".join(said)
    assert [e["tool_call"]["call_id"] for e in events if "tool_call" in e] == ["call-1"]
    shown = json.loads(run_cli(str(BIN / "dispatcherctl"), "--target", b.address, "show", "moved", "--json").stdout)
    assert shown["session"]["outcome"]["state"] == "SESSION_STATE_FINISHED"
    assert shown["session"]["dispatcher_id"] == "dispatcher:b"
