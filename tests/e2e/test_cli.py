"""End to end: the installed `dispatcher` and `commander` console scripts as real processes.

What an operator sees: exit codes, terminal and JSON output, the dispatcher's JSON log,
signals and draining, configuration sources, `--help`, `make demo`; plus a client built
from our proto (health, reflection, refusal while draining) against the subprocess.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import click
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from commander import cli as commander_cli
from commander.config import CommanderConfig
from dispatcher import cli as dispatcher_cli
from dispatcher.config import DispatcherConfig
from shared import settings, wire
from tests.conftest import WAIT_S, RawSession, wait_until
from tests.e2e.conftest import (
    COMMANDER,
    COMMANDER_TIMEOUT_S,
    DISPATCHER,
    ENV,
    ROOT,
    DispatcherFactory,
    DispatcherProcess,
    run_cli,
    run_commander,
    wait_for,
)

STOP_TO_HALT = re.compile(r"stop→halt:\s+\d+(\.\d+)?\s*ms")


def no_traceback(output: str) -> None:
    assert "Traceback" not in output, f"unexpected traceback:\n{output}"


# -- sessions ------------------------------------------------------------------------------


def test_commander_session_calls_a_tool_and_finishes(dispatcher: DispatcherProcess) -> None:
    result = run_commander(dispatcher.address, "What is 2+3?", "--tokens-per-s", "0")

    out = result.stdout
    assert result.returncode == 0, out
    assert "→ tool calculator" in out, out
    assert re.search(r"← calculator returned .*\"value\":\s*5\b", out), out
    assert "FINISHED" in out
    assert "dispatcher:e2e" in out
    no_traceback(out)


def test_commander_json_output_is_json_lines_ending_with_the_result(dispatcher: DispatcherProcess) -> None:
    result = run_commander(dispatcher.address, "What is 2+3?", "--tokens-per-s", "0", "--json")

    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines, "no output"
    events = [json.loads(line) for line in lines]  # every line is JSON
    kinds = [e["event"] for e in events]
    assert kinds[0] == "HandshakeDone"
    calls = [e for e in events if e["event"] == "ToolCallSent"]
    assert [c["tool_name"] for c in calls] == ["calculator"]
    results = [e for e in events if e["event"] == "ToolResultReceived"]
    assert len(results) == 1 and json.loads(results[0]["result_json"])["value"] == 5
    assert not results[0]["error_code"]
    last = events[-1]
    assert last["event"] == "SessionResult"
    assert last["state"] == "FINISHED"
    assert last["stop"] is None
    assert last["tool_calls"] == 1
    assert last["trailers"]["x-session-state"] == "FINISHED"
    assert kinds.count("SessionResult") == 1


def test_policy_stop_ends_the_commander_with_exit_2_and_one_logged_outcome(
    start_dispatcher: DispatcherFactory,
) -> None:
    dispatcher = start_dispatcher("--block-pattern", "forbidden", "--log-level", "debug")
    session_id = f"e2e-policy-{uuid.uuid4()}"

    result = run_commander(
        dispatcher.address,
        "Please tell me the forbidden thing.",
        "--tokens-per-s",
        "50",
        "--session-id",
        session_id,
    )

    out = result.stdout
    assert result.returncode == 2, out
    assert "POLICY_VIOLATION" in out
    assert "policy:content_blocklist → dispatcher:e2e" in out
    assert STOP_TO_HALT.search(out), out
    assert session_id in out
    no_traceback(out)

    ended = dispatcher.wait_for_event("session.ended", session_id=session_id)
    lines = dispatcher.log_lines()
    assert len([x for x in lines if x.get("event") == "session.ended" and x.get("session_id") == session_id]) == 1
    assert ended["state"] == "STOPPED"
    assert ended["stop_code"] == "POLICY_VIOLATION"
    assert ended["stop_confirmed"] is True
    assert ended["stop_path"] == ["policy:content_blocklist", "dispatcher:e2e"]

    # every line about the session carries its id: session/tool/packet events and any line naming it
    about = [
        x
        for x in lines
        if str(x.get("event", "")).startswith(("session.", "tool.", "packet.")) or session_id in json.dumps(x)
    ]
    assert {x["event"] for x in about} >= {"session.opened", "tool.finished", "session.ended"}, about
    missing = [x for x in about if x.get("session_id") != session_id]
    assert not missing, f"log lines about the session without its session_id: {missing}"


@contextlib.contextmanager
def slow_commander(address: str) -> Iterator[subprocess.Popen[bytes]]:
    """A `commander run` streaming a long answer at 5 tokens/s; killed on exit if still running."""
    command = [
        str(COMMANDER), "run",
        "--target", address,
        "--prompt", "Tell me a long story.",
        "--tokens-per-s", "5",
        "--answer-words", "200",
    ]  # fmt: skip
    commander = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV
    )
    try:
        yield commander
    finally:
        if commander.poll() is None:
            commander.kill()
            commander.communicate(timeout=COMMANDER_TIMEOUT_S)


def output_of(commander: subprocess.Popen[bytes]) -> str:
    out_bytes, _ = commander.communicate(timeout=COMMANDER_TIMEOUT_S)
    return out_bytes.decode("utf-8", "replace")


def test_ctrl_c_cancels_the_commander_session_and_tells_the_dispatcher(dispatcher: DispatcherProcess) -> None:
    with slow_commander(dispatcher.address) as commander:
        opened = dispatcher.wait_for_event("session.opened")
        commander.send_signal(signal.SIGINT)
        out = output_of(commander)
    assert commander.returncode == 130, out
    assert "CANCELLED" in out and "cancelled by the commander" in out
    no_traceback(out)
    ended = dispatcher.wait_for_event("session.ended", session_id=opened["session_id"])
    assert (ended["state"], ended["ended_by"], ended["reason"]) == (
        "CANCELLED",
        "commander",
        "cancelled by the commander",
    )


def test_sigterm_drains_an_open_session_then_the_address_refuses(start_dispatcher: DispatcherFactory) -> None:
    grace_s = 5.0
    dispatcher = start_dispatcher("--shutdown-grace-s", str(grace_s))
    with slow_commander(dispatcher.address) as commander:
        opened = dispatcher.wait_for_event("session.opened")
        started = time.monotonic()
        dispatcher.send_signal(signal.SIGTERM)

        out = output_of(commander)
        assert commander.returncode == 2, out
        assert "SHUTDOWN" in out
        assert "shutdown:SIGTERM → dispatcher:e2e" in out
        no_traceback(out)

        assert dispatcher.wait_exit(grace_s + 5.0) == 0, dispatcher.describe()
        assert time.monotonic() - started < grace_s + 5.0

    events = [x.get("event") for x in dispatcher.log_lines()]
    assert "dispatcher.draining" in events and "dispatcher.stopped" in events, dispatcher.describe()
    assert events.index("dispatcher.draining") < events.index("dispatcher.stopped")
    (draining,) = dispatcher.events("dispatcher.draining")
    assert draining["reason"] == "SIGTERM received" and draining["open_sessions"] == 1
    (ended,) = dispatcher.events("session.ended", session_id=opened["session_id"])
    assert ended["stop_code"] == "SHUTDOWN" and ended["stop_confirmed"] is True
    assert dispatcher.events("dispatcher.stopped")[0]["sessions_cut"] == 0

    late = run_commander(dispatcher.address, "Anyone there?", "--tokens-per-s", "0")
    assert late.returncode == 1, late.stdout
    assert "UNAVAILABLE" in late.stdout or "refused" in late.stdout.lower(), late.stdout
    no_traceback(late.stdout)


def test_sigint_stops_an_idle_dispatcher_cleanly(dispatcher: DispatcherProcess) -> None:
    dispatcher.send_signal(signal.SIGINT)

    assert dispatcher.wait_exit(10.0) == 0, dispatcher.describe()
    (draining,) = dispatcher.events("dispatcher.draining")
    assert draining["reason"] == "SIGINT received" and draining["open_sessions"] == 0
    assert dispatcher.events("dispatcher.stopped")
    no_traceback(dispatcher.log_text())


# -- --help, tools -------------------------------------------------------------------------


def _help_of(binary: Path, subcommand: str) -> tuple[str, str]:
    """`--help` at a fixed 80 columns (what a pipe gets), and the same text without any whitespace."""
    result = run_cli(str(binary), subcommand, "--help", env={**ENV, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    no_traceback(result.stdout + result.stderr)
    return result.stdout, re.sub(r"\s+", "", result.stdout)


HELP_CASES = [
    pytest.param(
        DISPATCHER,
        dispatcher_cli.serve,
        DispatcherConfig,
        "DISPATCHER_",
        ["--listen", "--keepalive-time-ms", "--block-pattern", "--shutdown-grace-s", "--config", "--print-config"],
        id="dispatcher-serve",
    ),
    pytest.param(
        COMMANDER,
        commander_cli.run,
        CommanderConfig,
        "COMMANDER_",
        ["--target", "--tokens-per-s", "--tls", "--prompt", "--json", "--config"],
        id="commander-run",
    ),
]


@pytest.mark.parametrize(("binary", "command", "config_cls", "prefix", "must_have"), HELP_CASES)
def test_help_lists_every_option_with_help_and_env_var(
    binary: Path, command: click.Command, config_cls: type, prefix: str, must_have: list[str]
) -> None:
    text, squeezed = _help_of(binary, command.name or "")

    for flag in must_have:
        assert re.search(rf"^\s+(-\w, )?{re.escape(flag)}\b", text, re.M), f"{flag} missing from --help:\n{text}"
    options = [p for p in command.params if isinstance(p, click.Option)]
    assert len(options) > len(must_have)
    for option in options:
        assert option.help and option.help.strip(), f"{option.opts} has no help text"
        for name in option.opts:
            assert re.search(rf"(^|[\s/,]){re.escape(name)}\b", text, re.M), f"{name} missing from --help"
        assert re.sub(r"\s+", "", option.help) in squeezed, f"help of {option.opts} not shown"
    for s in settings._settings(config_cls, prefix):
        assert f"[env{s.env};" in squeezed, f"{s.env} missing from the help of --{s.flag}"


@pytest.mark.parametrize(("binary", "command", "config_cls", "prefix", "must_have"), HELP_CASES)
def test_help_shows_env_var_names_unbroken(
    binary: Path, command: click.Command, config_cls: type, prefix: str, must_have: list[str]
) -> None:
    text, _ = _help_of(binary, command.name or "")
    broken = [s.env for s in settings._settings(config_cls, prefix) if s.env not in text]
    assert not broken, f"env var names split across lines in --help: {broken}"


def test_dispatcher_tools_lists_the_builtin_tools() -> None:
    result = run_cli(str(DISPATCHER), "tools")

    assert result.returncode == 0, result.stderr
    names = re.findall(r"^(\w+): ", result.stdout, re.M)
    assert set(names) == {"echo", "clock", "calculator"}, result.stdout  # `sleep` only with --test-tools
    with_test_tools = run_cli(str(DISPATCHER), "tools", "--test-tools")
    assert "sleep" in re.findall(r"^(\w+): ", with_test_tools.stdout, re.M), with_test_tools.stdout
    for name in ("echo", "clock", "calculator"):
        schema_line = result.stdout.split(f"{name}: ", 1)[1].splitlines()[1]
        assert schema_line.strip().startswith("schema: ")
        json.loads(schema_line.split("schema: ", 1)[1])


# -- configuration -------------------------------------------------------------------------


def test_config_file_env_and_flags_combine_with_flags_winning(tmp_path: Path) -> None:
    config = tmp_path / "dispatcher.toml"
    config.write_text('[policy]\nblock_patterns = ["fromtoml"]\n\n[server]\ninstance_id = "fromtoml"\n')
    env = {**ENV, "DISPATCHER_INSTANCE_ID": "fromenv"}
    env.pop("DISPATCHER_BLOCK_PATTERN", None)

    result = run_cli(str(DISPATCHER), "serve", "--print-config", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["policy"]["block_patterns"] == ["fromtoml"]
    assert printed["server"]["instance_id"] == "fromenv"  # env beats the file

    result = run_cli(
        str(DISPATCHER), "serve", "--print-config", "--config", str(config), "--instance-id", "fromflag", env=env
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["server"]["instance_id"] == "fromflag"  # the flag beats the env var
    assert printed["policy"]["block_patterns"] == ["fromtoml"]


def test_invalid_listen_is_a_one_line_usage_error() -> None:
    result = run_cli(str(DISPATCHER), "serve", "--listen", "nonsense")

    assert result.returncode == 2, result.stderr
    no_traceback(result.stdout + result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "listen" in errors[0] and "nonsense" in errors[0], errors[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_in_use_exits_nonzero(busy_port: int) -> None:
    result = run_cli(str(DISPATCHER), "serve", "--listen", f"127.0.0.1:{busy_port}", "--log-format", "json")

    assert result.returncode != 0, result.stdout + result.stderr


def test_port_in_use_is_a_clear_message_without_traceback(busy_port: int) -> None:
    result = run_cli(str(DISPATCHER), "serve", "--listen", f"127.0.0.1:{busy_port}", "--log-format", "json")

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    no_traceback(output)
    assert f"127.0.0.1:{busy_port}" in output
    assert re.search(r"in use|could not listen|bind", output, re.I), output


# -- make demo -----------------------------------------------------------------------------


def _demo_dispatchers() -> set[int]:
    found = subprocess.run(
        ["pgrep", "-f", "dispatcher serve .*--instance-id demo"], capture_output=True, text=True, check=False
    )
    return {int(pid) for pid in found.stdout.split()}


def test_make_demo_runs_clean_and_leaves_nothing_running() -> None:
    before = _demo_dispatchers()  # someone else's demo is not ours to judge
    # -o: never (re)build the venv from a test, even when pyproject.toml is newer than the stamp
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "demo"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        encoding="utf-8",
        errors="replace",
        timeout=120,
        env=ENV,
        check=False,
    )

    out = result.stdout
    assert result.returncode == 0, out
    for needle in ("FINISHED", "STOPPED", "POLICY_VIOLATION", "stop→halt", "packets/s", "demo OK"):
        assert needle in out, f"{needle!r} missing from the demo's output:\n{out}"
    no_traceback(out)
    wait_for(lambda: not (_demo_dispatchers() - before), "the demo's dispatcher to be gone", 10.0)


# -- a client built from our proto against the subprocess ---------------------------------


@pytest.mark.anyio
async def test_health_and_reflection_are_served(dispatcher: DispatcherProcess) -> None:
    async with grpc.aio.insecure_channel(dispatcher.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", wire.SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_S)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        assert wire.SERVICE_NAME == "southwest.ai.agent.v1.AgentInteraction"

        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=WAIT_S
        )
        names = set()
        async for response in call:
            names |= {s.name for s in response.list_services_response.service}
        assert {wire.SERVICE_NAME, "grpc.health.v1.Health"} <= names, names


@asynccontextmanager
async def draining(
    start_dispatcher: DispatcherFactory, *, shutdown_grace_s: float, stop_grace_ms: int
) -> AsyncIterator[tuple[DispatcherProcess, grpc.aio.Channel, RawSession]]:
    """A dispatcher told to SIGTERM while one session is open and does not confirm its stop.

    The drain then lasts the session's stop grace: long enough to try new sessions.
    """
    dispatcher = start_dispatcher(
        "--shutdown-grace-s", str(shutdown_grace_s), "--session-stop-grace-ms", str(stop_grace_ms)
    )
    async with grpc.aio.insecure_channel(dispatcher.address) as channel:
        held = RawSession(channel)
        welcome = await held.hello(session_id="e2e-held")
        assert welcome.session_id == "e2e-held"
        os.kill(dispatcher.pid, signal.SIGTERM)
        stop = await held.recv_kind("stop")  # sent after the dispatcher switched to draining
        assert wire.stop_from_wire(stop.stop).code.name == "SHUTDOWN"
        yield dispatcher, channel, held


async def refusal(channel: grpc.aio.Channel, *, hello_first: bool) -> tuple[grpc.StatusCode, str]:
    """Open a new ChatStream (optionally writing a Hello, as the commander does) and return its status."""
    late = RawSession(channel)
    if hello_first:
        with contextlib.suppress(grpc.aio.AioRpcError):  # the refusal may already have ended the call
            await late.send(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(agent_name="late")))
    code, details, _ = await late.status()
    return code, details


@pytest.mark.anyio
async def test_new_sessions_are_refused_while_draining(start_dispatcher: DispatcherFactory) -> None:
    async with draining(start_dispatcher, shutdown_grace_s=3.0, stop_grace_ms=2000) as (dispatcher, channel, held):
        async with grpc.aio.insecure_channel(dispatcher.address) as fresh:
            for client in (channel, fresh):
                code, details = await refusal(client, hello_first=False)
                assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
                assert "shutting down" in details
        assert dispatcher.proc.poll() is None, "the drain should still be waiting for the unconfirmed session"

        held_code, _, trailers = await held.status()  # ended by the dispatcher after the stop grace
        assert trailers.get("x-session-state") == "STOPPED", (held_code, trailers)

    await wait_until(lambda: dispatcher.proc.poll() is not None, "dispatcher exit after the drain", 3.0 + 5.0)
    assert dispatcher.proc.returncode == 0, dispatcher.describe()
    refused = dispatcher.events("session.refused")
    assert len(refused) == 2 and all(x["code"] == "UNAVAILABLE" for x in refused)
    (ended,) = dispatcher.events("session.ended", session_id="e2e-held")
    assert ended["stop_code"] == "SHUTDOWN" and ended["stop_confirmed"] is False
    assert dispatcher.events("dispatcher.stopped")[0]["sessions_cut"] == 0


@pytest.mark.anyio
async def test_new_sessions_that_write_hello_while_draining_always_see_unavailable(
    start_dispatcher: DispatcherFactory,
) -> None:
    async with draining(start_dispatcher, shutdown_grace_s=6.0, stop_grace_ms=5000) as (_dispatcher, channel, _held):
        seen: collections.Counter[str] = collections.Counter()
        deadline = time.monotonic() + 2.5  # well inside the 5 s the drain is held open
        while time.monotonic() < deadline and seen["UNAVAILABLE"] < 1000:
            code, details = await refusal(channel, hello_first=True)
            seen[code.name] += 1
            assert code == grpc.StatusCode.UNAVAILABLE, f"{code.name}: {details!r} after {dict(seen)}"


def test_hash_token_prints_a_tokens_file_line() -> None:
    result = subprocess.run(
        [str(DISPATCHER), "hash-token", "--role", "operator", "--name", "alice"],
        input="s3cret\n", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "operator alice sha256:" + hashlib.sha256(b"s3cret").hexdigest()


def test_bad_tokens_configuration_is_one_line_and_exit_2() -> None:
    for flags in (["--tokens", "operator alice plaintext"], ["--tokens-file", "/nonexistent/tokens"]):
        result = run_cli(str(DISPATCHER), "serve", "--listen", "127.0.0.1:0", *flags)
        assert result.returncode == 2, result.stderr
        no_traceback(result.stderr)
        assert result.stderr.startswith("dispatcher: ")


@pytest.mark.parametrize(("flags", "on_uvloop"), [(("--uvloop",), True), ((), False)])
def test_dispatcher_serves_on_uvloop_or_by_default_plain_asyncio(
    start_dispatcher: DispatcherFactory, flags: tuple[str, ...], on_uvloop: bool
) -> None:
    dispatcher = start_dispatcher(*flags)
    serving = dispatcher.wait_for_event("dispatcher.serving")
    assert serving["config"]["server"]["uvloop"] is on_uvloop
    result = run_commander(dispatcher.address, "What is 2 + 2?", "--tokens-per-s", "0")
    assert result.returncode == 0, result.stdout
    assert "FINISHED" in result.stdout
