"""The README's replicas example, run as written: its three `dispatcher serve` lines, its
commanders and its `dispatcherctl` lines, against a real redis-server. The ports are swapped
for free ones (and the Redis for the test's own); nothing else changes."""

from __future__ import annotations

import functools
import json
import re
import shlex
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.e2e.conftest import BIN, ENV, ROOT, DispatcherFactory, run_cli, wait_for
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, used by name

pytestmark = pytest.mark.timeout(120)

FIRST_LINE = "# one Redis for the group"


def readme_block() -> list[list[str]]:
    """The example's commands (comments dropped), each split as a shell would."""
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        if block.startswith(FIRST_LINE):
            lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
            return [shlex.split(line.removesuffix("&").strip()) for line in lines]
    raise AssertionError(f"no bash block starting {FIRST_LINE!r} in the README")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def test_the_readme_replicas_example_runs_as_written(
    start_dispatcher: DispatcherFactory, redis_server: RedisServer, children: list[subprocess.Popen[bytes]]
) -> None:
    commands = readme_block()
    assert commands[0][:3] == ["redis-server", "--port", "6379"]  # ours: the fixture's, on a free port
    ports = {port: str(free_port()) for port in ("50061", "50062", "50063")}

    def localised(argv: list[str]) -> list[str]:
        out = []
        for arg in argv:
            arg = arg.replace("127.0.0.1:6379", f"127.0.0.1:{redis_server.port}")
            for readme_port, port in ports.items():
                arg = arg.replace(f"127.0.0.1:{readme_port}", f"127.0.0.1:{port}")
            out.append(str(BIN / Path(arg).name) if arg.startswith(".venv/bin/") else arg)
        return out

    ctl_results = []
    for argv in map(localised, commands[1:]):
        program = Path(argv[0]).name
        if program == "dispatcher":
            instance = argv[argv.index("--instance-id") + 1]
            extra = [a for i, a in enumerate(argv[2:]) if "--instance-id" not in (a, argv[2:][i - 1] if i else "")]
            start_dispatcher(*extra, instance_id=instance)
        elif program == "commander":
            quiet = subprocess.DEVNULL
            children.append(subprocess.Popen(argv, stdin=quiet, stdout=quiet, stderr=quiet, env=ENV))
        else:
            assert program == "dispatcherctl", argv
            if argv[3] == "sessions":  # what the example shows needs the session and the pool there first
                ready = functools.partial(_ready, argv[2], redis_server)
                wait_for(ready, "the story session listed and the pool published")
            ctl_results.append(run_cli(*argv))
    listed, asked, stopped = ctl_results
    assert listed.returncode == 0, listed.stdout + listed.stderr
    [row] = listed.stdout.splitlines()[1:]  # the session on c, listed by b
    assert row.split()[1] == "ACTIVE", listed.stdout
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert asked.stdout.splitlines()[-1].startswith("FINISHED session "), asked.stdout
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.splitlines()[-1] == "1 confirmed, 0 not confirmed, 0 already ended", stopped.stdout
    story = children[0]
    assert story.wait(timeout=30) == 2  # the stopped commander run


def _ready(target: str, redis: RedisServer) -> bool:
    result = run_cli(str(BIN / "dispatcherctl"), "--target", target, "sessions", "--json", "--state", "live")
    live = [json.loads(line) for line in result.stdout.splitlines()]
    client = Redis.from_url(redis.url)
    try:
        pool = client.get("sw:replica:a")
    finally:
        client.close()
    return len(live) == 1 and pool is not None and json.loads(pool)["free"] == 2
