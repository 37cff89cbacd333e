"""`dispatcher-gateway` as a subprocess in front of `dispatcher serve` and a `commander serve`
pool, driven with `curl -N` as a user would: a killed curl stops its session with the `http:`
path; a resumable session survives it and resumes with `Last-Event-ID`, with no gap and no
duplicate; the README's gateway examples run as written."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import BIN, COMMANDER, DispatcherFactory, DispatcherProcess, wait_for
from tests.e2e.test_control_plane import CLEAN_ENV, Spawned, Spawner

GATEWAY = BIN / "dispatcher-gateway"
README = Path(__file__).resolve().parents[2] / "README.md"
EXIT_TIMEOUT_S = 15.0
CURL_TIMEOUT_S = 30


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path)
    try:
        yield spawner
    finally:
        spawner.kill_all()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_pool(dispatcher: DispatcherProcess, free: int) -> None:
    wait_for(
        lambda: any(e.get("free") == free for e in dispatcher.events("pool.commander_free")),
        f"{free} pool commanders registered",
        details=dispatcher.describe,
    )


def gateway_url(gateway: Spawned) -> str:
    def serving() -> str:
        for line in gateway.stderr().splitlines():
            if '"gateway.serving"' in line:
                return f"http://{json.loads(line)['address']}"
        return ""

    url: str = wait_for(serving, "the gateway's gateway.serving line", details=gateway.describe)
    return url


def start_gateway(spawn: Spawner, target: str, *extra: str) -> tuple[Spawned, str]:
    args = [GATEWAY, "--target", target, "--listen", "127.0.0.1:0", "--id", "e2e", "--log-format", "json", *extra]
    gateway = spawn("gateway", *args)
    return gateway, gateway_url(gateway)


def stop_gracefully(child: Spawned) -> None:
    child.proc.send_signal(signal.SIGTERM)
    assert child.wait(EXIT_TIMEOUT_S) == 0, child.describe()


class Curl:
    """`curl -sN` streaming an SSE response; events read one at a time from its stdout."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            ["curl", "-sN", "--max-time", str(CURL_TIMEOUT_S), *args],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            encoding="utf-8",
        )

    def events(self) -> Any:
        """(event, id, data) for each SSE event; blank-line separated, `\\r\\n` line ends."""
        assert self.proc.stdout is not None
        fields: dict[str, str] = {}
        for raw in self.proc.stdout:
            line = raw.rstrip("\r\n")
            if not line:
                if "data" in fields:
                    yield fields.get("event", "message"), fields.get("id", ""), json.loads(fields["data"])
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value

    def kill(self) -> None:
        self.proc.kill()
        self.wait()

    def wait(self) -> None:
        self.proc.wait(timeout=EXIT_TIMEOUT_S)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def post_json(path: str) -> list[str]:
    return ["-X", "POST", path, "-H", "Content-Type: application/json", "-d"]


def test_a_killed_curl_stops_its_session_and_a_kept_one_resumes_without_gap(
    start_dispatcher: DispatcherFactory, spawn: Spawner
) -> None:
    dispatcher = start_dispatcher(instance_id="gw-e2e")
    pool_args = ["serve", "--target", dispatcher.address, "-n", "2", "--tokens-per-s", "100", "--answer-words", "2000"]
    pool = spawn("pool", COMMANDER, *pool_args, "--log-level", "warning")
    wait_for_pool(dispatcher, 2)
    gateway, url = start_gateway(spawn, dispatcher.address)

    # Default mode: killing curl mid-answer stops the session, the path starting at curl.
    curl = Curl(*post_json(f"{url}/v1/sessions"), '{"input": "tell me everything"}')
    session_id = ""
    for kind, _, data in curl.events():
        session_id = session_id or data["session_id"]
        if kind == "content":
            break
    curl.kill()

    def result_of(wanted: str) -> dict[str, Any] | None:
        return next((r for r in pool.results() if r["session_id"] == wanted), None)

    result = wait_for(lambda: result_of(session_id), "the pool's result line", details=pool.describe)
    assert result["state"] == "STOPPED" and result["stop"]["code"] == "USER_CANCEL", result
    path = result["stop"]["path"]
    assert path[0].startswith("http:127.0.0.1:") and path[1] == "gateway:e2e" and path[-1] == "dispatcher:gw-e2e"

    # Resumable: killing curl stops nothing; Last-Event-ID resumes; POST .../stop stops it.
    curl = Curl(*post_json(f"{url}/v1/sessions"), '{"input": "and again", "on_disconnect": "keep"}')
    seen: list[int] = []
    contents = 0
    for kind, seq, data in curl.events():
        session_id = data["session_id"]
        seen.append(int(seq))
        contents += kind == "content"
        if contents == 5:
            break
    curl.kill()
    resumed = Curl(f"{url}/v1/sessions/{session_id}/events", "-H", f"Last-Event-ID: {seen[-1]}")
    stream = resumed.events()
    for kind, seq, _ in stream:
        seen.append(int(seq))
        if kind == "content":
            break
    stop = subprocess.run(
        ["curl", "-s", "--max-time", str(CURL_TIMEOUT_S), *post_json(f"{url}/v1/sessions/{session_id}/stop"),
         '{"reason": "read enough"}'],
        capture_output=True, encoding="utf-8", check=True,
    )  # fmt: skip
    answer = json.loads(stop.stdout)
    assert answer["confirmed"] is True and answer["stop"]["path"][1] == "gateway:e2e", answer
    ended: dict[str, Any] = {}
    for kind, seq, data in stream:
        if kind == "end":
            ended = data
            break
        seen.append(int(seq))
    assert seen == list(range(1, len(seen) + 1)), seen  # no gap, no duplicate
    assert ended["outcome"]["state"] == "SESSION_STATE_STOPPED"
    assert ended["outcome"]["stop"]["reason"] == "read enough"
    resumed.wait()
    result = wait_for(lambda: result_of(session_id), "the pool's result line", details=pool.describe)
    assert result["state"] == "STOPPED" and result["stop"]["code"] == "OPERATOR"
    stop_gracefully(gateway)
    stop_gracefully(pool)


def readme_block(lang: str, first_line_pattern: str) -> str:
    for block in re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S):
        if re.match(first_line_pattern, block):
            return str(block)
    raise AssertionError(f"no {lang} block starting {first_line_pattern!r} in the README")


def test_the_readme_gateway_examples_run_as_written(spawn: Spawner) -> None:
    grpc_port, http_port = free_port(), free_port()

    def localised(text: str) -> str:
        text = text.replace("127.0.0.1:50051", f"127.0.0.1:{grpc_port}")
        text = text.replace("127.0.0.1:8080", f"127.0.0.1:{http_port}")
        return text.replace(".venv/bin/", f"{BIN}/")

    start = readme_block("bash", r"\.venv/bin/dispatcher serve .*\n\.venv/bin/commander serve")
    children = [spawn(f"readme-{n}", *shlex.split(localised(line))) for n, line in enumerate(start.splitlines())]
    dispatcher, pool, gateway = children
    url = f"http://127.0.0.1:{http_port}"

    def pool_ready() -> bool:
        return '"free": 4' in dispatcher.stderr() + dispatcher.stdout()

    wait_for(pool_ready, "the README's pool registered", details=lambda: "\n".join(c.describe() for c in children))
    gateway_url(gateway)
    first = Curl(*post_json(f"{url}/v1/sessions"), '{"input": "What is 6 * 7?", "on_disconnect": "keep"}')
    events = list(first.events())
    first.wait()
    session_id = events[0][2]["session_id"]
    assert events[-1][0] == "end" and len(events) > 13

    block = readme_block("bash", r"GW=http")
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", localised(block)],
        capture_output=True, encoding="utf-8", timeout=60, env={**CLEAN_ENV, "SESSION": session_id},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert out.count("event: end") == 3, out  # the two new sessions and the replay
    assert "id: 13\n" in out and '"result":"STOP_RESULT_ALREADY_ENDED"' in out.replace(" ", "")
    assert '{"sessions":' in out and f'"session_id":"{session_id}"' in out.replace(" ", "")

    # The same JSON as dispatcherctl's.
    ctl = [str(BIN / "dispatcherctl"), "--target", f"127.0.0.1:{grpc_port}", "show", session_id, "--json"]
    shown = subprocess.run(ctl, capture_output=True, encoding="utf-8", timeout=30, env=CLEAN_ENV, check=True)
    assert json.loads(shown.stdout) == httpx.get(f"{url}/v1/sessions/{session_id}").json()
    listed = subprocess.run([*ctl[:3], "sessions", "--json"], capture_output=True, encoding="utf-8", timeout=30,
                            env=CLEAN_ENV, check=True)  # fmt: skip
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert lines == httpx.get(f"{url}/v1/sessions").json()["sessions"]

    python = readme_block("python", r"from openai import OpenAI")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(localised(python), "README.md", "exec"), {})
    assert "The result of 2 + 2 is 4." in printed.getvalue()
    for child in (gateway, pool, dispatcher):
        stop_gracefully(child)


def test_bad_options_are_usage_errors() -> None:
    for args, words in (
        (["--listen", "nowhere"], "expected HOST:PORT"),
        (["--id", "two words"], "--id must be"),
        (["--keepalive-s", "0"], "--keepalive-s must be more than 0"),
    ):
        run = subprocess.run([str(GATEWAY), *args], capture_output=True, encoding="utf-8", timeout=30, env=CLEAN_ENV)
        assert run.returncode == 2 and words in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
