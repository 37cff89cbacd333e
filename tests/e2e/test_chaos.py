"""`make chaos` at its small size, one scenario per test, and the fault proxy's CLI.

Each scenario is `python -m scripts.chaos.run --only NAME` as a subprocess (real dispatcher,
commander and dispatcherctl processes, the proxy in the runner); its JSON results are read and
the issue's invariants asserted: nothing lost, nothing twice, every outcome recorded. A scenario
this build cannot run (no resume, no --store) is skipped with the runner's reason.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.chaos.scenarios import SCENARIOS
from tests.e2e.conftest import ENV, ROOT

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
    if row["verdict"] == "skipped":
        pytest.skip(f"{name}: {row['skipped']}")
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
