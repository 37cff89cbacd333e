"""The SQLite session store on real files: group commit, durable acks, idempotent writes,
retention, byte-identical restore, files that are no store, and commits that fail."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from dispatcher.config import DispatcherConfig, StoreConfig
from dispatcher.core.journal import Journal
from dispatcher.store import MemoryStore, StoreOpenError
from dispatcher.store.loading import open_store
from dispatcher.store.sqlite import SqliteStore
from shared import wire
from tests.conftest import WAIT_S, wait_until

pytestmark = pytest.mark.anyio


def journal(session_id: str, texts: list[str] | None = None) -> Journal:
    j = Journal(session_id, max_events=4096, max_bytes=1 << 20)
    for n, text in enumerate(texts or [], start=1):
        j.append("content", wire.pb.ContentChunk(text=text), n)
    return j


def info(session_id: str, state: int = wire.ctl.SESSION_STATE_ACTIVE) -> bytes:
    return wire.ctl.SessionInfo(session_id=session_id, state=state).SerializeToString()  # type: ignore[arg-type]


def db_rows(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    """What another connection sees: only committed data."""
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


async def opened(path: Path, **kw: object) -> SqliteStore:
    store = SqliteStore(str(path), **kw)  # type: ignore[arg-type]
    await store.open()
    return store


async def test_a_new_file_is_a_wal_database_with_our_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await opened(path)
    await store.aclose()
    assert db_rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert db_rows(path, "PRAGMA user_version") == [(1,)]
    again = await opened(path)  # opening it again migrates nothing and finds nothing
    assert again.durable
    await again.aclose()


async def test_group_commit_writes_many_journals_in_one_transaction(tmp_path: Path) -> None:
    store = await opened(tmp_path / "s.db", commit_interval_ms=1000)  # only flush commits here
    journals = [journal(f"s{n}") for n in range(50)]
    for j in journals:
        store.session_opened(j.session_id, opened=info(j.session_id), hello=b"", journal=j)
    for n in range(20):  # the packet path: appends only, the store sees one dirty mark per journal
        for j in journals:
            j.append("content", wire.pb.ContentChunk(text=f"token {n}"), n + 1)
    assert all(j.dirty for j in journals)
    await store.flush()
    assert store.commits == 1
    assert store.events_written == 50 * 20
    assert not any(j.dirty for j in journals)
    assert db_rows(tmp_path / "s.db", "SELECT count(*) FROM events") == [(1000,)]
    # More events later: only the new ones are written, again in one transaction.
    for j in journals:
        j.append("content", wire.pb.ContentChunk(text="more"), 99)
    await store.flush()
    assert (store.commits, store.events_written) == (2, 1050)
    await store.aclose()


async def test_a_long_journal_is_written_in_several_statements_of_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await opened(path, commit_interval_ms=1000)
    j = journal("long", [f"token {n}" for n in range(1, 601)])  # more rows than one INSERT carries
    store.session_opened("long", opened=info("long"), hello=b"", journal=j)
    await store.flush()
    assert (store.commits, store.events_written) == (1, 600)
    rows = db_rows(path, "SELECT seq, packed FROM events ORDER BY seq")
    assert rows == [(seq, j.packed(seq)) for seq in range(1, 601)]
    await store.aclose()


async def test_the_committer_commits_by_itself_after_the_interval(tmp_path: Path) -> None:
    store = await opened(tmp_path / "s.db", commit_interval_ms=5)
    j = journal("s1")
    store.session_opened("s1", opened=info("s1"), hello=b"", journal=j)
    j.append("content", wire.pb.ContentChunk(text="hi"), 1)
    await wait_until(lambda: store.events_written == 1, "the committer's own commit")
    await store.aclose()


async def test_a_checkpoint_is_acknowledged_only_once_its_events_are_committed(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await opened(path, commit_interval_ms=1000)
    seen: list[tuple[str, int, list[tuple[object, ...]]]] = []
    # The callback looks from another connection: what it sees is on disk.
    store.on_durable(lambda sid, seq: seen.append((sid, seq, db_rows(path, "SELECT seq FROM events ORDER BY seq"))))
    j = journal("s1")
    store.session_opened("s1", opened=info("s1"), hello=b"", journal=j)
    for n in range(1, 4):
        j.append("content", wire.pb.ContentChunk(text=str(n)), n)
    store.checkpoint("s1", 3, info("s1"))
    await asyncio.sleep(0)  # sleep-ok: one loop turn, to show nothing is acked before the commit
    assert seen == []
    await store.flush()
    assert seen == [("s1", 3, [(1,), (2,), (3,)])]
    assert db_rows(path, "SELECT checkpoint_seq FROM sessions WHERE id = 's1'") == [(3,)]
    await store.aclose()


async def test_rewriting_a_batch_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await opened(path, commit_interval_ms=1000)
    j = journal("s1", ["a", "b"])
    store.session_opened("s1", opened=info("s1"), hello=b"", journal=j)
    store.tool_result("s1", "call-1", b"packet")
    batch = store._take_batch()  # the seam a failed commit goes through: the same batch, twice
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(store._executor, store._write, batch)
    batch.ops = [op for op in batch.ops if op[0] != "open"]  # a retry never re-opens a live session
    await loop.run_in_executor(store._executor, store._write, batch)
    assert db_rows(path, "SELECT session_id, seq FROM events") == [("s1", 1), ("s1", 2)]
    assert db_rows(path, "SELECT call_id, packet FROM tool_results") == [("call-1", b"packet")]
    await store.aclose()


async def test_a_restart_finds_live_sessions_and_adopting_one_writes_only_new_events(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = await opened(path)
    j = journal("s1", ["a", "b", "c"])
    first.session_opened("s1", opened=info("s1"), hello=b"hello", journal=j)
    first.checkpoint("s1", 3, info("s1"))
    first.tool_result("s1", "c1", b"result")
    await first.flush()
    await first.aclose()  # like a kill: the session never ended

    second = SqliteStore(str(path))
    recovered = await second.open()
    assert recovered.ended == []
    [live] = recovered.live
    assert (live.session_id, live.hello, live.checkpoint_seq) == ("s1", b"hello", 3)
    assert [e.seq for e in live.events] == [1, 2, 3] and live.tool_results == {"c1": b"result"}
    restored = Journal.restore("s1", [(e.seq, e.packed) for e in live.events], max_events=4096, max_bytes=1 << 20)
    second.session_opened("s1", opened=info("s1"), hello=b"hello", journal=restored)
    restored.append("content", wire.pb.ContentChunk(text="d"), 4)
    await second.flush()
    assert second.events_written == 1
    assert db_rows(path, "SELECT seq FROM events ORDER BY seq") == [(1,), (2,), (3,), (4,)]
    await second.aclose()


async def test_restored_events_are_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await opened(path)
    j = journal("s1")
    store.session_opened("s1", opened=info("s1"), hello=b"", journal=j)
    j.append("thought", wire.pb.ThoughtChain(step_name="plan", delta="hmm, ünïcode"), 1)
    j.append("content", wire.pb.ContentChunk(text="x" * 10_000), 2)
    j.append("tool_call", wire.pb.ToolCallRequest(tool_name="echo", arguments_json='{"a": 1}', call_id="c1"), 3)
    j.close()
    store.session_ended("s1", info("s1", wire.ctl.SESSION_STATE_FINISHED))
    await store.aclose()

    reopened = SqliteStore(str(path))
    recovered = await reopened.open()
    [ended] = recovered.ended
    assert ended.info == info("s1", wire.ctl.SESSION_STATE_FINISHED)
    assert [(e.seq, e.packed) for e in ended.events] == [(seq, j.packed(seq)) for seq in range(1, 4)]
    back = Journal.restore("s1", [(e.seq, e.packed) for e in ended.events], max_events=4096, max_bytes=1 << 20)
    assert [back.event(seq) for seq in range(1, 4)] == [j.event(seq) for seq in range(1, 4)]
    await reopened.aclose()


async def test_retention_keeps_the_newest_ended_sessions_and_fewer_journals(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await opened(path, ended_kept=3, journals_kept=2)
    for n in range(6):
        j = journal(f"s{n}", [f"event of s{n}"])
        store.session_opened(j.session_id, opened=info(j.session_id), hello=b"", journal=j)
        store.session_ended(j.session_id, info(j.session_id, wire.ctl.SESSION_STATE_FINISHED))
    await store.flush()
    await store.aclose()
    recovered = await (reopened := SqliteStore(str(path), ended_kept=3, journals_kept=2)).open()
    assert [s.session_id for s in recovered.ended] == ["s3", "s4", "s5"]  # oldest first
    assert [len(s.events) for s in recovered.ended] == [0, 1, 1]
    assert db_rows(path, "SELECT DISTINCT session_id FROM events ORDER BY session_id") == [("s4",), ("s5",)]
    await reopened.aclose()


async def test_pruning_is_bounded_per_commit_and_catches_up(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await opened(path, ended_kept=2, journals_kept=1, commit_interval_ms=1)
    for n in range(14):
        j = journal(f"s{n}", ["e"])
        store.session_opened(j.session_id, opened=info(j.session_id), hello=b"", journal=j)
        store.session_ended(j.session_id, info(j.session_id, wire.ctl.SESSION_STATE_FINISHED))
    await store.flush()
    first = db_rows(path, "SELECT count(*) FROM sessions")[0][0]
    assert first == 14 - 4  # at most 4 sessions pruned by one commit
    await wait_until(lambda: db_rows(path, "SELECT count(*) FROM sessions") == [(2,)], "pruning to catch up")
    assert store.commits >= 4
    await wait_until(lambda: db_rows(path, "SELECT count(DISTINCT session_id) FROM events") == [(1,)], "journals")
    await store.aclose()


async def test_a_reused_session_id_starts_a_new_history(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await opened(path)
    old = journal("s1", ["old 1", "old 2"])
    store.session_opened("s1", opened=info("s1"), hello=b"", journal=old)
    store.session_ended("s1", info("s1", wire.ctl.SESSION_STATE_FINISHED))
    new = journal("s1", ["new 1"])
    store.session_opened("s1", opened=info("s1"), hello=b"", journal=new)
    await store.flush()
    assert db_rows(path, "SELECT state FROM sessions") == [("live",)]
    assert db_rows(path, "SELECT seq, length(packed) FROM events") == [(1, len(new.packed(1) or b""))]
    await store.aclose()


async def test_events_the_journal_dropped_before_a_commit_are_counted_not_written(tmp_path: Path) -> None:
    store = await opened(tmp_path / "s.db", commit_interval_ms=1000)
    j = Journal("s1", max_events=4, max_bytes=1 << 20)
    store.session_opened("s1", opened=info("s1"), hello=b"", journal=j)
    for n in range(10):
        j.append("content", wire.pb.ContentChunk(text=str(n)), n + 1)
    await store.flush()
    assert (store.events_written, store.events_skipped) == (4, 6)
    await store.aclose()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a database, just some bytes" * 200, "is not a usable database"),
        (None, "is an SQLite database of something else"),
    ],
)
async def test_a_file_that_is_no_store_is_a_clear_error(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "other.db"
    if content is not None:
        path.write_bytes(content)
    else:
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE users (name TEXT)")
        con.commit()
        con.close()
    store = SqliteStore(str(path), url=f"sqlite:///{path}")
    with pytest.raises(StoreOpenError, match=message) as caught:
        await store.open()
    assert str(caught.value).startswith(f"--store sqlite:///{path}")
    await store.aclose()


async def test_a_path_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "no-such-dir" / "s.db"))
    with pytest.raises(StoreOpenError, match="cannot open"):
        await store.open()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(StoreOpenError, match="schema version 99 is newer"):
        await SqliteStore(str(path)).open()


async def test_a_full_disk_is_logged_once_retried_and_never_raises(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await opened(path, commit_interval_ms=1)
    acked: list[int] = []
    store.on_durable(lambda sid, seq: acked.append(seq))
    loop = asyncio.get_running_loop()

    def page_limit(pages: int) -> None:  # on the writer's thread, on its connection
        assert store._con is not None
        store._con.execute(f"PRAGMA max_page_count = {pages}")

    used = db_rows(path, "PRAGMA page_count")[0][0]
    await loop.run_in_executor(store._executor, page_limit, used)  # the "disk" is full now
    j = journal("s1")
    with capture_logs() as logs:
        store.session_opened("s1", opened=info("s1"), hello=b"", journal=j)
        for n in range(1, 50):
            j.append("content", wire.pb.ContentChunk(text="y" * 2000), n)
        store.checkpoint("s1", 49, info("s1"))
        await wait_until(lambda: store.commit_failures >= 3, "commits failing")
        assert acked == []  # nothing is acked that is not on disk
        await loop.run_in_executor(store._executor, page_limit, 1 << 30)  # room again
        await asyncio.wait_for(store.flush(), WAIT_S)
    assert acked == [49]
    assert db_rows(path, "SELECT count(*) FROM events") == [(49,)]
    failed = [line for line in logs if line["event"] == "store.commit_failed"]
    assert len(failed) == 1 and failed[0]["kind"] == "OperationalError:SQLITE_FULL", failed
    assert [line["event"] for line in logs].count("store.commit_recovered") == 1
    await store.aclose()


async def test_a_read_only_database_fails_commits_without_raising(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await opened(path, commit_interval_ms=1)
    loop = asyncio.get_running_loop()

    def read_only(on: bool) -> None:
        assert store._con is not None
        store._con.execute(f"PRAGMA query_only = {int(on)}")

    await loop.run_in_executor(store._executor, read_only, True)
    with capture_logs() as logs:
        store.session_ended("s1", info("s1", wire.ctl.SESSION_STATE_FINISHED))
        await wait_until(lambda: store.commit_failures >= 2, "commits failing")
        await loop.run_in_executor(store._executor, read_only, False)
        await asyncio.wait_for(store.flush(), WAIT_S)
    assert [line["event"] for line in logs].count("store.commit_failed") == 1
    assert db_rows(path, "SELECT id, state FROM sessions") == [("s1", "ended")]
    await store.aclose()


async def test_aclose_is_bounded_when_commits_keep_failing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await opened(path, commit_interval_ms=1, close_timeout_s=0.2)
    loop = asyncio.get_running_loop()
    assert store._con is not None
    await loop.run_in_executor(store._executor, store._con.execute, "PRAGMA query_only = 1")
    store.session_ended("s1", info("s1"))
    with capture_logs() as logs:
        await asyncio.wait_for(store.aclose(), WAIT_S)
    assert "store.close_timed_out" in [line["event"] for line in logs]


def config(url: str, **store: object) -> DispatcherConfig:
    return DispatcherConfig(store=StoreConfig(url=url, **store))  # type: ignore[arg-type]


def test_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://", config("memory://")), MemoryStore)
    relative = open_store("sqlite:///sessions.db", config("sqlite:///sessions.db"))
    assert isinstance(relative, SqliteStore) and relative.path == "sessions.db"
    absolute = open_store(f"sqlite:///{tmp_path}/s.db", config("sqlite:///x", sync="full"))
    assert isinstance(absolute, SqliteStore) and absolute.path == f"{tmp_path}/s.db"
    assert absolute.url == f"sqlite:///{tmp_path}/s.db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://db/sessions", "unknown store; use one of memory://, redis://, rediss://, sqlite://"),
        ("sessions.db", "unknown store"),
        ("sqlite://", "sqlite:///relative/path.db or sqlite:////absolute/path.db"),
        ("sqlite:///", "sqlite:///relative/path.db"),
        ("sqlite:///s.db?mode=ro", "no query or fragment"),
        ("memory://x", "memory:// takes nothing after it"),
    ],
)
def test_a_store_url_it_does_not_know_names_the_flag(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="--store") as caught:
        open_store(url, config("memory://"))
    assert message in str(caught.value)


@pytest.mark.parametrize(("field", "value"), [("sync", "off"), ("commit_interval_ms", -1.0)])
def test_store_settings_are_checked(field: str, value: object) -> None:
    with pytest.raises(ValueError, match="--store-"):
        StoreConfig(**{field: value})  # type: ignore[arg-type]
