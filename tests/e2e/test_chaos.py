"""`make chaos` at its small size, one scenario per test, and the fault proxy's CLI.

Each scenario is `python -m scripts.chaos.run --only NAME` as a subprocess (real dispatcher,
commander and dispatcherctl processes, the proxy in the runner); its JSON results are read and
the issue's invariants asserted: nothing lost, nothing twice, every outcome recorded. A scenario
this build cannot run (no resume, no --store) is skipped with the runner's reason.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.chaos.agent import Plan, expected_content
from scripts.chaos.procs import Features
from scripts.chaos.scenarios import SCENARIOS
from tests.e2e.conftest import BIN, ENV, ROOT, parse_json_lines, run_cli, wait_for

SCENARIO_TIMEOUT_S = 180.0


def run_scenario(name: str, tmp_path: Path) -> dict[str, Any]:
    results = tmp_path / "chaos.md"
    done = subprocess.run(
        [sys.executable, "-m", "scripts.chaos.run", "--only", name, "--results", str(results)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT_S,
        check=False,
    )
    output = f"exit {done.returncode}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr[-4000:]}"
    assert results.with_suffix(".json").exists(), output
    row: dict[str, Any] = json.loads(results.with_suffix(".json").read_text())["rows"][0]
    assert done.returncode == (1 if row["verdict"] == "FAIL" else 0), output
    assert results.read_text().count("| fault | sessions | survived |") == 1, "the markdown table"
    return row | {"output": output}


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT_S + 20)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_chaos_scenario_keeps_its_invariants(name: str, tmp_path: Path) -> None:
    row = run_scenario(name, tmp_path)
    assert row["verdict"] != "skipped", f"{name} did not run on this build: {row['skipped']}"
    output = row["output"]
    assert row["problems"] == [], output
    assert (row["lost"], row["duplicates"], row["executed_twice"]) == (0, 0, 0), output
    assert row["survived"] == row["sessions"] > 0, output
    assert row["recorded"] == row["sessions"], output
    assert row["verdict"] == "ok", output


@pytest.mark.anyio
async def test_the_proxy_cli_prints_its_ports_and_is_switched_from_another_process() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(1024):
                writer.write(chunk)
                await writer.drain()
        except ConnectionResetError:
            pass  # the proxy's reset mode: expected
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    proxy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scripts.chaos.proxy", "--target", target,
        cwd=ROOT, env=ENV, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proxy.stdout is not None
        ready = json.loads(await asyncio.wait_for(proxy.stdout.readline(), 15))
        assert ready["target"] == target and ready["listen"].startswith("127.0.0.1:")
        host, port = ready["listen"].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"

        async def ctl(*command: str) -> tuple[int, dict[str, Any]]:
            done = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "scripts.chaos.proxy", "ctl", "--control", ready["control"], *command,
                cwd=ROOT, env=ENV, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(done.communicate(), 15)
            return done.returncode or 0, json.loads(out)

        code, answer = await ctl("delay", "20")
        assert code == 0 and answer["mode"] == "delay 20" and answer["connections"] == 1
        code, answer = await ctl("reset")
        assert code == 0 and answer["mode"] == "reset" and answer["resets"] == 1
        try:
            got = await asyncio.wait_for(reader.read(1), 10)
        except ConnectionResetError:
            got = b"reset"
        assert got in (b"", b"reset")
        code, answer = await ctl("drop", "everything")
        assert code == 1 and "unknown mode" in answer["error"]
        code, answer = await ctl("stats")
        assert code == 0 and answer["mode"] == "reset"  # a refused command changes nothing
        writer.close()
    finally:
        proxy.terminate()
        await asyncio.wait_for(proxy.wait(), 15)
        server.close()


README_FIRST_LINE = ".venv/bin/dispatcher serve --listen 127.0.0.1:50051 --tools scripts.chaos.tools:tools"
README_PORTS = ("50051", "50071", "50072")


def readme_proxy_commands() -> list[str]:
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        if block.startswith(README_FIRST_LINE):
            return [line for line in block.splitlines() if line and not line.startswith("#")]
    raise AssertionError(f"no bash block starting {README_FIRST_LINE!r} in the README")


def free_ports(n: int) -> list[str]:
    probes = [socket.socket() for _ in range(n)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [str(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_readme_fault_proxy_example_runs_as_written(tmp_path: Path) -> None:
    features = asyncio.run(Features.detect())
    assert features.resume, "this build has no resume: the README's session would end at the blackhole"
    lines = readme_proxy_commands()
    for port, free in zip(README_PORTS, free_ports(len(README_PORTS)), strict=True):
        lines = [line.replace(port, free) for line in lines]
    assert len(lines) == 6, lines  # serve, proxy, run, blackhole, pass, stats
    prompt = shlex.split(lines[2])[shlex.split(lines[2]).index("--prompt") + 1]
    argv = [shlex.split(line) for line in lines]
    for words in argv:
        assert words[0].startswith(".venv/bin/"), words
        words[0] = str(BIN / Path(words[0]).name)
    ready = tmp_path / "ready"
    processes: list[subprocess.Popen[bytes]] = []

    def start(words: list[str], name: str) -> subprocess.Popen[bytes]:
        with (tmp_path / name).open("wb") as out:
            process = subprocess.Popen(words, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)  # fmt: skip
        processes.append(process)
        return process

    def ctl(words: list[str]) -> dict[str, Any]:
        done = subprocess.run(words, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30, check=True)
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    try:
        start([*argv[0], "--ready-file", str(ready), "--log-format", "json"], "dispatcher.log")
        wait_for(lambda: ready.exists() and ready.read_text().endswith("\n"), "the dispatcher's ready file")
        start(argv[1], "proxy.out")
        wait_for(lambda: (tmp_path / "proxy.out").read_text().startswith("{"), "the proxy's ready line")
        commander = start(argv[2], "commander.out")
        wait_for(lambda: (tmp_path / "commander.out").read_text().count("ContentEmitted") >= 20, "20 chunks")
        assert ctl(argv[3])["mode"] == "blackhole"
        target = ready.read_text().strip()

        def detached() -> bool:
            shown = run_cli(str(BIN / "dispatcherctl"), "--target", target, "sessions", "--json")
            return '"SESSION_STATE_DETACHED"' in shown.stdout

        wait_for(detached, "the dispatcher holding the session DETACHED", 15)
        assert ctl(argv[4])["mode"] == "pass"
        assert commander.wait(timeout=60) == 0, (tmp_path / "commander.out").read_text()[-2000:]
        result = parse_json_lines((tmp_path / "commander.out").read_text())[-1]
        assert result["event"] == "SessionResult" and result["state"] == "FINISHED", result
        assert result["resumes"] >= 1, result
        counters = ctl(argv[5])
        assert counters["connections"] >= 2 and counters["held"] >= 0, counters
        log = (tmp_path / "commander.out").read_text()
        text = "".join(line["text"] for line in parse_json_lines(log) if line.get("event") == "ContentEmitted")
        assert text == expected_content(Plan.parse(prompt))
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
