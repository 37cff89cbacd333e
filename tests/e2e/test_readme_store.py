"""The README's durability example, taken from the README and run as written: the same command
lines in a fresh directory, the port swapped for a free one, `kill -9` aimed at the first
dispatcher and SESSION_ID filled in from the listing."""

from __future__ import annotations

import re
import shlex
import signal
import sqlite3
import subprocess
from pathlib import Path

from tests.e2e.conftest import BIN, ENV, EXIT_TIMEOUT_S, READY_TIMEOUT_S, ROOT, wait_for
from tests.e2e.test_readme_tls import free_port

README = ROOT / "README.md"
FIRST_LINE = "# durability: sessions that outlive the dispatcher process"
README_PORT = "50061"


def readme_commands() -> list[str]:
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        if block.startswith(FIRST_LINE):
            return [line.split("  #")[0].strip() for line in block.splitlines() if line and not line.startswith("#")]
    raise AssertionError(f"no bash block starting {FIRST_LINE!r} in the README")


def ended_in_store(path: Path) -> int:
    if not path.exists():
        return 0
    con = sqlite3.connect(path)
    try:
        tables = con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sessions'").fetchone()[0]
        return int(con.execute("SELECT count(*) FROM sessions WHERE state = 'ended'").fetchone()[0]) if tables else 0
    finally:
        con.close()


def test_the_readme_durability_example_runs_as_written(tmp_path: Path) -> None:
    port = free_port()
    serve, run, kill, serve_again, listing, watch = [line.replace(README_PORT, port) for line in readme_commands()]
    assert serve == serve_again and kill.startswith("kill -9 ")
    servers: list[subprocess.Popen[bytes]] = []

    def start(command: str) -> subprocess.Popen[bytes]:
        ready = tmp_path / f"ready-{len(servers)}"
        argv = shlex.split(command)
        with (tmp_path / f"dispatcher-{len(servers)}.log").open("wb") as log:
            server = subprocess.Popen(
                [str(BIN / Path(argv[0]).name), *argv[1:], "--ready-file", str(ready), "--log-format", "json"],
                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV,
            )  # fmt: skip
        servers.append(server)
        wait_for(lambda: ready.exists() and ready.read_text().endswith("\n"), "the ready file", READY_TIMEOUT_S)
        return server

    def client(command: str) -> str:
        argv = shlex.split(command)
        done = subprocess.run(
            [str(BIN / Path(argv[0]).name), *argv[1:]], cwd=tmp_path, capture_output=True, encoding="utf-8",
            stdin=subprocess.DEVNULL, env=ENV, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    try:
        first = start(serve)
        assert "FINISHED" in client(run)
        # What the README's reader does not see: the end is committed within a few ms of it.
        wait_for(lambda: ended_in_store(tmp_path / "sessions.db") == 1, "the session's end committed")
        first.send_signal(signal.SIGKILL)  # kill -9 "$DISPATCHER_PID"
        assert first.wait(timeout=EXIT_TIMEOUT_S) == -signal.SIGKILL
        start(serve_again)
        table = client(listing).splitlines()
        assert table[0].split()[:2] == ["SESSION", "STATE"] and table[1].split()[1] == "FINISHED", table
        session_id = table[1].split()[0]
        watched = client(watch.replace("SESSION_ID", session_id))
        assert watched.splitlines()[0] == "#1 state_change OPEN: stream opened", watched
        assert "state_change FINISHED" in watched and "calculator" in watched
    finally:
        for server in servers:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                assert server.wait(timeout=EXIT_TIMEOUT_S) == 0
