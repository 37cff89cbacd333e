"""Interoperability with the ORIGINAL published contract, in both directions.

1. A client generated from tests/contract/original alone (no Hello, session_id, seq or
   call_id) against our dispatcher.
2. Our commander library against a server generated from the original alone (no Welcome,
   call_id or StopConfirm).

Code generated from the original file registers the same message names as ours in the
protobuf default descriptor pool, so it only ever runs in subprocesses
(tests/contract/original_client.py, tests/contract/original_server.py) that print JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from commander import AgentContext, CommanderConfig, ConnectionConfig, SessionResult, open_channel, run_session
from shared.keepalive import KeepaliveConfig
from shared.model import SessionState, StopCode
from tests.conftest import WAIT_S, running_dispatcher
from tests.conftest import test_config as make_config

pytestmark = pytest.mark.anyio

CONTRACT_DIR = Path(__file__).resolve().parents[1] / "contract"
ORIGINAL_PROTO_ROOT = CONTRACT_DIR / "original"
ORIGINAL_PROTO = "southwest/ai/agent/v1/agent.proto"
CLIENT_SCRIPT = CONTRACT_DIR / "original_client.py"
SERVER_SCRIPT = CONTRACT_DIR / "original_server.py"
ECHO_ARGS = {"question": "what is 2+3*4?", "nested": {"list": [1, 2, 3]}, "unicode": "héllo"}
EXPLICIT_SESSION_ID = "original-client-session-42"  # what original_client.py sends in `session_id`
SESSION_ID_KEY = "x-session-id"
STOP_AFTER = 3  # content chunks before the original server's stop
# Field numbers our contract added to UpstreamPacket, as an original server sees them: unknown fields.
SEQ_FIELD, HELLO_FIELD, STOP_CONFIRM_FIELD = "7", "8", "9"


@pytest.fixture(scope="session")
def original_codegen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python code generated from the original contract file, as its users generate it."""
    out = tmp_path_factory.mktemp("original_gen")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ORIGINAL_PROTO_ROOT}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            ORIGINAL_PROTO,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"protoc failed on the original contract:\n{done.stderr}"
    assert (out / "southwest/ai/agent/v1/agent_pb2_grpc.py").is_file()
    return out


def _env(codegen: Path) -> dict[str, str]:
    # Only the original code on the path: the subprocess must not see shared/_gen's modules.
    return {**os.environ, "PYTHONPATH": str(codegen), "PYTHONUNBUFFERED": "1"}


def _read_text(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


# -- 1. the original client against our dispatcher ---------------------------------------


async def run_original_client(codegen: Path, tmp_path: Path, target: str, scenario: str) -> dict[str, Any]:
    """Run original_client.py to completion (killed after WAIT_S) and return its summary."""
    stderr_path = tmp_path / f"client-{scenario}.stderr"
    with stderr_path.open("wb") as stderr:
        try:
            with anyio.fail_after(WAIT_S):
                done = await anyio.run_process(
                    [sys.executable, str(CLIENT_SCRIPT), target, scenario],
                    env=_env(codegen),
                    stdin=subprocess.DEVNULL,
                    stderr=stderr,
                    check=False,
                )
        except TimeoutError:
            raise AssertionError(
                f"original client ({scenario}) still running after {WAIT_S} s (killed); stderr:\n"
                f"{_read_text(stderr_path)}"
            ) from None
    stdout = done.stdout.decode(errors="replace").strip()
    assert done.returncode == 0 and stdout, (
        f"original client ({scenario}) exited {done.returncode}; stdout:\n{stdout}\nstderr:\n{_read_text(stderr_path)}"
    )
    summary: dict[str, Any] = json.loads(stdout.splitlines()[-1])
    # The subprocess really speaks the original contract, not ours.
    assert "hello" not in summary["contract"]["upstream_fields"], summary["contract"]
    assert "seq" not in summary["contract"]["upstream_fields"], summary["contract"]
    assert "welcome" not in summary["contract"]["downstream_fields"], summary["contract"]
    assert summary["contract"]["generated_from"].startswith(str(codegen)), summary["contract"]
    assert summary["errors"] == [], summary
    return summary


async def test_original_client_full_session(original_codegen: Path, tmp_path: Path) -> None:
    async with running_dispatcher() as dispatcher:
        assert dispatcher.address is not None
        summary = await run_original_client(original_codegen, tmp_path, dispatcher.address, "full")

    assert summary["code"] == "OK", summary
    assert summary["initial_metadata"].get(SESSION_ID_KEY), f"no {SESSION_ID_KEY} in {summary['initial_metadata']}"
    assert summary["trailing_metadata"].get(SESSION_ID_KEY) == summary["initial_metadata"][SESSION_ID_KEY]
    assert [(r["tool_name"], r["result"]) for r in summary["tool_results"]] == [
        ("echo", ECHO_ARGS),
        ("calculator", {"expression": "2+3*4", "value": 14}),
    ], summary
    assert summary["acks"] >= 1, "the dispatcher acks right after a tool call"
    assert summary["stops"] == [] and summary["unknown_signals"] == 0, summary


async def test_original_client_results_in_request_order(original_codegen: Path, tmp_path: Path) -> None:
    """A slow call then a fast one, sent back to back (then is_finish and half-close at once)."""
    async with running_dispatcher() as dispatcher:
        assert dispatcher.address is not None
        summary = await run_original_client(original_codegen, tmp_path, dispatcher.address, "ordered")

    assert summary["code"] == "OK", summary
    assert [(r["tool_name"], r["result"]) for r in summary["tool_results"]] == [
        ("sleep", {"slept_s": 0.3}),
        ("echo", {"after": "sleep"}),
    ], summary
    # The echo finished at once but was held back until the sleep's result went out.
    assert summary["tool_results"][1]["at_ms"] >= 250, summary["tool_results"]


async def test_original_client_sees_stop_and_permission_denied(original_codegen: Path, tmp_path: Path) -> None:
    config = make_config(policy={"block_patterns": ("forbidden",)})
    async with running_dispatcher(config) as dispatcher:
        assert dispatcher.address is not None
        summary = await run_original_client(original_codegen, tmp_path, dispatcher.address, "stop")

    assert len(summary["stops"]) == 1 and summary["stops"][0], f"expected one stop with a reason: {summary}"
    assert summary["code"] == "PERMISSION_DENIED", summary
    assert summary["initial_metadata"].get(SESSION_ID_KEY), summary
    trailers = summary["trailing_metadata"]
    assert trailers.get("x-stop-code") == "POLICY_VIOLATION", trailers
    assert trailers.get("x-stop-confirmed") == "false", trailers
    # The chunk sent after the stop was dropped silently: nothing the original client cannot read.
    assert summary["unknown_signals"] == 0 and summary["tool_results"] == [], summary


async def test_original_client_explicit_session_id_is_kept(original_codegen: Path, tmp_path: Path) -> None:
    async with running_dispatcher() as dispatcher:
        assert dispatcher.address is not None
        summary = await run_original_client(original_codegen, tmp_path, dispatcher.address, "session_id")

    assert summary["code"] == "OK", summary
    assert summary["initial_metadata"].get(SESSION_ID_KEY) == EXPLICIT_SESSION_ID, summary["initial_metadata"]
    assert summary["trailing_metadata"].get(SESSION_ID_KEY) == EXPLICIT_SESSION_ID, summary["trailing_metadata"]
    assert [r["result"] for r in summary["tool_results"]] == [{"hello": "world"}], summary


# -- 2. the commander against an original-contract server --------------------------------


class OriginalServerProcess:
    """original_server.py as a subprocess: its port, then (after SIGTERM) its report."""

    def __init__(self, process: Process, stderr_path: Path) -> None:
        assert process.stdout is not None
        self.process = process
        self.stderr_path = stderr_path
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self.target = ""

    def _failure(self, what: str) -> AssertionError:
        return AssertionError(f"original server: {what}; stderr:\n{_read_text(self.stderr_path)}")

    async def wait_ready(self) -> None:
        """The first stdout line is the port: the server is listening once it is printed."""
        try:
            with anyio.fail_after(WAIT_S):
                line = await self._stdout.receive_until(b"\n", 64)
        except TimeoutError:
            raise self._failure(f"no port printed within {WAIT_S} s") from None
        except (anyio.IncompleteRead, anyio.EndOfStream):
            raise self._failure("exited before printing its port") from None
        self.target = f"127.0.0.1:{int(line)}"

    async def report(self) -> dict[str, Any]:
        """SIGTERM, then the JSON report it prints before exiting."""
        self.process.send_signal(signal.SIGTERM)
        chunks: list[bytes] = []
        try:
            with anyio.fail_after(WAIT_S):
                while True:
                    try:
                        chunks.append(await self._stdout.receive())
                    except (anyio.EndOfStream, anyio.ClosedResourceError):
                        break
                await self.process.wait()
        except TimeoutError:
            raise self._failure(f"no report within {WAIT_S} s of SIGTERM") from None
        text = b"".join(chunks).decode(errors="replace").strip()
        if self.process.returncode != 0 or not text:
            raise self._failure(f"exited {self.process.returncode} with stdout {text!r}")
        report: dict[str, Any] = json.loads(text.splitlines()[-1])
        return report

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                self.process.kill()
            with anyio.move_on_after(WAIT_S):
                await self.process.aclose()


@asynccontextmanager
async def original_server(
    codegen: Path, tmp_path: Path, mode: str, stop_after: int = 0
) -> AsyncIterator[OriginalServerProcess]:
    stderr_path = tmp_path / f"server-{mode}.stderr"
    with stderr_path.open("wb") as stderr:
        process = await anyio.open_process(
            [sys.executable, str(SERVER_SCRIPT), mode, str(stop_after)],
            env=_env(codegen),
            stdin=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = OriginalServerProcess(process, stderr_path)
    try:
        await server.wait_ready()
        yield server
    finally:
        await server.aclose()


async def run_commander(agent: Any, target: str, *, handshake_timeout_s: float = 0.5) -> SessionResult:
    config = CommanderConfig(
        connection=ConnectionConfig(target=target, handshake_timeout_s=handshake_timeout_s, end_timeout_s=5.0)
    )
    async with open_channel(config.connection, KeepaliveConfig()) as channel:
        try:
            with anyio.fail_after(WAIT_S):
                return await run_session(agent, "what is 2+3*4?", channel=channel, config=config)
        except TimeoutError:
            raise AssertionError(f"run_session against the original server did not return within {WAIT_S} s") from None


def only_rpc(report: dict[str, Any]) -> dict[str, Any]:
    assert len(report["rpcs"]) == 1, f"expected exactly one ChatStream call: {report}"
    rpc: dict[str, Any] = report["rpcs"][0]
    return rpc


class ToolAgent:
    """Thinks, calls tools one after another and two at once, then says a few chunks."""

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.finished = False

    async def __call__(self, ctx: AgentContext, prompt: str) -> None:
        await ctx.think("plan", "echo the question, look something up, answer")
        self.results["echo"] = await ctx.call_tool("echo", {"text": prompt, "n": 1})
        self.results["other"] = await ctx.call_tool("calculator", {"expression": "2+3*4"})

        async def call(key: str, args: dict[str, Any]) -> None:
            self.results[key] = await ctx.call_tool("echo", args)

        async with anyio.create_task_group() as tg:  # two calls in flight: correlated by order
            tg.start_soon(call, "concurrent-1", {"i": 1})
            tg.start_soon(call, "concurrent-2", {"i": 2})
        for part in ("The ", "answer ", "is ", "14."):
            await ctx.say(part)
        self.finished = True


@pytest.mark.parametrize(
    ("mode", "handshake_timeout_s"),
    [
        ("normal", 0.5),  # compat mode because no Welcome came within the handshake timeout
        ("ack_first", 30.0),  # compat mode because the first packet was not a Welcome (no 30 s wait)
    ],
)
async def test_commander_against_original_server(
    original_codegen: Path, tmp_path: Path, mode: str, handshake_timeout_s: float
) -> None:
    agent = ToolAgent()
    async with original_server(original_codegen, tmp_path, mode) as server:
        result = await run_commander(agent, server.target, handshake_timeout_s=handshake_timeout_s)
        report = await server.report()

    assert result.state is SessionState.FINISHED, result
    assert result.compat_mode is True, result
    assert result.status_code == "OK" and result.stop is None, result
    assert agent.finished
    assert agent.results == {
        "echo": {"text": "what is 2+3*4?", "n": 1},
        "other": {"ok": True},
        "concurrent-1": {"i": 1},
        "concurrent-2": {"i": 2},
    }, "tool results were not correlated by order"
    assert result.tool_calls == 4

    rpc = only_rpc(report)
    assert rpc["kinds"] == {"thought": 1, "tool_call": 4, "content": 5}, rpc
    assert rpc["is_finish"] and rpc["half_closed"] and rpc["ended"] == "client half-closed", rpc
    assert rpc["unknown_payloads"] == 1 and rpc["unknown_fields"].get(HELLO_FIELD) == 1, "only the Hello is unknown"
    assert STOP_CONFIRM_FIELD not in rpc["unknown_fields"], rpc
    assert rpc["session_ids"] == [result.session_id], rpc


@pytest.mark.parametrize("mode", ["stop_linger", "stop_abrupt"])
async def test_commander_honours_original_stop(original_codegen: Path, tmp_path: Path, mode: str) -> None:
    said: list[int] = []
    echoed: list[Any] = []
    cancelled = anyio.Event()
    loop_finished = False

    async def agent(ctx: AgentContext, prompt: str) -> None:
        nonlocal loop_finished
        await ctx.think("plan", "answer at length")
        echoed.append(await ctx.call_tool("echo", {"before": "stop"}))
        try:
            for i in range(STOP_AFTER + 5):
                await ctx.say(f"chunk {i} ")
                said.append(i)
                if i + 1 >= STOP_AFTER:
                    # Like an LLM waiting for its next token: only the stop can end this wait.
                    with anyio.fail_after(WAIT_S):
                        await anyio.Event().wait()
            loop_finished = True
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    async with original_server(original_codegen, tmp_path, mode, STOP_AFTER) as server:
        result = await run_commander(agent, server.target)
        report = await server.report()

    assert result.state is SessionState.STOPPED, result
    assert result.compat_mode is True, result
    assert result.stop is not None and result.stop.reason == "original stop", result.stop
    assert result.stop.code is StopCode.UNSPECIFIED, result.stop
    assert result.status_code == "OK", result  # the original server ends the RPC normally
    assert cancelled.is_set() and not loop_finished, "the stop did not cancel the agent"
    assert echoed == [{"before": "stop"}], echoed
    assert said == list(range(STOP_AFTER)), said
    assert result.pending_at_stop == (), result
    assert result.stop_to_halt_ms is not None and result.stop_to_halt_ms >= 0, result

    rpc = only_rpc(report)
    assert rpc["stop_sent"], rpc
    assert rpc["kinds"] == {"thought": 1, "tool_call": 1, "content": STOP_AFTER}, rpc
    assert not rpc["is_finish"], "the commander sent is_finish after a stop"
    assert STOP_CONFIRM_FIELD not in rpc["unknown_fields"], f"an original server got a StopConfirm: {rpc}"
    assert rpc["unknown_payloads"] == 1, f"only the Hello should be unknown to it: {rpc}"
    if mode == "stop_linger":
        assert rpc["half_closed"] and rpc["ended"] == "after stop: client half-closed", rpc


async def test_commander_stop_as_first_downstream_packet(original_codegen: Path, tmp_path: Path) -> None:
    """An original server that stops at once: the stop, not a 30 s handshake wait, decides."""
    progress: list[str] = []

    async def agent(ctx: AgentContext, prompt: str) -> None:
        progress.append("started")
        await ctx.think("plan", "never sent")
        progress.append("thought")
        await ctx.say("never sent either")
        progress.append("said")

    async with original_server(original_codegen, tmp_path, "stop_first") as server:
        result = await run_commander(agent, server.target, handshake_timeout_s=30.0)
        report = await server.report()

    assert result.state is SessionState.STOPPED and result.compat_mode is True, result
    assert result.stop is not None and result.stop.reason == "original stop", result.stop
    assert result.stop.code is StopCode.UNSPECIFIED, result.stop
    assert progress in ([], ["started"]), f"the agent ran on after the stop: {progress}"

    rpc = only_rpc(report)
    assert rpc["kinds"] == {} and rpc["unknown_payloads"] == 1, f"only the Hello should have been sent: {rpc}"
    assert STOP_CONFIRM_FIELD not in rpc["unknown_fields"], f"an original server got a StopConfirm: {rpc}"
    assert rpc["half_closed"] and rpc["ended"] == "after stop: client half-closed", rpc


async def test_commander_stop_after_agent_returned_has_no_negative_halt_time(
    original_codegen: Path, tmp_path: Path
) -> None:
    """The agent queues its last chunk and returns before that chunk is even written; the
    server's stop for that chunk therefore always arrives after the agent halted."""

    async def agent(ctx: AgentContext, prompt: str) -> None:
        for i in range(STOP_AFTER):
            await ctx.say(f"chunk {i} ")

    async with original_server(original_codegen, tmp_path, "stop_linger", STOP_AFTER) as server:
        result = await run_commander(agent, server.target)
        await server.report()

    assert result.stop is not None and result.stop.reason == "original stop", result
    assert result.stop_to_halt_ms is None or result.stop_to_halt_ms >= 0, (
        f"stop_to_halt_ms={result.stop_to_halt_ms}: the agent halted before the stop was received"
    )
