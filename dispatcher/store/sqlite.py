"""`sqlite:///PATH`: the session store of one node, an embedded SQLite database in WAL mode.

Group commit. Nothing on a session's packet path touches SQLite: a journal marks itself
dirty once (`Journal.sink`) and the store remembers it; the other writes (opened, checkpoint,
tool result, ended) are queued as they come. One committer task, owned by the store, wakes
`commit_interval_ms` after the first queued work, takes in the event loop's thread the new
entries of every dirty journal (`Journal.packed`, plain `bytes` already), and runs the whole
batch as ONE transaction on a single writer thread. After the commit, still in the loop's
thread, it calls `on_durable` for each checkpoint of the batch: an ack never covers a packet
that is not on disk.

Why one dedicated thread and stdlib `sqlite3` (not aiosqlite): the store batches anyway, so
there is one call into the database per commit; aiosqlite would add a thread *and* a future
per statement. The connection lives on that thread only (it is created there).

A commit that fails (disk full, database locked, read-only file) is logged once per kind of
failure and retried with the same batch (every write is idempotent: rows are keyed by session
id and seq or call id), at a growing interval up to `_MAX_RETRY_S`; checkpoints of that batch
stay un-acked until it lands. Nothing raises into a session.

Durability: WAL with `synchronous=NORMAL` (the default, `--store-sync normal`) makes a
committed transaction survive a kill -9 of the process — the WAL is in the OS's page cache —
but the last commits may be lost on an OS crash or power loss; `--store-sync full` fsyncs the
WAL on every commit and survives those too, at the cost of one fsync per group commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from dispatcher.core.journal import Journal
from dispatcher.store.base import LiveRecord, Recovered, StoredEvent, StoredSession, StoreOpenError

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

log = structlog.get_logger("dispatcher.store")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('live', 'ended')),
    opened_ord INTEGER NOT NULL,           -- the order sessions were opened in
    opened BLOB NOT NULL,                  -- control.SessionInfo at the open
    hello BLOB NOT NULL,                   -- the Hello (b'' for a seed-era stream)
    checkpoint_seq INTEGER NOT NULL DEFAULT 0,
    checkpoint_info BLOB NOT NULL DEFAULT x'',
    ended_info BLOB,                       -- control.SessionInfo with the outcome
    ended_at_ms INTEGER,
    ended_ord INTEGER,                     -- the order sessions ended in (retention)
    journal_kept INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX sessions_by_end ON sessions (state, ended_ord);
CREATE TABLE events (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    packed BLOB NOT NULL,                  -- Journal.packed(seq): header and message
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE tool_results (
    session_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    packet BLOB NOT NULL,                  -- the DownstreamPacket that answered the call
    PRIMARY KEY (session_id, call_id)
) WITHOUT ROWID;
"""

_MAX_RETRY_S = 1.0  # a failing commit is retried at a doubling interval up to this
_PRUNE_SESSIONS = 4  # ended sessions pruned per commit at most (each up to a journal of rows)
_TRIM_STEP = 64  # a live journal's evicted events are deleted once this many have gone


@dataclass(slots=True)
class _Followed:
    """A live session whose journal the store follows."""

    journal: Journal
    stored_seq: int  # events up to this one are in a batch already
    trimmed_below: int  # events below this seq are deleted from the database


@dataclass(slots=True)
class _Batch:
    """What one transaction writes, in the order it happened."""

    ops: list[tuple[str, Any]] = field(default_factory=list)
    checkpoints: list[tuple[str, int]] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    events: int = 0

    def extend(self, later: _Batch) -> None:
        self.ops += later.ops
        self.checkpoints += later.checkpoints
        self.waiters += later.waiters
        self.events += later.events

    @property
    def empty(self) -> bool:
        return not self.ops


class SqliteStore:
    """`SessionStore` on one SQLite file. `open()` starts it, `aclose()` ends it."""

    durable = True

    def __init__(
        self,
        path: str,
        *,
        commit_interval_ms: float = 5.0,
        ended_kept: int = 1000,
        journals_kept: int = 100,
        sync: str = "normal",
        close_timeout_s: float = 1.0,
        url: str = "",
    ) -> None:
        if sync not in {"normal", "full"}:
            raise ValueError(f"--store-sync must be normal or full, got {sync!r}")
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self._interval_s = max(0.0, commit_interval_ms / 1000)
        self._ended_kept = max(0, ended_kept)
        self._journals_kept = max(0, min(journals_kept, ended_kept))
        self._sync = sync
        self._close_timeout_s = close_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._con: sqlite3.Connection | None = None  # used on the executor's thread only
        self._committer: asyncio.Task[None] | None = None
        self._on_durable: Callable[[str, int], None] | None = None
        # Loop-thread state: what is queued for the next batch.
        self._followed: dict[str, _Followed] = {}
        self._dirty: list[Journal] = []
        self._pending = _Batch()
        self._failed: _Batch | None = None  # a batch whose commit failed, written again first
        self._recovered_seqs: dict[str, int] = {}  # live sessions found at open: last stored seq
        self._work = asyncio.Event()
        self._urgent = asyncio.Event()  # flush/aclose: no batching window
        self._failures: set[str] = set()  # kinds of commit failure logged already
        self._prune_due = False  # retention left work for another commit
        self._loop: asyncio.AbstractEventLoop | None = None
        # Writer-thread state (touched only inside _write and _open_sync).
        self._next_ord = 1
        self._ended_count = 0
        self._journal_count = 0
        # Seams for tests and metrics: committed transactions, events written, evicted before
        # they could be written, failed commits.
        self.commits = 0
        self.events_written = 0
        self.events_skipped = 0
        self.commit_failures = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> Recovered:
        loop = self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sqlite")
        try:
            recovered = await loop.run_in_executor(self._executor, self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._recovered_seqs = {
            record.session_id: record.events[-1].seq if record.events else 0 for record in recovered.live
        }
        self._committer = loop.create_task(self._run(), name="store:committer")
        log.info("store.opened", url=self.url, sync=self._sync, ended=len(recovered.ended), live=len(recovered.live))
        return recovered

    async def flush(self) -> None:
        if self._committer is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._pending.waiters.append(waiter)
        self._wake(urgent=True)
        await waiter

    async def aclose(self) -> None:
        """Commit what is queued (at most `close_timeout_s`), stop the committer, close."""
        committer, self._committer = self._committer, None
        if committer is not None:
            if not committer.done():
                waiter = asyncio.get_running_loop().create_future()
                self._pending.waiters.append(waiter)
                self._wake(urgent=True)
                try:
                    await asyncio.wait_for(waiter, self._close_timeout_s)
                except TimeoutError:
                    log.warning("store.close_timed_out", url=self.url, bound_s=self._close_timeout_s)
            committer.cancel()
            await asyncio.wait([committer], timeout=self._close_timeout_s)
        for journal in self._dirty:
            journal.dirty = False
        for followed in self._followed.values():
            followed.journal.sink = None
        self._followed.clear()
        executor, self._executor = self._executor, None
        if executor is not None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(sqlite3.Error):
                await asyncio.wait_for(loop.run_in_executor(executor, self._close_sync), self._close_timeout_s)
            executor.shutdown(wait=False)

    # -- writes (loop thread, never wait) -------------------------------------------------

    def on_durable(self, callback: Callable[[str, int], None]) -> None:
        self._on_durable = callback

    def session_opened(self, session_id: str, *, opened: bytes, hello: bytes, journal: Journal) -> None:
        old = self._followed.pop(session_id, None)
        if old is not None and old.journal is not journal:  # a reused id: the old one is done
            old.journal.sink = None
        stored = self._recovered_seqs.pop(session_id, None)
        if stored is None:  # a new session (a reused id starts a new history)
            self._pending.ops.append(("open", (session_id, opened, hello)))
            stored = journal.first_seq - 1
        else:  # adopted after a restart: its stored events stay
            self._pending.ops.append(("adopt", (session_id, opened, hello)))
            stored = max(stored, journal.first_seq - 1)
        self._followed[session_id] = _Followed(journal, stored, trimmed_below=journal.first_seq)
        journal.sink = self._journal_dirty
        if journal.last_seq > stored and not journal.dirty:
            journal.dirty = True
            self._journal_dirty(journal)
        self._wake()

    def checkpoint(self, session_id: str, upstream_seq: int, info: bytes) -> None:
        self._pending.ops.append(("checkpoint", (upstream_seq, info, session_id)))
        self._pending.checkpoints.append((session_id, upstream_seq))
        self._wake()

    def tool_result(self, session_id: str, call_id: str, packet: bytes) -> None:
        self._pending.ops.append(("tool_result", (session_id, call_id, packet)))
        self._wake()

    def session_ended(self, session_id: str, info: bytes) -> None:
        followed = self._followed.pop(session_id, None)
        if followed is not None:  # its last events go in the same batch, before the end
            self._take_events(session_id, followed, self._pending)
            followed.journal.sink = None
        self._recovered_seqs.pop(session_id, None)
        self._pending.ops.append(("ended", (session_id, info, time.time_ns() // 1_000_000)))
        self._wake()

    def _journal_dirty(self, journal: Journal) -> None:
        # The journal's sink: called once per batch per journal, on the packet path. O(1).
        self._dirty.append(journal)
        if not self._work.is_set():
            self._work.set()

    def _wake(self, *, urgent: bool = False) -> None:
        self._work.set()
        if urgent:
            self._urgent.set()

    # -- the committer ---------------------------------------------------------------------

    async def _run(self) -> None:
        retry_s = self._interval_s
        while True:
            await self._work.wait()
            if not self._urgent.is_set() and retry_s > 0:
                with contextlib.suppress(TimeoutError):  # the group-commit window
                    async with asyncio.timeout(retry_s):
                        await self._urgent.wait()
            self._work.clear()
            self._urgent.clear()
            batch = self._take_batch()
            prune_due, self._prune_due = self._prune_due, False
            if batch.empty and not prune_due:
                self._resolve(batch)
                continue
            try:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._write, batch)
            except asyncio.CancelledError:
                self._failed = batch  # aclose gave up on it
                raise
            except Exception as exc:  # a failed commit never reaches a session
                self._commit_failed(exc, batch)
                retry_s = min(max(retry_s * 2, 0.01), _MAX_RETRY_S)
                self._work.set()
                continue
            retry_s = self._interval_s
            if self._failures:
                log.warning("store.commit_recovered", url=self.url, failures=sorted(self._failures))
                self._failures.clear()
            self._resolve(batch)

    def _take_batch(self) -> _Batch:
        """Everything queued so far, with the new events of every dirty journal (loop thread)."""
        batch, self._pending = self._pending, _Batch()
        if self._failed is not None:
            failed, self._failed = self._failed, None
            failed.extend(batch)
            batch = failed
        dirty, self._dirty = self._dirty, []
        for journal in dirty:
            journal.dirty = False
            followed = self._followed.get(journal.session_id)
            if followed is not None and followed.journal is journal:
                self._take_events(journal.session_id, followed, batch)
        return batch

    def _take_events(self, session_id: str, followed: _Followed, batch: _Batch) -> None:
        journal = followed.journal
        last = journal.last_seq
        first = max(followed.stored_seq + 1, journal.first_seq)
        self.events_skipped += first - (followed.stored_seq + 1)  # evicted before we got to them
        if last >= first:
            rows = []
            for seq in range(first, last + 1):
                packed = journal.packed(seq)
                if packed is not None:
                    rows.append((session_id, seq, packed))
            batch.ops.append(("events", rows))
            batch.events += len(rows)
        followed.stored_seq = max(followed.stored_seq, last)
        if journal.first_seq - followed.trimmed_below >= _TRIM_STEP:  # the journal dropped these
            batch.ops.append(("trim", (session_id, journal.first_seq)))
            followed.trimmed_below = journal.first_seq

    def _resolve(self, batch: _Batch) -> None:
        callback = self._on_durable
        if callback is not None:
            for session_id, seq in batch.checkpoints:
                try:
                    callback(session_id, seq)
                except Exception:  # one session's callback must not stop the committer
                    log.exception("store.on_durable_failed", session_id=session_id, upstream_seq=seq)
        for waiter in batch.waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _commit_failed(self, exc: Exception, batch: _Batch) -> None:
        self.commit_failures += 1
        batch.extend(self._pending)  # keep the order: the failed batch, then what came since
        self._pending = _Batch()
        self._failed = batch
        kind = f"{type(exc).__name__}:{getattr(exc, 'sqlite_errorname', '')}"
        if kind not in self._failures:  # once per kind until commits succeed again
            self._failures.add(kind)
            log.error("store.commit_failed", url=self.url, kind=kind, error=str(exc), events=batch.events,
                      detail="retried; checkpoints wait for it")  # fmt: skip

    # -- the writer thread ----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; _write opens and ends its own.
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        con.execute("PRAGMA busy_timeout = 200")  # a lock held elsewhere fails the commit soon, retried
        return con

    def _open_sync(self) -> Recovered:
        try:
            con = self._connect()
        except sqlite3.Error as exc:
            raise StoreOpenError(f"--store {self.url}: cannot open {self.path!r}: {exc}") from exc
        try:
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreOpenError(f"--store {self.url}: cannot use WAL mode on {self.path!r} (got {mode})")
            con.execute(f"PRAGMA synchronous = {self._sync.upper()}")
            self._migrate(con)
            recovered = self._load(con)
        except sqlite3.Error as exc:
            con.close()
            raise StoreOpenError(f"--store {self.url}: {self.path!r} is not a usable database: {exc}") from exc
        except BaseException:
            con.close()
            raise
        self._con = con
        return recovered

    def _migrate(self, con: sqlite3.Connection) -> None:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreOpenError(
                f"--store {self.url}: schema version {version} is newer than this dispatcher's "
                f"({SCHEMA_VERSION}); run a newer dispatcher or another file"
            )
        if version == 0:
            tables = con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
            if tables:
                raise StoreOpenError(f"--store {self.url}: {self.path!r} is an SQLite database of something else")
            try:  # one transaction: a half-made schema is never left behind
                con.executescript("BEGIN IMMEDIATE;" + _SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    def _load(self, con: sqlite3.Connection) -> Recovered:
        row = con.execute("SELECT max(coalesce(ended_ord, 0)), max(opened_ord) FROM sessions").fetchone()
        self._next_ord = max(row[0] or 0, row[1] or 0) + 1
        self._ended_count = con.execute("SELECT count(*) FROM sessions WHERE state = 'ended'").fetchone()[0]
        self._journal_count = con.execute(
            "SELECT count(*) FROM sessions WHERE state = 'ended' AND journal_kept = 1"
        ).fetchone()[0]
        newest = con.execute(
            "SELECT id, ended_info, journal_kept FROM sessions WHERE state = 'ended' ORDER BY ended_ord DESC LIMIT ?",
            (self._ended_kept,),
        ).fetchall()
        ended: list[StoredSession] = []
        for rank, (session_id, info, journal_kept) in enumerate(newest):
            events = _events(con, session_id) if journal_kept and rank < self._journals_kept else ()
            ended.append(StoredSession(session_id=session_id, info=bytes(info or b""), events=events))
        ended.reverse()  # oldest first
        live = [
            LiveRecord(
                session_id=session_id,
                opened=bytes(opened),
                hello=bytes(hello),
                checkpoint_seq=checkpoint_seq,
                checkpoint_info=bytes(checkpoint_info),
                events=_events(con, session_id),
                tool_results=dict(
                    con.execute("SELECT call_id, packet FROM tool_results WHERE session_id = ?", (session_id,))
                ),
            )
            for session_id, opened, hello, checkpoint_seq, checkpoint_info in con.execute(
                "SELECT id, opened, hello, checkpoint_seq, checkpoint_info FROM sessions "
                "WHERE state = 'live' ORDER BY opened_ord"
            ).fetchall()
        ]
        return Recovered(ended=ended, live=live)

    def _write(self, batch: _Batch) -> None:
        """One transaction for the whole batch (writer thread)."""
        con = self._con
        if con is None:
            raise sqlite3.OperationalError("the store is closed")
        counts = _Counts(self._next_ord, self._ended_count, self._journal_count)
        con.execute("BEGIN IMMEDIATE")
        try:
            for kind, args in batch.ops:
                _WRITERS[kind](con, args, counts)
            self._prune(con, counts)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
            raise
        # Only a committed transaction moves the counters.
        self._next_ord, self._ended_count, self._journal_count = counts.next_ord, counts.ended, counts.journals
        self.commits += 1
        self.events_written += counts.events

    def _prune(self, con: sqlite3.Connection, counts: _Counts) -> None:
        """Retention, a bounded amount per commit: the oldest ended sessions beyond `ended_kept`
        go, and the journals of the ended sessions beyond the newest `journals_kept`."""
        budget = _PRUNE_SESSIONS
        excess = counts.ended - self._ended_kept
        if excess > 0:
            rows = con.execute(
                "SELECT id, journal_kept FROM sessions WHERE state = 'ended' ORDER BY ended_ord LIMIT ?",
                (min(excess, budget),),
            ).fetchall()
            for session_id, journal_kept in rows:
                _forget(con, session_id)
                counts.ended -= 1
                counts.journals -= journal_kept
            budget -= len(rows)
        excess = counts.journals - self._journals_kept
        if excess > 0 and budget > 0:
            rows = con.execute(
                "SELECT id FROM sessions WHERE state = 'ended' AND journal_kept = 1 ORDER BY ended_ord LIMIT ?",
                (min(excess, budget),),
            ).fetchall()
            for (session_id,) in rows:
                con.execute("DELETE FROM events WHERE session_id = ?", (session_id,))
                con.execute("UPDATE sessions SET journal_kept = 0 WHERE id = ?", (session_id,))
                counts.journals -= 1
        if counts.ended > self._ended_kept or counts.journals > self._journals_kept:
            self._work_left()

    def _work_left(self) -> None:
        # More to prune than one commit's budget: ask for another commit soon (from the writer
        # thread, so through the loop).
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._prune_again)

    def _prune_again(self) -> None:
        self._prune_due = True
        self._work.set()

    def _close_sync(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.close()


@dataclass(slots=True)
class _Counts:
    """The writer's counters during one transaction (applied once it commits)."""

    next_ord: int
    ended: int
    journals: int
    events: int = 0


_ROWS_PER_INSERT = 256  # 768 parameters, far below SQLite's limit (32 766)
_INSERT_EVENTS = "INSERT OR REPLACE INTO events (session_id, seq, packed) VALUES "


@functools.cache
def _insert_events(rows: int) -> str:
    return _INSERT_EVENTS + ", ".join(["(?, ?, ?)"] * rows)


def _write_events(con: sqlite3.Connection, rows: list[tuple[str, int, bytes]], counts: _Counts) -> None:
    # INSERT OR REPLACE: a batch written again after a failed commit changes nothing. Many rows
    # per statement, not executemany: every statement step lets go of the GIL and takes it back,
    # and those hand-overs slow the event loop's thread. Probe (100 journals x 200 events in one
    # commit, a spinning loop, 6 alternated runs on the shared 2-core machine, noisy): the loop
    # kept a median 0.70 of its pace during the commit with executemany, 0.84 with this.
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        con.execute(_insert_events(len(chunk)), [value for row in chunk for value in row])
    counts.events += len(rows)


def _write_checkpoint(con: sqlite3.Connection, args: tuple[int, bytes, str], counts: _Counts) -> None:
    con.execute("UPDATE sessions SET checkpoint_seq = ?, checkpoint_info = ? WHERE id = ? AND state = 'live'", args)


def _write_tool_result(con: sqlite3.Connection, args: tuple[str, str, bytes], counts: _Counts) -> None:
    con.execute("INSERT OR REPLACE INTO tool_results (session_id, call_id, packet) VALUES (?, ?, ?)", args)


def _write_trim(con: sqlite3.Connection, args: tuple[str, int], counts: _Counts) -> None:
    con.execute("DELETE FROM events WHERE session_id = ? AND seq < ?", args)


def _state(con: sqlite3.Connection, session_id: str) -> tuple[str, int] | None:
    row = con.execute("SELECT state, journal_kept FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return None if row is None else (row[0], row[1])


def _insert_live(con: sqlite3.Connection, session_id: str, opened: bytes, hello: bytes, counts: _Counts) -> None:
    con.execute(
        "INSERT INTO sessions (id, state, opened_ord, opened, hello) VALUES (?, 'live', ?, ?, ?)",
        (session_id, counts.next_ord, opened, hello),
    )
    counts.next_ord += 1


def _write_open(con: sqlite3.Connection, args: tuple[str, bytes, bytes], counts: _Counts) -> None:
    session_id, opened, hello = args
    state = _state(con, session_id)
    if state is not None and state[0] == "ended":  # a reused id starts a new history
        counts.ended -= 1
        counts.journals -= state[1]
    _forget(con, session_id)
    _insert_live(con, session_id, opened, hello, counts)


def _write_adopt(con: sqlite3.Connection, args: tuple[str, bytes, bytes], counts: _Counts) -> None:
    session_id, opened, hello = args
    state = _state(con, session_id)
    if state is None or state[0] != "live":  # nothing to adopt (pruned, or ended meanwhile)
        _write_open(con, args, counts)
        return
    con.execute("UPDATE sessions SET opened = ?, hello = ? WHERE id = ?", (opened, hello, session_id))


def _write_ended(con: sqlite3.Connection, args: tuple[str, bytes, int], counts: _Counts) -> None:
    session_id, info, ended_at_ms = args
    state = _state(con, session_id)
    if state is None:  # never recorded as opened: the end is all there is
        _insert_live(con, session_id, info, b"", counts)
    elif state[0] == "ended":  # recorded twice: the later record wins, counted once
        counts.ended -= 1
        counts.journals -= state[1]
    con.execute(
        "UPDATE sessions SET state = 'ended', ended_info = ?, ended_at_ms = ?, ended_ord = ?, journal_kept = 1 "
        "WHERE id = ?",
        (info, ended_at_ms, counts.next_ord, session_id),
    )
    # A repeated call id is answered only while its session is live.
    con.execute("DELETE FROM tool_results WHERE session_id = ?", (session_id,))
    counts.next_ord += 1
    counts.ended += 1
    counts.journals += 1


_WRITERS: dict[str, Callable[[sqlite3.Connection, Any, _Counts], None]] = {
    "events": _write_events,
    "checkpoint": _write_checkpoint,
    "tool_result": _write_tool_result,
    "trim": _write_trim,
    "open": _write_open,
    "adopt": _write_adopt,
    "ended": _write_ended,
}


def _events(con: sqlite3.Connection, session_id: str) -> list[StoredEvent]:
    rows: Iterable[tuple[int, bytes]] = con.execute(
        "SELECT seq, packed FROM events WHERE session_id = ? ORDER BY seq", (session_id,)
    )
    return [StoredEvent(seq=seq, packed=bytes(packed)) for seq, packed in rows]


def _forget(con: sqlite3.Connection, session_id: str) -> None:
    con.execute("DELETE FROM events WHERE session_id = ?", (session_id,))
    con.execute("DELETE FROM tool_results WHERE session_id = ?", (session_id,))
    con.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
