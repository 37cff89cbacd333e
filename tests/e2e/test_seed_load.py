"""The seed-era load clients of `make bench` case 7 against a real `dispatcher serve` and the bare
baseline: the Node one (interop/node/seed_load.js, grpc-js) and the Python fallback
(scripts/bench/seed.py). Small and short: they must run the shape (no Hello, no seq, no call_id;
thought, paced tokens, a probe per second, is_finish) and count what a benchmark reads from them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from scripts.bench.procs import running_server
from scripts.bench.streams import LoadSpec
from tests.e2e.conftest import ENV, ROOT, DispatcherFactory
from tests.e2e.test_node_interop import INTEROP_DIR, _node_or_skip

SESSIONS = 6
SESSION_S = 1.5
PROBE_EVERY_S = 0.25


def _spec(target: str) -> LoadSpec:
    return LoadSpec(
        target=target,
        mode="seed",
        sessions=SESSIONS,
        channels=2,
        start_at=time.monotonic() + 0.5,
        duration_s=SESSION_S,
        deadline_s=30.0,
        tokens_per_s=50.0,
        tool_every_s=PROBE_EVERY_S,
        stop_wait_s=5.0,
        warmup_s=0.0,  # every probe sampled
        seed=7,
    )


def _run(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        command, capture_output=True, encoding="utf-8", timeout=60, env=ENV, cwd=ROOT, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _check(result: dict[str, Any]) -> None:
    assert result["errors"] == {}, result["errors"]
    assert result["completed"] == SESSIONS
    # One probe per period per session, every one answered (a short run: allow one period of slack).
    expected_probes = SESSIONS * SESSION_S / PROBE_EVERY_S
    assert expected_probes - SESSIONS <= result["calls"] == len(result["rtt_ms"]) <= expected_probes + SESSIONS
    assert all(rtt > 0 for rtt in result["rtt_ms"])
    expected_tokens = SESSIONS * SESSION_S * 50
    assert 0.8 * expected_tokens <= result["tokens"] <= expected_tokens + SESSIONS


@pytest.mark.slow
def test_node_seed_loader_against_the_dispatcher(start_dispatcher: DispatcherFactory) -> None:
    node = _node_or_skip()
    dispatcher = start_dispatcher(instance_id="seed-load")
    result = _run([node, str(INTEROP_DIR / "seed_load.js"), json.dumps(asdict(_spec(dispatcher.address)))])
    _check(result)
    # The dispatcher ran them as seed-era sessions: listed, FINISHED, with the tool calls it executed.
    listing = subprocess.run(
        [str(Path(sys.executable).parent / "dispatcherctl"), "--target", dispatcher.address, "sessions", "--json"],
        capture_output=True, encoding="utf-8", timeout=30, env=ENV, check=True,
    )  # fmt: skip
    sessions = [json.loads(line) for line in listing.stdout.splitlines() if line.strip()]
    assert len(sessions) == SESSIONS
    assert {s["state"] for s in sessions} == {"SESSION_STATE_FINISHED"}
    assert sum(s["tool_calls_done"] for s in sessions) == result["calls"]


@pytest.mark.slow
def test_python_seed_loader_against_the_bare_baseline(tmp_path: Path) -> None:
    with running_server("baseline", tmp_path) as server:
        result = _run([sys.executable, "-m", "scripts.bench.load", json.dumps(asdict(_spec(server.target)))])
    _check(result)
