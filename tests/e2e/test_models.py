"""`commander run|serve --model openai:NAME` and `--agent MODULE:CALLABLE` as real subprocesses,
against a `dispatcher serve` subprocess and a real local OpenAI-compatible HTTP server.

The README's agent example is taken from the README and run as written.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from shared import wire
from tests.e2e.conftest import (
    COMMANDER,
    COMMANDER_TIMEOUT_S,
    ENV,
    ROOT,
    DispatcherFactory,
    parse_json_lines,
    run_cli,
    wait_for,
)
from tests.fake_openai import Reply, content_chunks, fake_openai_in_thread, tool_call_chunks, usage_chunk

pytestmark = [pytest.mark.timeout(90)]

DISPATCHERCTL = COMMANDER.parent / "dispatcherctl"
README = ROOT / "README.md"


def readme_block(first_line: str, language: str = "python") -> str:
    for block in re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S):
        if block.startswith(first_line + "\n"):
            return str(block)
    raise AssertionError(f"no {language} block starting {first_line!r} in the README")


def commander(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMANDER), *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        encoding="utf-8",
        errors="replace",
        timeout=COMMANDER_TIMEOUT_S,
        env=env or ENV,
        cwd=cwd,
        check=False,
    )


def result_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    [result] = [line for line in parse_json_lines(proc.stdout) if line.get("event") == "SessionResult"]
    return result


def ctl(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(str(DISPATCHERCTL), "--target", address, *args)


def test_run_with_a_model_streams_calls_a_tool_reports_usage_and_dispatcherctl_shows_it(
    start_dispatcher: DispatcherFactory,
) -> None:
    dispatcher = start_dispatcher()
    first = Reply(chunks=[*tool_call_chunks(("call_1", "calculator", {"expression": "(17 + 25) * 3"})),
                          usage_chunk(30, 12)])  # fmt: skip
    second = Reply(chunks=[*content_chunks("It is", " 126.", reasoning=("Multiply.",)), usage_chunk(50, 6, 2)])
    with fake_openai_in_thread(first, second) as server:
        proc = commander(
            "run", "--target", dispatcher.address, "--prompt", "What is (17 + 25) * 3?", "--json",
            "--model", "openai:fake-model", "--base-url", server.base_url, "--api-key-env", "FAKE_KEY",
            "--system-prompt", "Use the calculator.", "--header", "X-Trace: e2e",
            env={**ENV, "FAKE_KEY": "sk-e2e"},
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = parse_json_lines(proc.stdout)
    assert [line["delta"] for line in lines if line["event"] == "ThoughtEmitted"] == ["Multiply."]
    assert "".join(line["text"] for line in lines if line["event"] == "ContentEmitted") == "It is 126."
    [result_line] = [line for line in lines if line["event"] == "ToolResultReceived"]
    assert '"value":126' in result_line["result_json"]
    result = result_of(proc)
    assert result["state"] == "FINISHED"
    assert result["usage"]["prompt_tokens"] == 80 and result["usage"]["completion_tokens"] == 18
    assert server.headers[0]["authorization"] == "Bearer sk-e2e" and server.headers[0]["x-trace"] == "e2e"
    tool_message = server.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool" and json.loads(tool_message["content"])["value"] == 126

    shown = ctl(dispatcher.address, "show", result["session_id"])
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"tokens\s+80 prompt \+ 18 completion = 98 \(2 reasoning\) in 2 model request", shown.stdout)
    assert "openai:fake-model" in shown.stdout
    listed = ctl(dispatcher.address, "sessions")
    assert "openai:fake-model" in listed.stdout, listed.stdout
    tools = ctl(dispatcher.address, "tools")
    assert tools.returncode == 0 and re.search(r"^calculator\b", tools.stdout, re.M), tools.stdout
    assert '"expression"' in tools.stdout


def test_a_stop_closes_the_model_request_and_the_figure_is_in_the_json_result(
    start_dispatcher: DispatcherFactory,
) -> None:
    dispatcher = start_dispatcher()
    slow = Reply(chunks=content_chunks(*(f" w{n}" for n in range(3000))), delay_s=0.01)
    with fake_openai_in_thread(slow) as server:
        proc = subprocess.Popen(
            [str(COMMANDER), "run", "--target", dispatcher.address, "--prompt", "Talk", "--json",
             "--session-id", "e2e-stop", "--model", "openai:slow", "--base-url", server.base_url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, encoding="utf-8", env=ENV,
        )  # fmt: skip
        try:
            wait_for(lambda: len(server.written) > 20, "the model streaming")
            server.mark_stop()
            stopped = ctl(dispatcher.address, "stop", "e2e-stop", "--reason", "enough")
            stdout, stderr = proc.communicate(timeout=COMMANDER_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        written = len(server.written)
        disconnected_at = server.disconnected_at
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert proc.returncode == 2, stdout + stderr
    result = next(line for line in parse_json_lines(stdout) if line.get("event") == "SessionResult")
    assert result["state"] == "STOPPED" and result["stop"]["code"] == "OPERATOR"
    assert result["stop_to_abort_ms"] is not None and 0 <= result["stop_to_abort_ms"] <= result["stop_to_halt_ms"]
    assert disconnected_at is not None and written < 1000  # the server saw the client go; generation cut off


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Reply(status=401, error_message="Incorrect API key provided"), "MODEL_UNAUTHORIZED"),
        (Reply(status=500, error_message="overloaded"), "MODEL_UNAVAILABLE"),
        (Reply(chunks=["data: garbage{"]), "MODEL_BAD_RESPONSE"),
    ],
)
def test_a_model_error_fails_the_run_and_dispatcherctl_shows_the_reason(
    start_dispatcher: DispatcherFactory, reply: Reply, code: str
) -> None:
    dispatcher = start_dispatcher()
    with fake_openai_in_thread(reply) as server:
        proc = commander("run", "--target", dispatcher.address, "--prompt", "Hi", "--json", "--retries", "1",
                         "--retry-backoff-s", "0.01", "--model", "openai:m", "--base-url", server.base_url)  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = result_of(proc)
    assert result["state"] == "FAILED" and result["error_code"] == code, result
    shown = ctl(dispatcher.address, "show", result["session_id"])
    assert re.search(rf"error code\s+{code}", shown.stdout), shown.stdout
    assert f"commander reported {code}" in shown.stdout


def test_a_token_budget_stops_a_model_session(start_dispatcher: DispatcherFactory) -> None:
    dispatcher = start_dispatcher("--policy-max-completion-tokens", "20")
    reply = Reply(chunks=[*content_chunks("A long answer"), usage_chunk(10, 64)])
    with fake_openai_in_thread(reply) as server:
        proc = commander("run", "--target", dispatcher.address, "--prompt", "Hi", "--json",
                         "--model", "openai:m", "--base-url", server.base_url)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    stop = result_of(proc)["stop"]
    assert stop["code"] == "BUDGET_EXCEEDED" and stop["cause"] == "budget=completion_tokens limit=20 used=64"


def test_the_readme_agent_runs_as_written_with_run_serve_and_the_library(
    tmp_path: Path, start_dispatcher: DispatcherFactory
) -> None:
    dispatcher = start_dispatcher()
    (tmp_path / "my_agent.py").write_text(readme_block("# my_agent.py"))
    (tmp_path / "run_my_agent.py").write_text(readme_block("# run_my_agent.py"))
    proc = commander("run", "--target", dispatcher.address, "--prompt", "What is 17 + 25?", "--agent",
                     "my_agent:my_agent", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "The sum is 42." in proc.stdout
    listed = ctl(dispatcher.address, "sessions", "--json")
    assert [json.loads(line)["agent_name"] for line in listed.stdout.splitlines()] == ["my-agent"]

    library = subprocess.run(
        [str(COMMANDER.parent / "python"), "run_my_agent.py"], cwd=tmp_path, capture_output=True, text=True,
        timeout=COMMANDER_TIMEOUT_S, env={**ENV, "DISPATCHER_TARGET": dispatcher.address}, check=False,
    )  # fmt: skip
    assert library.returncode == 0 and "FINISHED" in library.stdout, library.stdout + library.stderr

    pool = subprocess.Popen(
        [str(COMMANDER), "serve", "--target", dispatcher.address, "--agent", "my_agent:my_agent", "-n", "1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=ENV, text=True,
    )  # fmt: skip
    try:
        with grpc.insecure_channel(dispatcher.address) as channel:
            control = wire.SessionControlServiceStub(channel)

            def ask() -> Any:
                try:
                    return control.Ask(wire.ctl.AskRequest(input_text="What is 17 + 25?", wait_for_commander_ms=500))
                except grpc.RpcError as exc:
                    if exc.code() is grpc.StatusCode.UNAVAILABLE:  # the pool stream is not parked yet
                        return None
                    raise

            answer = wait_for(ask, "an answer from the pool")
        assert "The sum is 42." in answer.answer
    finally:
        pool.terminate()
        out, err = pool.communicate(timeout=15)
    assert pool.returncode == 0, out + err
    assert json.loads(out.splitlines()[0])["state"] == "FINISHED", out


def test_a_bad_agent_or_model_option_is_a_one_line_usage_error(tmp_path: Path) -> None:
    (tmp_path / "not_async.py").write_text("def agent(ctx, prompt):\n    return None\n")
    for args, message in [
        (("--agent", "no_such_module:agent"), "cannot import 'no_such_module'"),
        (("--agent", "not_async:missing"), "has no 'missing'"),
        (("--agent", "not_async:agent"), "not an async (ctx, input) callable"),
        (("--agent", "not_async"), "expected PACKAGE.MODULE:CALLABLE"),
        (("--model", "gpt-4o"), "expected openai:MODEL_NAME"),
        (("--model", "openai:m", "--agent", "not_async:agent"), "exclude each other"),
        (("--model", "openai:m", "--system-prompt-file", "/nonexistent/prompt"), "--system-prompt-file"),
    ]:
        proc = commander("run", "--target", "127.0.0.1:1", "--prompt", "x", *args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_model_flags_are_in_the_help() -> None:
    proc = commander("run", "--help")
    for flag in ("--model", "--base-url", "--api-key-env", "--temperature", "--max-tokens", "--system-prompt",
                 "--system-prompt-file", "--request-timeout-s", "--header", "--max-steps", "--retries", "--agent",
                 "--tool"):  # fmt: skip
        assert flag in proc.stdout, flag


def test_the_readme_real_model_commands_run_against_a_local_openai_compatible_server(
    start_dispatcher: DispatcherFactory,
) -> None:
    """Each command of "Run it with a real model", with the server's URL (ours, on loopback)
    and the dispatcher's address put in: the flags parse and the sessions run."""
    block = readme_block("# a dispatcher with token budgets: BUDGET_EXCEEDED once a session's reported tokens "
                         "cross them", "bash")  # fmt: skip
    commands = [shlex.split(line) for line in block.splitlines() if line.startswith(".venv/bin/")]
    serve, *runs, pool = commands
    assert serve[:2] == [".venv/bin/dispatcher", "serve"] and pool[:2] == [".venv/bin/commander", "serve"]
    dispatcher = start_dispatcher(*serve[4:])  # without --listen 127.0.0.1:50051: a free port

    def local(command: list[str], base_url: str) -> list[str]:
        out = [str(COMMANDER)]
        args = iter(command[1:])
        for arg in args:
            if arg in ("--target", "--base-url"):
                next(args)
                continue
            out.append(arg)
        return [*out, "--target", dispatcher.address, "--base-url", base_url]

    reply = Reply(chunks=[*content_chunks("Fine."), usage_chunk(10, 2)])
    with fake_openai_in_thread(reply) as server:
        for command in runs:
            proc = subprocess.run(local(command, server.base_url), capture_output=True, text=True,
                                  timeout=COMMANDER_TIMEOUT_S, env={**ENV, "OPENAI_API_KEY": "sk-readme"},
                                  check=False)  # fmt: skip
            assert proc.returncode == 0 and "Fine." in proc.stdout, (command, proc.stdout, proc.stderr)
        models = [request["model"] for request in server.requests]
        assert models == ["qwen3:8b", "Qwen/Qwen3-8B", "local", "gpt-4o-mini"], models
        assert server.headers[-1]["authorization"] == "Bearer sk-readme"
        with subprocess.Popen(local(pool, server.base_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, env=ENV, text=True) as proc:  # fmt: skip
            try:
                with grpc.insecure_channel(dispatcher.address) as channel:
                    control = wire.SessionControlServiceStub(channel)

                    def ask() -> Any:
                        try:
                            return control.Ask(wire.ctl.AskRequest(input_text="Hi", wait_for_commander_ms=500))
                        except grpc.RpcError as exc:
                            if exc.code() is grpc.StatusCode.UNAVAILABLE:  # not in the pool yet
                                return None
                            raise

                    assert wait_for(ask, "an answer from the model pool").answer == "Fine."
            finally:
                proc.terminate()
                proc.communicate(timeout=15)
