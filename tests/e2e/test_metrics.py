"""`--metrics-listen` on the console scripts: bad values, `--workers` (a port per worker), the
commander's own metrics scraped while `commander serve` runs real sessions; `--version`."""

from __future__ import annotations

import json
import socket
import subprocess
from importlib.metadata import version
from pathlib import Path

import grpc
import pytest

from shared import wire
from tests.conftest import WAIT_S, RawSession
from tests.e2e.conftest import (
    BIN,
    COMMANDER,
    DISPATCHER,
    ENV,
    DispatcherFactory,
    parse_json_lines,
    run_cli,
    wait_for,
)
from tests.scrape import scrape, scrape_sync

pytestmark = pytest.mark.anyio


def plain_lines(text: str) -> list[str]:
    """What a person reads on stderr: the lines that are not JSON log lines."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("{")]


@pytest.mark.parametrize("script", ["dispatcher", "commander", "dispatcherctl", "dispatcher-gateway"])
def test_every_console_script_has_version_and_goes_through_the_quiet_entry(script: str) -> None:
    result = run_cli(str(BIN / script), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{script} {version('southwest-agent-runtime')}"
    assert "from shared.console import" in (BIN / script).read_text()  # GRPC_VERBOSITY before grpc


@pytest.mark.parametrize(
    ("script", "value"), [(DISPATCHER, "nope"), (DISPATCHER, "127.0.0.1:99999"), (COMMANDER, "host:port")]
)
def test_a_bad_metrics_listen_value_is_one_line(script: Path, value: str) -> None:
    command = "serve" if script == DISPATCHER else "run"
    extra = ["--listen", "127.0.0.1:0"] if script == DISPATCHER else ["--prompt", "hi"]
    result = run_cli(str(script), command, *extra, "--metrics-listen", value)
    assert result.returncode == 2, result
    errors = [line for line in plain_lines(result.stderr) if line.startswith("Error")]
    assert errors == [
        f"Error: metrics listen address must be HOST:PORT (port 0-65535, e.g. 127.0.0.1:9464), got {value!r}"
    ], result.stderr


def test_a_metrics_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(str(DISPATCHER), "serve", "--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{port}")
    assert result.returncode == 1, result
    assert plain_lines(result.stderr) == [
        f"dispatcher: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ], result.stderr


async def test_with_workers_every_worker_serves_its_own_metrics(start_dispatcher: DispatcherFactory) -> None:
    group = start_dispatcher("--workers", "2", "--metrics-listen", "127.0.0.1:0", instance_id="mw")

    def both_serving() -> list[dict[str, object]]:
        lines = group.events("dispatcher.serving")
        return lines if len(lines) == 2 else []

    serving = wait_for(both_serving, "both workers serving", WAIT_S, details=group.describe)
    addresses = sorted(str(line["metrics"]).removeprefix("http://").removesuffix("/metrics") for line in serving)
    assert len(set(addresses)) == 2, addresses
    # Sessions on fresh connections until both workers hold one; each worker counts its own.
    channels: list[grpc.aio.Channel] = []
    held: dict[str, RawSession] = {}
    try:
        for attempt in range(60):
            channel = grpc.aio.insecure_channel(group.address, options=[("grpc.use_local_subchannel_pool", 1)])
            channels.append(channel)
            raw = RawSession(channel)
            worker = (await raw.hello(f"mw-{attempt}")).dispatcher_id
            held.setdefault(worker, raw)
            if len(held) == 2:
                break
        assert len(held) == 2, held
        scraped = [await scrape(address) for address in addresses]
        opened = attempt + 1
        assert all(s.get("dispatcher_sessions_open") >= 1 for s in scraped), [s.text for s in scraped]
        assert sum(s.get("dispatcher_sessions_open") for s in scraped) == opened
        assert sum(s.get("dispatcher_packets_received_total", kind="hello") for s in scraped) == opened
        assert sum(s.get("grpc_server_msg_received_total", grpc_method="ChatStream") for s in scraped) == opened
    finally:
        for channel in channels:
            await channel.close()


def test_worker_ports_are_the_base_port_plus_the_index() -> None:
    from dispatcher.cluster.workers import worker_metrics_listen

    assert worker_metrics_listen("127.0.0.1:9464", 3) == ["127.0.0.1:9464", "127.0.0.1:9465", "127.0.0.1:9466"]
    assert worker_metrics_listen("[::1]:0", 2) == ["[::1]:0", "[::1]:0"]
    with pytest.raises(ValueError, match="65535-65536"):
        worker_metrics_listen("0.0.0.0:65535", 2)


def test_commander_serve_counts_its_sessions_first_tokens_and_stops(
    start_dispatcher: DispatcherFactory, tmp_path: Path
) -> None:
    d = start_dispatcher("--block-pattern", "launch codes")
    stderr_path = tmp_path / "commander.err"
    with stderr_path.open("wb") as stderr, (tmp_path / "commander.out").open("wb") as stdout:
        commander = subprocess.Popen(
            [str(COMMANDER), "serve", "--target", d.address, "-n", "1", "--tokens-per-s", "200",
             "--metrics-listen", "127.0.0.1:0", "--log-level", "info"],
            stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=ENV,
        )  # fmt: skip
    try:

        def metrics_address() -> str:
            for line in parse_json_lines(stderr_path.read_text()):
                if line.get("event") == "commander.metrics_serving":
                    return str(line["metrics"]).removeprefix("http://").removesuffix("/metrics")
            return ""

        address = wait_for(metrics_address, "the commander's metrics line", details=stderr_path.read_text)
        wait_for(lambda: d.events("pool.commander_free"), "the pool commander", details=d.describe)
        with grpc.insecure_channel(d.address) as channel:
            control = wire.SessionControlServiceStub(channel)
            answer = control.Ask(wire.ctl.AskRequest(input_text="What is 6 * 7?", wait_for_commander_ms=10_000),
                                 timeout=30)  # fmt: skip
            assert answer.outcome.state == wire.ctl.SESSION_STATE_FINISHED, answer
            wait_for(lambda: len(d.events("pool.commander_free")) >= 2, "the commander back in the pool")
            stopped = control.Ask(
                wire.ctl.AskRequest(input_text="Now the launch codes", wait_for_commander_ms=10_000), timeout=30
            )
            assert stopped.outcome.state == wire.ctl.SESSION_STATE_STOPPED, stopped

        def both_counted() -> object:
            samples = scrape_sync(address)
            return samples if samples.total("commander_sessions_total") == 2 else None

        samples = wait_for(both_counted, "both sessions in the commander's metrics", WAIT_S)
        assert samples.get("commander_sessions_total", state="FINISHED") == 1
        assert samples.get("commander_sessions_total", state="STOPPED") == 1
        assert samples.get("commander_time_to_first_token_seconds_count") == 2
        assert samples.get("commander_stop_to_halt_seconds_count") == 1
    finally:
        commander.terminate()
        assert commander.wait(timeout=15) == 0, stderr_path.read_text()
    results = [json.loads(line) for line in (tmp_path / "commander.out").read_text().splitlines()]
    assert [r["state"] for r in results] == ["FINISHED", "STOPPED"]
