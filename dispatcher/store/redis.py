"""`RedisStore`: sessions' journals and outcomes in the replicas' Redis, behind `SessionStore`
(dispatcher/store/base.py), and the reader that follows a journal there (`follow_stream`).

- Each followed session's journal goes into a Redis Stream, `sw:journal:{sid}`, one entry per
  event with the event's seq as its id (`{seq}-1`), bounded with `XADD … MAXLEN ~ N` (N: the
  session's own `--session-journal-max-events`). The packet path does nothing for it but the
  journal's one dirty flag (`Journal.sink`): one committer task takes every dirty journal's new
  entries in one pipeline per commit interval (group commit).
- An ended session's outcome (`sw:outcome:{sid}`, its last `SessionInfo`) and its stream are
  kept `--store-ended-ttl-s`; tool results by call id in `sw:results:{sid}` likewise.
- Not durable in the store's sense (`durable = False`): a Redis that saves nothing, or saves every
  second, loses what it had in memory; acks do not wait for it.
- `follow_stream`: a WatchSession for a session whose replica is gone reads its stream (XRANGE,
  then XREAD BLOCK for what comes), resumable by seq exactly as a journal is; a Redis that does
  not answer ends the watcher with UNAVAILABLE, to resume from its next seq.

A failed commit is logged once per outage and retried at the next interval with nothing lost
(the entries are still in the journals, which keep far more than one interval's worth).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from dispatcher.cluster.store_url import parse_redis_url
from dispatcher.core.journal import EVENT_KINDS, Journal
from dispatcher.store.base import Recovered
from shared import wire
from shared.errors import OutOfRange, StoreUnavailable

__all__ = ["RedisStore", "follow_stream", "journal_key", "outcome_key"]

log = structlog.get_logger("dispatcher.store.redis")

_PREFIX = "sw:"
_FIELD = b"e"  # the one field of a stream entry: the packed event (Journal.packed)
_COMMIT_INTERVAL_S = 0.02  # group commit: at most 50 pipelines a second, whatever the packet rate
_BLOCK_MS = 1000  # a follower's XREAD BLOCK: it also looks for the session's end this often
_READ_COUNT = 256
_CLOSE_FLUSH_S = 0.1


def journal_key(session_id: str) -> str:
    return f"{_PREFIX}journal:{session_id}"


def outcome_key(session_id: str) -> str:
    return f"{_PREFIX}outcome:{session_id}"


@dataclass(slots=True)
class _Followed:
    journal: Journal
    next_seq: int  # the first seq not yet in the stream


class RedisStore:
    """`redis://HOST:PORT/DB` as a `SessionStore`: journals in streams, outcomes with a TTL."""

    durable = False

    def __init__(self, url: str, *, ended_ttl_s: float, max_events: int, client: Redis | None = None) -> None:
        self._shown = parse_redis_url(url).shown
        self._redis = client or Redis.from_url(url, decode_responses=False)
        self._ttl_ms = round(ended_ttl_s * 1000)
        self._max_events = max(1, max_events)
        self._followed: dict[str, _Followed] = {}
        self._dirty: dict[str, Journal] = {}
        self._results: list[tuple[str, str, bytes]] = []
        self._ended: list[tuple[str, bytes]] = []
        self._checkpoints: list[tuple[str, int]] = []
        self._on_durable: Callable[[str, int], None] | None = None
        self._wake = asyncio.Event()
        self._committed = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._failing = False
        self._committing = False  # a pipeline is in flight: what it took is in no queue

    @property
    def url(self) -> str:
        return self._shown

    @property
    def failing(self) -> bool:
        """True from a failed commit until the next one succeeds."""
        return self._failing

    async def open(self) -> Recovered:
        self._committer = asyncio.get_running_loop().create_task(self._run(), name="store:redis-committer")
        return Recovered()  # a replica adopts no other replica's live sessions

    def session_opened(self, session_id: str, *, opened: bytes, hello: bytes, journal: Journal) -> None:
        self._followed[session_id] = _Followed(journal, journal.first_seq)
        journal.sink = self._journal_dirty
        self._journal_dirty(journal)  # what it holds already

    def follows(self, session_id: str) -> bool:
        return session_id in self._followed

    def checkpoint(self, session_id: str, upstream_seq: int, info: bytes) -> None:
        self._checkpoints.append((session_id, upstream_seq))
        self._wake.set()

    def tool_result(self, session_id: str, call_id: str, packet: bytes) -> None:
        self._results.append((session_id, call_id, packet))
        self._wake.set()

    def session_ended(self, session_id: str, info: bytes) -> None:
        followed = self._followed.get(session_id)
        if followed is not None:
            self._dirty[session_id] = followed.journal  # its last events first, in the same commit
        self._ended.append((session_id, info))
        self._wake.set()

    def on_durable(self, callback: Callable[[str, int], None]) -> None:
        self._on_durable = callback

    async def flush(self) -> None:
        """Wait until nothing is queued and no commit is in flight (a failed one queues again)."""
        while self._dirty or self._results or self._ended or self._checkpoints or self._committing:
            self._committed.clear()
            self._wake.set()
            await self._committed.wait()

    async def aclose(self) -> None:
        """Commit what is queued (at most _CLOSE_FLUSH_S: the app bounds its whole close) and close."""
        try:
            await asyncio.wait_for(self.flush(), _CLOSE_FLUSH_S)
        except (TimeoutError, RedisError):
            log.warning("store.redis_close_unflushed", store=self._shown)
        if self._committer is not None:
            self._committer.cancel()
            await asyncio.wait([self._committer], timeout=_CLOSE_FLUSH_S / 4)
        await self._redis.aclose()

    # -- the committer --------------------------------------------------------------------

    def _journal_dirty(self, journal: Journal) -> None:
        self._dirty[journal.session_id] = journal
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._committing = True
            try:
                await self._commit()
            except RedisError as exc:
                if not self._failing:
                    log.error("store.redis_commit_failed", store=self._shown, detail=str(exc) or type(exc).__name__,
                              effect="journals stay in memory and are written when Redis answers")  # fmt: skip
                self._failing = True
                self._wake.set()  # retried after the interval, nothing dropped
            except Exception:  # a bug of ours: logged; the committer goes on with the next batch
                log.exception("store.redis_commit_bug", store=self._shown)
            finally:
                self._committing = False
            self._committed.set()
            await asyncio.sleep(_COMMIT_INTERVAL_S)  # the group-commit interval, not a synchronisation

    async def _commit(self) -> None:
        dirty, self._dirty = self._dirty, {}
        results, self._results = self._results, []
        ended, self._ended = self._ended, []
        checkpoints, self._checkpoints = self._checkpoints, []
        pipe = self._redis.pipeline(transaction=False)
        advanced: dict[str, int] = {}
        for session_id, journal in dirty.items():
            journal.dirty = False  # an event appended from now on marks it again
            followed = self._followed.get(session_id)
            if followed is None:
                continue
            seq = max(followed.next_seq, journal.first_seq)  # an evicted event is gone for the stream too
            while seq < journal.next_seq:
                packed = journal.packed(seq)
                assert packed is not None
                pipe.xadd(journal_key(session_id), {_FIELD: packed}, id=f"{seq}-1", maxlen=self._max_events,
                          approximate=True)  # fmt: skip
                seq += 1
            advanced[session_id] = seq
        for session_id, call_id, packet in results:
            pipe.hset(f"{_PREFIX}results:{session_id}", call_id, packet)
            pipe.pexpire(f"{_PREFIX}results:{session_id}", self._ttl_ms)
        for session_id, info in ended:
            pipe.set(outcome_key(session_id), info, px=self._ttl_ms)
            pipe.pexpire(journal_key(session_id), self._ttl_ms)
        try:
            answers = await pipe.execute(raise_on_error=False)
        except RedisError:
            for session_id, journal in dirty.items():  # all of it again at the next commit
                self._dirty.setdefault(session_id, journal)
            self._results[:0], self._ended[:0], self._checkpoints[:0] = results, ended, checkpoints
            raise
        for answer in answers:
            # An entry a half-failed earlier commit already wrote is refused as "equal or smaller":
            # it is there, which is what we wanted. Anything else is a real failure.
            if isinstance(answer, RedisError) and "equal or smaller" not in str(answer):
                log.warning("store.redis_write_refused", store=self._shown, detail=str(answer))
        for session_id, seq in advanced.items():
            followed = self._followed.get(session_id)
            if followed is not None:
                followed.next_seq = seq
        for session_id, _info in ended:
            followed = self._followed.pop(session_id, None)
            if followed is not None:
                followed.journal.sink = None
        if self._failing:
            log.info("store.redis_commit_recovered", store=self._shown)
            self._failing = False
        if self._on_durable is not None:
            for session_id, upstream_seq in checkpoints:
                self._on_durable(session_id, upstream_seq)


async def follow_stream(
    client: Redis,
    session_id: str,
    from_seq: int,
    kinds: Collection[int],
    end_keys: Collection[str] = (),
    block_ms: int = _BLOCK_MS,
) -> AsyncIterator[wire.ctl.SessionEvent]:
    """Every event of `session_id`'s stream from `from_seq` on (of `kinds`, if any), live until the
    session's end is recorded (its outcome, or any of `end_keys`: the replicas' "replica lost"
    record). OutOfRange when `from_seq` was trimmed away; StoreUnavailable when Redis does not
    answer (resume from the next seq). `block_ms`: each XREAD's wait, shorter than the client's
    socket timeout (a blocked read is a read that must not time out)."""
    key = journal_key(session_id)
    ends = [outcome_key(session_id), *end_keys]
    try:
        oldest = await client.xrange(key, count=1)
        if not oldest:
            raise OutOfRange(f"session {session_id!r}: no events of it are kept in the store")
        first_seq = _seq_of(oldest[0][0])
        if from_seq and from_seq < first_seq:
            raise OutOfRange(
                f"events before seq {first_seq} of session {session_id!r} are no longer kept "
                f"(asked from {from_seq}); resume from {first_seq} or later"
            )
        last_id = f"{max(from_seq, first_seq) - 1}-1"
        while True:
            entries = _entries(await client.xread({key: last_id}, count=_READ_COUNT, block=block_ms))
            for entry_id, fields in entries:
                last_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                seq = _seq_of(entry_id)
                packed = fields.get(_FIELD)
                if not isinstance(packed, bytes):
                    continue
                event = Journal.restore(session_id, [(seq, packed)], max_events=1, max_bytes=len(packed)).event(seq)
                if event is not None and (not kinds or EVENT_KINDS[event.WhichOneof("event") or ""] in kinds):
                    yield event
            if not entries and await client.exists(*ends):
                if not await client.xread({key: last_id}, count=1):
                    return  # ended, and every event read
    except RedisError as exc:
        raise StoreUnavailable(f"session store unavailable: {exc}; resume the watch from the next seq") from exc


def _entries(found: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """The entries of a one-stream XREAD answer: RESP2's [[key, entries]] or RESP3's {key: entries}."""
    if not found:
        return []
    streams = list(found.values()) if isinstance(found, dict) else [item[1] for item in found]
    return [(entry_id, fields or {}) for entry_id, fields in streams[0]]


def _seq_of(entry_id: object) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(text.split("-", 1)[0])
