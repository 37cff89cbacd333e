"""`RedisStore` (journals into Redis Streams, outcomes with a TTL) and `follow_stream`, against a
real redis-server: what a watcher reads is what the journal had, seq for seq, resumable."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from dispatcher.core.journal import Journal
from dispatcher.store.redis import RedisStore, follow_stream, journal_key, outcome_key
from shared import wire
from shared.errors import OutOfRange, StoreUnavailable
from tests.conftest import WAIT_S, wait_until
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, used by name

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def content(text: str) -> wire.pb.ContentChunk:
    return wire.pb.ContentChunk(text=text)


async def read_all(
    client: Redis, session_id: str, from_seq: int, kinds: set[int] | None = None
) -> list[tuple[int, str]]:
    events = follow_stream(client, session_id, from_seq, kinds or set())
    return [(event.seq, event.WhichOneof("event") or "") async for event in events]


async def test_journal_entries_go_into_a_stream_in_batches_and_read_back_by_seq(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, ended_ttl_s=60, max_events=100)
    await store.open()
    client = Redis.from_url(redis_server.url)
    try:
        journal = Journal("s1", max_events=100, max_bytes=1 << 20)
        journal.append("content", content("before the store"))
        store.session_opened("s1", opened=b"", hello=b"", journal=journal)
        for n in range(20):
            journal.append("content", content(f"t{n} "))
        journal.append("thought", wire.pb.ThoughtChain(delta="hm"))
        await store.flush()
        assert await client.xlen(journal_key("s1")) == 22 and not journal.dirty
        follower = asyncio.ensure_future(read_all(client, "s1", 5))
        journal.append("content", content("live"))  # read by the blocked follower
        info = wire.ctl.SessionInfo(session_id="s1", state=wire.ctl.SESSION_STATE_FINISHED)
        store.session_ended("s1", info.SerializeToString())
        await store.flush()
        seen = await asyncio.wait_for(follower, WAIT_S)
        assert [seq for seq, _ in seen] == list(range(5, 24)), "every seq from 5, once, in order"
        assert seen[-2:] == [(22, "thought"), (23, "content")]
        only_thoughts = await read_all(client, "s1", 1, {wire.ctl.EVENT_KIND_THOUGHT})
        assert only_thoughts == [(22, "thought")]
        assert await client.get(outcome_key("s1")) == info.SerializeToString()
        assert 0 < await client.pttl(journal_key("s1")) <= 60_000  # kept for the TTL, then gone
        assert journal.sink is None  # no longer followed
    finally:
        await store.aclose()
        await client.aclose()


async def test_a_trimmed_stream_says_where_to_resume(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    try:
        for seq in range(5, 8):
            await client.xadd(journal_key("t"), {b"e": packed_event(seq)}, id=f"{seq}-1")
        with pytest.raises(OutOfRange, match="resume from 5 or later"):
            await read_all(client, "t", 2)
        with pytest.raises(OutOfRange, match="no events of it are kept"):
            await read_all(client, "never", 1)
    finally:
        await client.aclose()


def packed_event(seq: int) -> bytes:
    journal = Journal("t", max_events=10, max_bytes=1 << 20)
    journal.append("content", content(str(seq)))
    packed = journal.packed(1)
    assert packed is not None
    return packed


async def test_a_commit_that_fails_while_redis_is_down_is_written_when_it_answers(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, ended_ttl_s=60, max_events=100)
    await store.open()
    try:
        journal = Journal("s2", max_events=100, max_bytes=1 << 20)
        store.session_opened("s2", opened=b"", hello=b"", journal=journal)
        journal.append("content", content("one"))
        await store.flush()
        redis_server.stop()
        journal.append("content", content("two"))  # the commit fails: it stays queued
        await wait_until(lambda: store.failing, "the committer tried and failed")
        redis_server.start()  # empty: "one" is gone with the old Redis, "two" is not
        await asyncio.wait_for(store.flush(), WAIT_S)
        assert not store.failing
        client = Redis.from_url(redis_server.url)
        assert [entry_id for entry_id, _ in await client.xrange(journal_key("s2"))] == [b"2-1"]
        await client.aclose()
    finally:
        await store.aclose()


async def test_a_follower_whose_redis_goes_away_ends_unavailable_to_resume(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        await client.xadd(journal_key("u"), {b"e": packed_event(1)}, id="1-1")
        events = follow_stream(client, "u", 1, set())
        assert (await anext(events)).seq == 1
        redis_server.stop()  # the follower is blocked in XREAD
        with pytest.raises(StoreUnavailable, match="resume the watch from the next seq"):
            await asyncio.wait_for(anext(events), WAIT_S)
    finally:
        await client.aclose()
