"""A dispatcher killed with kill -9 and started again on the same store: a session its commander
resumes goes on where the store's last durable ack left it, every event once; one nobody resumes
ends when its window passes, saying why."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any

import anyio
import grpc
import pytest

from commander.context import AgentContext
from commander.session import run_session
from shared import wire
from shared.model import SessionState
from tests.conftest import commander_config
from tests.e2e.conftest import BIN, DispatcherFactory, run_cli, wait_for

pytestmark = pytest.mark.anyio

TOKENS = 120
KILL_AT = 80  # tokens said when the dispatcher is killed (a tool call comes at 40)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def watched(target: str, session_id: str) -> list[dict[str, Any]]:
    result = run_cli(str(BIN / "dispatcherctl"), "--target", target, "watch", session_id, "--from", "1", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return [line for line in lines if "session_id" in line]  # the events, not the closing {"last_seq": ...}


async def test_a_session_is_resumed_on_the_restarted_dispatcher_with_every_event_once(
    start_dispatcher: DispatcherFactory, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    flags = ("--listen", address, "--store", f"sqlite:///{tmp_path / 'sessions.db'}")
    first = start_dispatcher(*flags)
    said: list[str] = []
    killed = anyio.Event()
    restarted: list[Any] = []

    async def agent(ctx: AgentContext, prompt: str) -> None:
        for n in range(TOKENS):
            if n == 40:
                assert await ctx.call_tool("echo", {"text": "before"}) == {"text": "before"}
            if n == KILL_AT:
                first.proc.send_signal(signal.SIGKILL)
                first.proc.wait(timeout=10)
                killed.set()
            said.append(f"t{n:04d} ")
            await ctx.say(said[-1])
            await anyio.sleep(0.002)

    async def restart() -> None:
        await killed.wait()
        restarted.append(await anyio.to_thread.run_sync(lambda: start_dispatcher(*flags)))

    async with grpc.aio.insecure_channel(address) as channel, anyio.create_task_group() as tg:
        tg.start_soon(restart)
        result = await run_session(agent, "", channel=channel, config=commander_config(address), session_id="kept")
    assert (result.state, result.resumes) == (SessionState.FINISHED, 1), result
    [second] = restarted
    second.wait_for_event("session.adopted", session_id="kept")
    events = watched(second.address, "kept")
    content = "".join(e["content"]["text"] for e in events if "content" in e)
    assert content == "".join(said)  # every chunk once: up to the durable ack from the store, the rest re-sent
    assert [e["tool_call"]["call_id"] for e in events if "tool_call" in e] == ["call-1"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def test_a_session_nobody_resumes_ends_when_the_window_passes(
    start_dispatcher: DispatcherFactory, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    flags = ("--listen", address, "--store", f"sqlite:///{tmp_path / 'sessions.db'}")
    first = start_dispatcher(*flags)

    async def open_and_leave() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            call = wire.AgentInteractionStub(channel).ChatStream()
            hello = wire.pb.Hello(session_id="left", agent_name="raw", features=[*wire.FEATURES, "resume"])
            await call.write(wire.pb.UpstreamPacket(seq=1, hello=hello))
            await call.read()  # the Welcome
            request = wire.pb.ToolCallRequest(tool_name="echo", arguments_json='{"text": "x"}', call_id="c1")
            await call.write(wire.pb.UpstreamPacket(seq=2, tool_call=request))
            while not (await call.read()).HasField("ack"):  # acked: durable
                pass

    await open_and_leave()
    first.proc.kill()
    first.proc.wait(timeout=10)
    second = start_dispatcher(*flags, "--session-resume-window-s", "1")
    second.wait_for_event("session.adopted", session_id="left")

    def ended() -> bool:
        result = run_cli(str(BIN / "dispatcherctl"), "--target", second.address, "show", "left", "--json")
        return '"SESSION_STATE_CANCELLED"' in result.stdout

    wait_for(ended, "the adopted session ended after its window", 15, details=second.describe)
    shown = json.loads(run_cli(str(BIN / "dispatcherctl"), "--target", second.address, "show", "left", "--json").stdout)
    reason = shown["session"]["outcome"]["reason"]
    assert "not resumed within 1s" in reason and "the dispatcher restarted" in reason
