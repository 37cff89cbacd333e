"""Replicas sharing a real redis-server (`--store redis://`): three in-process dispatchers on
their own ports, real channels, real sessions. Subprocess replicas (and `kill -9`) are in
tests/e2e/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from dispatcher.app import Dispatcher
from dispatcher.auth import hash_token
from dispatcher.cluster.redis_replicas import RedisReplicas
from shared import wire
from tests.conftest import WAIT_S, RawSession, running_dispatcher, test_config, wait_until
from tests.integration.test_control import pool_commanders
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, used by name

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

LEASE_MS = 600  # short in tests: a replica silent this long is lost


@asynccontextmanager
async def replicas(redis: RedisServer, *names: str) -> AsyncIterator[dict[str, tuple[Dispatcher, Any]]]:
    """Dispatchers named `names` sharing `redis`: name -> (dispatcher, its control stub)."""
    async with AsyncExitStack() as stack:
        found = {}
        for name in names:
            config = test_config(
                server={"instance_id": name}, replicas={"lease_ms": LEASE_MS}, store={"url": redis.url}
            )
            d = await stack.enter_async_context(running_dispatcher(config))
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(d.address))
            found[name] = (d, wire.SessionControlServiceStub(channel))
        yield found


async def found(stub: Any, session_id: str) -> wire.ctl.GetSessionResponse:
    """GetSession until the directory knows the session (it is published within a step)."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        try:
            return await stub.GetSession(wire.ctl.GetSessionRequest(session_id=session_id))
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.01)  # sleep-ok: the interval of a bounded poll of another process's view


def membership(d: Dispatcher) -> RedisReplicas:
    assert isinstance(d.peers, RedisReplicas)
    return d.peers


async def test_a_stop_through_replica_a_reaches_the_session_on_c_and_names_both(redis_server: RedisServer) -> None:
    async with replicas(redis_server, "a", "b", "c") as group:
        (_, a), (_, b), (c, _) = group["a"], group["b"], group["c"]
        async with grpc.aio.insecure_channel(c.address) as channel:
            raw = RawSession(channel)
            await raw.hello("on-c")
            await raw.content(2, "hello from c ")
            shown = await found(a, "on-c")
            assert shown.session.dispatcher_id == "dispatcher:c"
            listed = await b.ListSessions(wire.ctl.ListSessionsRequest())
            assert {s.session_id: s.dispatcher_id for s in listed.sessions} == {"on-c": "dispatcher:c"}
            answer = asyncio.ensure_future(
                a.StopSession(wire.ctl.StopSessionRequest(session_id="on-c", reason="operator via a"))
            )
            stop = (await raw.recv_kind("stop")).stop
            assert list(stop.path) == ["operator:anonymous", "dispatcher:a", "dispatcher:c"]
            await raw.send(wire.pb.UpstreamPacket(seq=3, stop_confirm=wire.pb.StopConfirm(stop_id=stop.stop_id)))
            await raw.call.done_writing()
            response = await asyncio.wait_for(answer, WAIT_S)
            assert response.result == wire.ctl.STOP_RESULT_CONFIRMED and response.stop_to_confirm_us > 0
            assert list(response.stop.path) == ["operator:anonymous", "dispatcher:a", "dispatcher:c"]
            await raw.status()
        # Ended: C still answers for it (forwarded by the directory's ended record).
        again = await b.StopSession(wire.ctl.StopSessionRequest(session_id="on-c", reason="twice"))
        assert again.result == wire.ctl.STOP_RESULT_ALREADY_ENDED
        assert again.outcome.state == wire.ctl.SESSION_STATE_STOPPED
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await b.GetSession(wire.ctl.GetSessionRequest(session_id="nowhere"))
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND


async def test_a_watcher_moved_between_replicas_goes_on_without_a_gap(redis_server: RedisServer) -> None:
    async with replicas(redis_server, "a", "b", "c") as group:
        (_, a), (_, b), (c, _) = group["a"], group["b"], group["c"]
        async with grpc.aio.insecure_channel(c.address) as channel:
            raw = RawSession(channel)
            await raw.hello("watched")
            await found(b, "watched")
            on_b = b.WatchSession(wire.ctl.WatchSessionRequest(session_id="watched"))
            seen: list[int] = []
            for seq in range(2, 6):
                await raw.content(seq, f"word{seq} ")
            while len(seen) < 5:  # the hello, then four content events
                seen.append((await asyncio.wait_for(on_b.read(), WAIT_S)).event.seq)
            on_b.cancel()  # the watcher's connection to B goes; it picks up on A
            for seq in range(6, 9):
                await raw.content(seq, f"word{seq} ", is_finish=seq == 8)
            await raw.call.done_writing()
            on_a = a.WatchSession(wire.ctl.WatchSessionRequest(session_id="watched", from_seq=seen[-1] + 1))
            texts = []
            async for response in on_a:
                seen.append(response.event.seq)
                if response.event.HasField("content"):
                    texts.append(response.event.content.text)
            await raw.status()
        assert seen == list(range(1, len(seen) + 1)), f"a gap or a repeat: {seen}"
        assert texts == ["word6 ", "word7 ", "word8 "]


async def test_asks_through_a_replica_without_pools_go_to_the_pools_of_others(redis_server: RedisServer) -> None:
    async with replicas(redis_server, "a", "b", "c") as group:
        (a, _), (_, b), (c, _) = group["a"], group["b"], group["c"]
        async with pool_commanders(a, 2), pool_commanders(c, 2):
            client = Redis.from_url(redis_server.url)

            async def published() -> dict[str, int]:
                values = await client.mget(["sw:replica:a", "sw:replica:c"])
                return {name: json.loads(v)["free"] for name, v in zip("ac", values, strict=True) if v is not None}

            deadline = asyncio.get_running_loop().time() + WAIT_S
            while await published() != {"a": 2, "c": 2}:
                assert asyncio.get_running_loop().time() < deadline, "free commanders never published"
                await asyncio.sleep(0.02)  # sleep-ok: bounded poll of what the other replicas published
            await client.aclose()
            answers = await asyncio.gather(
                *(b.Ask(wire.ctl.AskRequest(input_text=f"question {i}", wait_for_commander_ms=2000)) for i in range(4))
            )
            held = [(await found(b, r.session_id)).session for r in answers]
        assert all(r.outcome.state == wire.ctl.SESSION_STATE_FINISHED and r.answer for r in answers)
        assert sorted(info.dispatcher_id for info in held) == ["dispatcher:a"] * 2 + ["dispatcher:c"] * 2
        # None left anywhere: B has no pool, and says so as it does alone.
        with pytest.raises(grpc.aio.AioRpcError) as none_free:
            await b.Ask(wire.ctl.AskRequest(input_text="one more", wait_for_commander_ms=50))
        assert none_free.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "no free commander" in (none_free.value.details() or "")


async def test_redis_down_refuses_new_sessions_runs_the_others_and_recovers(redis_server: RedisServer) -> None:
    async with replicas(redis_server, "a", "b") as group:
        (a, a_ctl), (b_d, b) = group["a"], group["b"]
        async with grpc.aio.insecure_channel(a.address) as channel:
            running = RawSession(channel)
            await running.hello("running")
            await found(b, "running")
            redis_server.stop()
            await wait_until(lambda: membership(a).refusal() is not None, "A noticed Redis is down", WAIT_S)
            refused = RawSession(channel)
            await refused.send(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(agent_name="new")))
            code, details, _ = await refused.status()
            assert code is grpc.StatusCode.UNAVAILABLE and details.startswith("session store unavailable: "), details
            assert redis_server.url.removesuffix("/0") in details
            with pytest.raises(grpc.aio.AioRpcError) as ask:
                await a_ctl.Ask(wire.ctl.AskRequest(input_text="q", wait_for_commander_ms=50))
            assert ask.value.code() is grpc.StatusCode.UNAVAILABLE
            assert (ask.value.details() or "").startswith("session store unavailable: ")
            # The running session goes on, locally.
            await running.content(2, "still here", is_finish=True)
            await running.call.done_writing()
            code, _, _ = await running.status()
            assert code is grpc.StatusCode.OK
            redis_server.start()  # empty: nothing was saved
            await wait_until(lambda: membership(a).refusal() is None, "A reconnected to Redis", WAIT_S)
            await wait_until(lambda: membership(b_d).refusal() is None, "B reconnected to Redis", WAIT_S)
            again = RawSession(channel)
            await again.hello("after")
            # The directory was published again: B finds A's new session.
            assert (await found(b, "after")).session.dispatcher_id == "dispatcher:a"
            await again.content(2, "done", is_finish=True)
            await again.call.done_writing()
            await again.status()


# -- lost replicas, bad entries, access, a Redis down at start-up --------------------------------


async def ghost_replica(redis: RedisServer, session_id: str, started_by: str) -> None:
    """What a replica killed mid-session leaves in Redis: its index entry, its held set and the
    session's info, and no lease (it ran out)."""
    client = Redis.from_url(redis.url)
    info = wire.ctl.SessionInfo(
        session_id=session_id, state=wire.ctl.SESSION_STATE_ACTIVE, started_by=started_by,
        dispatcher_id="dispatcher:ghost", started_at_ms=1, tool_calls_running=1,
    )  # fmt: skip
    await client.sadd("sw:replicas", "ghost")
    await client.sadd("sw:held:ghost", session_id)
    await client.set(f"sw:info:{session_id}", info.SerializeToString())
    await client.aclose()


async def test_a_lost_replica_s_sessions_end_cancelled_once_and_only_for_those_who_may_see_them(
    redis_server: RedisServer,
) -> None:
    tokens = {"alice": ("operator", "op-secret"), "web": ("backend", "web-secret"), "other": ("backend", "x-secret")}
    auth = {"tokens": ";".join(f"{role} {name} {hash_token(token)}" for name, (role, token) in tokens.items())}
    await ghost_replica(redis_server, "ghosted", "backend:web")
    async with AsyncExitStack() as stack:
        stubs = []
        for name in ("a", "b"):
            config = test_config(
                server={"instance_id": name},
                replicas={"lease_ms": LEASE_MS},
                store={"url": redis_server.url},
                auth=auth,
            )
            d = await stack.enter_async_context(running_dispatcher(config))
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(d.address))
            stubs.append(wire.SessionControlServiceStub(channel))
        a, b = stubs

        def bearer(name: str) -> tuple[tuple[str, str], ...]:
            return (("authorization", f"Bearer {tokens[name][1]}"),)

        shown = await a.GetSession(wire.ctl.GetSessionRequest(session_id="ghosted"), metadata=bearer("web"))
        info = shown.session
        assert (info.state, info.outcome.state) == (wire.ctl.SESSION_STATE_CANCELLED,) * 2
        assert (info.outcome.reason, info.outcome.error_code) == ("replica lost", "REPLICA_LOST")
        assert info.tool_calls_running == 0 and info.dispatcher_id == "dispatcher:ghost"
        listed = await b.ListSessions(wire.ctl.ListSessionsRequest(), metadata=bearer("alice"))
        assert [s.session_id for s in listed.sessions] == ["ghosted"]
        assert listed.sessions[0].outcome.ended_at_ms == info.outcome.ended_at_ms  # written once, by one replica
        hidden = await b.ListSessions(wire.ctl.ListSessionsRequest(), metadata=bearer("other"))
        assert list(hidden.sessions) == []
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await b.GetSession(wire.ctl.GetSessionRequest(session_id="ghosted"), metadata=bearer("other"))
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        stop = await b.StopSession(
            wire.ctl.StopSessionRequest(session_id="ghosted", reason="late"), metadata=bearer("alice")
        )
        assert stop.result == wire.ctl.STOP_RESULT_ALREADY_ENDED and stop.outcome.reason == "replica lost"
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            async for _ in a.WatchSession(wire.ctl.WatchSessionRequest(session_id="ghosted"), metadata=bearer("web")):
                pass
        assert gone.value.code() is grpc.StatusCode.OUT_OF_RANGE
        assert "no events of it are kept" in (gone.value.details() or "")


async def test_a_malformed_entry_in_redis_is_skipped(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    await client.sadd("sw:replicas", "junk")
    await client.set("sw:replica:junk", b"not json")
    await client.aclose()
    async with replicas(redis_server, "a") as group:
        (_, a) = group["a"]
        listed = await a.ListSessions(wire.ctl.ListSessionsRequest())
        assert list(listed.sessions) == []
        assert await membership(group["a"][0]).placements() == []


async def test_a_malformed_forwarded_by_hop_is_the_caller_s_error(redis_server: RedisServer) -> None:
    async with replicas(redis_server, "a") as group:
        (d, a) = group["a"]
        async with grpc.aio.insecure_channel(d.address) as channel:
            raw = RawSession(channel)
            await raw.hello("s")
            metadata = (("x-dispatcher-forwarded", "1"), ("x-dispatcher-forwarded-by", "not a hop"))
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await a.StopSession(wire.ctl.StopSessionRequest(session_id="s", reason="x"), metadata=metadata)
            assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "x-dispatcher-forwarded-by hop 'not a hop'" in (bad.value.details() or "")
            assert d.sessions.get_open("s") is not None  # nothing happened to the session
            await raw.call.done_writing()
            await raw.status()


async def test_a_replica_started_while_redis_is_down_refuses_sessions_until_it_answers(
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    async with replicas(redis_server, "a") as group:
        (d, _) = group["a"]
        assert (membership(d).refusal() or "").startswith("session store unavailable: ")
        async with grpc.aio.insecure_channel(d.address) as channel:
            refused = RawSession(channel)
            await refused.send(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id="early")))
            code, details, _ = await refused.status()
            assert code is grpc.StatusCode.UNAVAILABLE and "session store unavailable" in details
            assert d.sessions.get_ended("early") is None  # refused before it was a session
            redis_server.start()
            await wait_until(lambda: membership(d).refusal() is None, "the replica reached Redis", WAIT_S)
            accepted = RawSession(channel)
            await accepted.hello("later")
            await accepted.call.done_writing()
            await accepted.status()
