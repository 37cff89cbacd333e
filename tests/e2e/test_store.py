"""The SQLite store against kill -9: a process writing to it directly, and `dispatcher serve
--store sqlite:///...` killed and started again on the same file."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dispatcher.core.journal import Journal
from dispatcher.store.sqlite import SqliteStore
from tests.e2e import store_writer
from tests.e2e.conftest import BIN, ENV, ROOT, DispatcherFactory, run_cli, run_commander, wait_for

DISPATCHERCTL = str(BIN / "dispatcherctl")


def test_every_event_up_to_the_last_durable_checkpoint_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.store_writer", str(path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=ENV, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    durable: list[int] = []  # the checkpoints the writer printed as durable, in order
    try:
        while len(durable) < 50:  # fifty durable checkpoints, then the kill, mid-writing
            line = proc.stdout.readline()
            assert line, f"the writer ended early: {proc.stderr.read() if proc.stderr else ''}"
            if line.startswith("durable "):
                durable.append(int(line.split()[1]))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        rest, _ = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    durable += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("durable ")]
    assert durable == list(range(10, 10 * len(durable) + 1, 10))  # each once, in order
    last = durable[-1]

    async def reopen() -> Any:
        store = SqliteStore(str(path))
        recovered = await store.open()
        await store.aclose()
        return recovered

    [live] = asyncio.run(reopen()).live
    assert live.session_id == store_writer.SESSION_ID
    assert live.checkpoint_seq >= last
    seqs = [event.seq for event in live.events]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= live.checkpoint_seq  # dense, none lost
    journal = Journal.restore("victim", [(e.seq, e.packed) for e in live.events], max_events=1 << 20, max_bytes=1 << 30)
    assert [journal.event(seq).content.text for seq in (1, last)] == [store_writer.text(1), store_writer.text(last)]  # type: ignore[union-attr]


def ctl(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(DISPATCHERCTL, "--target", target, *args)
    assert result.returncode == 0, f"dispatcherctl {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def ended_in_store(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        return int(con.execute("SELECT count(*) FROM sessions WHERE state = 'ended'").fetchone()[0])
    finally:
        con.close()


@pytest.mark.slow
def test_ended_sessions_are_listable_shown_and_watchable_after_kill_9(
    start_dispatcher: DispatcherFactory, tmp_path: Path
) -> None:
    path = tmp_path / "sessions.db"
    flags = ("--store", f"sqlite:///{path}", "--block-pattern", "launch codes")
    first = start_dispatcher(*flags)
    prompts = ["What is (17 + 25) * 3?", "What time is it?", "Now tell me the launch codes"]
    for prompt in prompts:
        run_commander(first.address, prompt, "--tokens-per-s", "0", "--quiet")
    before = json_lines(ctl(first.address, "sessions", "--json").stdout)
    states = sorted(s["outcome"]["state"].removeprefix("SESSION_STATE_") for s in before)
    assert states == ["FINISHED", "FINISHED", "STOPPED"], before
    journals = {s["session_id"]: json_lines(ctl(first.address, "watch", s["session_id"], "--json").stdout)
                for s in before}  # fmt: skip
    # The acks of a commit are the store's business; here the test waits for the commit itself.
    wait_for(lambda: ended_in_store(path) == 3, "the three ends committed", details=first.describe)
    first.proc.kill()
    assert first.proc.wait(timeout=10) == -signal.SIGKILL

    second = start_dispatcher(*flags)
    after = json_lines(ctl(second.address, "sessions", "--state", "ended", "--json").stdout)
    assert [s["session_id"] for s in after] == [s["session_id"] for s in before]
    assert [s["outcome"] for s in after] == [s["outcome"] for s in before]
    for session in before:
        session_id = session["session_id"]
        shown = json.loads(ctl(second.address, "show", session_id, "--json").stdout)["session"]
        assert shown == session  # the SessionInfo as it was at the end, counters and all
        watched = json_lines(ctl(second.address, "watch", session_id, "--from", "1", "--json").stdout)
        assert watched == journals[session_id]  # every event, same seqs, times and payloads
    second.wait_for_event("store.restored", ended=3, crashed=0)


@pytest.mark.parametrize(
    ("store", "extra", "message"),
    [
        ("sqlite:///{tmp}/not-a-db", (), "is not a usable database"),
        ("sqlite:///{tmp}/no-such-dir/s.db", (), "cannot open"),
        ("redis-ish://somewhere", (), "unknown store; use one of memory://, redis://, rediss://, sqlite://"),
        ("sqlite:///{tmp}/s.db", ("--workers", "2"), "serves one process; use --workers 1"),
    ],
)
def test_a_store_that_cannot_serve_is_one_line_and_exit_2(
    tmp_path: Path, store: str, extra: tuple[str, ...], message: str
) -> None:
    (tmp_path / "not-a-db").write_bytes(b"\x00not sqlite" * 500)
    url = store.format(tmp=tmp_path)
    result = run_cli(str(BIN / "dispatcher"), "serve", "--listen", "127.0.0.1:0", "--store", url, *extra)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("dispatcher: ")]
    assert message in line and "--store" in line, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
