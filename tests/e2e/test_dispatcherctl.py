"""End to end: the installed `dispatcherctl` against a real `dispatcher serve` subprocess.

What an operator sees: exit codes, one-line errors without tracebacks, tables and JSON lines,
a finished session shown and watched, Ctrl-C on a live watch. (Operator stops mid-answer,
watch resume, the commander pool and tokens have their own tests.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    BIN,
    COMMANDER,
    ENV,
    EXIT_TIMEOUT_S,
    DispatcherProcess,
    run_cli,
    run_commander,
    wait_for,
)

DISPATCHERCTL = BIN / "dispatcherctl"
SERVICES = ("(server)", "southwest.ai.agent.v1.AgentInteraction", "southwest.ai.agent.v1.SessionControlService")

pytestmark = pytest.mark.timeout(90)


def ctl(target: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`dispatcherctl --target TARGET ARGS...` to completion."""
    return run_cli(str(DISPATCHERCTL), "--target", target, *args, env=env)


def one_line_error(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """The single stderr line of a failed command (asserting its exit code and no traceback)."""
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == exit_code, shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1, shown
    return lines[0]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def closed_port() -> Iterator[str]:
    """A loopback address that refuses connections: bound by us, never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def finished_session(dispatcher: DispatcherProcess) -> str:
    """The id of a session that ran to its end on `dispatcher` (scripted commander, one tool call)."""
    session_id = f"e2e-{uuid.uuid4().hex[:8]}"
    result = run_commander(dispatcher.address, "What is 2+3?", "--tokens-per-s", "0", "--session-id", session_id)
    assert result.returncode == 0, result.stdout
    return session_id


# -- help and usage ---------------------------------------------------------------------------


def test_help_lists_commands_and_exit_codes() -> None:
    result = run_cli(str(DISPATCHERCTL), "--help")
    assert result.returncode == 0, result.stderr
    for word in ("sessions", "show", "stop", "watch", "ask", "health", "DISPATCHER_TARGET", "130  interrupted"):
        assert word in result.stdout
    for command in ("sessions", "show", "stop", "watch", "ask", "health"):
        sub = run_cli(str(DISPATCHERCTL), command, "--help")
        assert sub.returncode == 0 and "--json" in sub.stdout, sub.stdout + sub.stderr


def test_stop_needs_a_session_id_or_all(dispatcher: DispatcherProcess) -> None:
    result = ctl(dispatcher.address, "stop", "--reason", "x")
    assert result.returncode == 2 and "give either SESSION_ID or --all" in result.stderr, result.stderr


# -- health, sessions -------------------------------------------------------------------------


def test_health_reports_every_service_serving(dispatcher: DispatcherProcess) -> None:
    result = ctl(dispatcher.address, "health")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split() for line in result.stdout.splitlines()] == [["SERVING", s] for s in SERVICES]
    as_json = ctl(dispatcher.address, "health", "--json")
    assert as_json.returncode == 0
    assert {line["status"] for line in json_lines(as_json.stdout)} == {"SERVING"}


def test_health_of_an_unknown_service_fails(dispatcher: DispatcherProcess) -> None:
    result = ctl(dispatcher.address, "health", "--service", "no.such.Service")
    assert result.returncode == 1 and result.stdout.split() == ["SERVICE_UNKNOWN", "no.such.Service"], result.stdout


def test_sessions_on_an_empty_dispatcher(dispatcher: DispatcherProcess) -> None:
    result = ctl(dispatcher.address, "sessions")
    assert (result.returncode, result.stdout, result.stderr) == (0, "no sessions\n", "")
    as_json = ctl(dispatcher.address, "sessions", "--json", "--state", "live")
    assert (as_json.returncode, as_json.stdout) == (0, "")
    stop_all = ctl(dispatcher.address, "stop", "--all", "--reason", "nothing to do")
    assert stop_all.returncode == 0, stop_all.stderr
    assert stop_all.stdout.splitlines() == ["no live sessions", "0 confirmed, 0 not confirmed, 0 already ended"]


def test_a_finished_session_listed_shown_and_watched(dispatcher: DispatcherProcess, finished_session: str) -> None:
    listed = ctl(dispatcher.address, "sessions", "--json")
    assert listed.returncode == 0, listed.stderr
    [info] = [s for s in json_lines(listed.stdout) if s["session_id"] == finished_session]
    assert info["state"] == "SESSION_STATE_FINISHED" and info["tool_calls_done"] == 1
    assert info["packets_in"]["content"] > 0 and info["outcome"]["state"] == "SESSION_STATE_FINISHED"

    table = ctl(dispatcher.address, "sessions", "--state", "ended")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["SESSION", "STATE", "COMMANDER"]
    assert any(line.split()[:2] == [finished_session, "FINISHED"] for line in table.stdout.splitlines())
    assert ctl(dispatcher.address, "sessions", "--state", "live").stdout == "no sessions\n"

    shown = ctl(dispatcher.address, "show", finished_session)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[:2] == [f"session          {finished_session}", "state            FINISHED"]
    shown_json = json.loads(ctl(dispatcher.address, "show", finished_session, "--json").stdout)
    assert shown_json["session"]["session_id"] == finished_session

    watched = ctl(dispatcher.address, "watch", finished_session)
    assert watched.returncode == 0, watched.stderr
    last = info["last_event_seq"]
    assert watched.stdout.splitlines()[0] == "#1 state_change OPEN: stream opened"
    assert f"#{last} state_change FINISHED" in watched.stdout
    assert watched.stdout.endswith(f"\nlast seq {last}\n")

    events = json_lines(ctl(dispatcher.address, "watch", finished_session, "--json", "--kind", "tool_call").stdout)
    assert [e["tool_call"]["tool_name"] for e in events[:-1]] == ["calculator"]
    assert events[-1] == {"last_seq": events[-2]["seq"]}  # the journal's seq of the last event shown


def test_stopping_an_ended_session_says_so(dispatcher: DispatcherProcess, finished_session: str) -> None:
    result = ctl(dispatcher.address, "stop", finished_session, "--reason", "too late")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith(f"already ended {finished_session}: FINISHED ("), result.stdout
    as_json = json.loads(ctl(dispatcher.address, "stop", finished_session, "--reason", "x", "--json").stdout)
    assert as_json["result"] == "STOP_RESULT_ALREADY_ENDED" and "round_trip_ms" in as_json


# -- errors: one line, the right exit code ------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["show"], ["stop", "--reason", "x"], ["watch"], ["watch", "--from", "5"], ["show", "--json"]],
    ids=lambda c: " ".join(c),
)
def test_an_unknown_session_exits_4(dispatcher: DispatcherProcess, command: list[str]) -> None:
    session_id = f"missing-{uuid.uuid4().hex[:6]}"
    result = ctl(dispatcher.address, command[0], session_id, *command[1:])
    assert one_line_error(result, 4) == f"no session {session_id} on {dispatcher.address}"
    assert result.stdout == ""


@pytest.mark.parametrize(
    "command", [["sessions"], ["health"], ["show", "x"], ["ask", "hi"], ["stop", "--all", "--reason", "x"]]
)
def test_an_unreachable_dispatcher_exits_3(closed_port: str, command: list[str]) -> None:
    result = ctl(closed_port, *command)
    line = one_line_error(result, 3)
    assert line.startswith(f"cannot reach dispatcher at {closed_port}: "), line
    assert "refused" in line.lower(), line


def test_the_target_comes_from_the_environment(closed_port: str) -> None:
    result = run_cli(str(DISPATCHERCTL), "sessions", env={**ENV, "DISPATCHER_TARGET": closed_port})
    assert one_line_error(result, 3).startswith(f"cannot reach dispatcher at {closed_port}: ")


def test_tls_to_a_plaintext_dispatcher_is_one_line_even_with_grpc_logging_default(
    dispatcher: DispatcherProcess,
) -> None:
    env = {k: v for k, v in ENV.items() if k != "GRPC_VERBOSITY"}  # dispatcherctl quiets grpc's core itself
    line = one_line_error(ctl(dispatcher.address, "--tls", "sessions", env=env), 3)
    assert line.startswith(f"cannot reach dispatcher at {dispatcher.address}: ") and "andshake" in line, line


def test_ask_without_a_pool_commander_is_one_line(dispatcher: DispatcherProcess) -> None:
    line = one_line_error(ctl(dispatcher.address, "ask", "hi", "--wait-ms", "1"), 1)
    assert line.startswith("UNAVAILABLE: "), line


# -- Ctrl-C ------------------------------------------------------------------------------------


def test_ctrl_c_ends_a_live_watch_with_130_and_a_resume_hint(dispatcher: DispatcherProcess, tmp_path: Path) -> None:
    session_id = f"e2e-slow-{uuid.uuid4().hex[:8]}"
    slow = [str(COMMANDER), "run", "--target", dispatcher.address, "--prompt", "hello", "--session-id", session_id]
    slow += ["--tokens-per-s", "2", "--answer-words", "400", "--quiet"]
    commander = subprocess.Popen(slow, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_for(lambda: ctl(dispatcher.address, "show", session_id).returncode == 0, f"session {session_id} listed")
        out_path, err_path = tmp_path / "watch.out", tmp_path / "watch.err"
        with out_path.open("w") as out, err_path.open("w") as err:
            watch = subprocess.Popen(
                [str(DISPATCHERCTL), "--target", dispatcher.address, "watch", session_id],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=ENV,
                start_new_session=True,  # our SIGINT only, as a terminal would send it
            )
        try:
            # the first content delta is written (and flushed) without a newline
            wait_for(lambda: "#1 state_change OPEN" in out_path.read_text(), "the watch's first event")
            os.kill(watch.pid, signal.SIGINT)
            code = watch.wait(timeout=EXIT_TIMEOUT_S)
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait()
        stdout, stderr = out_path.read_text(), err_path.read_text()
        assert code == 130, stdout + stderr
        assert "Traceback" not in stderr
        last_line = stdout.splitlines()[-1]
        assert last_line.startswith("last seq "), stdout
        last = int(last_line.removeprefix("last seq "))
        assert stderr == f"interrupted; last seq {last}, resume with --from {last + 1}\n"
    finally:
        commander.send_signal(signal.SIGINT)
        try:
            commander.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            commander.kill()
            commander.wait()
