"""Bearer tokens and roles, against a real dispatcher with tokens configured."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from commander.models import ScriptedAgent
from commander.session import run_session
from dispatcher.auth import hash_token, parse_token_lines
from shared import wire
from shared.model import SessionState
from tests.conftest import WAIT_S, RawSession, commander_config, running_dispatcher, test_config, wait_until

pytestmark = pytest.mark.anyio

TOKENS = {
    "alice": ("operator", "op-secret"),
    "web": ("backend", "web-secret"),
    "other": ("backend", "other-secret"),
    "bot": ("commander", "bot-secret"),
}
CONFIG = test_config(
    auth={"tokens": ";".join(f"{role} {name} {hash_token(token)}" for name, (role, token) in TOKENS.items())}
)


def bearer(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[name][1]}"),)


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status of a call that must fail (unary, or a stream whose first read fails)."""
    try:
        if hasattr(call, "read"):
            while await asyncio.wait_for(call.read(), WAIT_S) is not grpc.aio.EOF:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call succeeded; it should have been refused")


async def test_calls_without_a_valid_token_are_unauthenticated() -> None:
    async with running_dispatcher(CONFIG) as d, grpc.aio.insecure_channel(d.address) as ch:
        stub = wire.SessionControlServiceStub(ch)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "Basic op-secret"),)):
            code, details = await refused(stub.ListSessions(wire.ctl.ListSessionsRequest(), metadata=metadata))
            assert code is grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details
        raw = RawSession(ch)
        await raw.send(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id="anon")))
        code, details, _ = await raw.status()
        assert code is grpc.StatusCode.UNAUTHENTICATED
        assert d.sessions.registry.get_open("anon") is None and d.sessions.registry.get_ended("anon") is None


async def test_each_role_is_limited_to_its_calls() -> None:
    async with running_dispatcher(CONFIG) as d, grpc.aio.insecure_channel(d.address) as ch:
        stub = wire.SessionControlServiceStub(ch)
        code, details = await refused(stub.ListSessions(wire.ctl.ListSessionsRequest(), metadata=bearer("bot")))
        assert code is grpc.StatusCode.PERMISSION_DENIED and "commander:bot may not call ListSessions" in details
        code, details = await refused(
            stub.StartSession(wire.ctl.StartSessionRequest(input_text="hi"), metadata=bearer("bot"))
        )
        assert code is grpc.StatusCode.PERMISSION_DENIED
        raw = RawSession(ch, metadata=bearer("web"))
        await raw.send(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id="by-backend")))
        code, details, _ = await raw.status()
        assert code is grpc.StatusCode.PERMISSION_DENIED and "backend:web may not call ChatStream" in details
        listed = await stub.ListSessions(wire.ctl.ListSessionsRequest(), metadata=bearer("alice"))
        assert list(listed.sessions) == []


async def test_health_needs_no_token() -> None:
    async with running_dispatcher(CONFIG) as d, grpc.aio.insecure_channel(d.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", wire.SERVICE_NAME, wire.CONTROL_SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_backend_manages_only_the_sessions_it_started() -> None:
    async with running_dispatcher(CONFIG) as d, grpc.aio.insecure_channel(d.address) as ch:
        address = d.address or ""
        results = []
        cancel = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def pool_commander() -> None:
                config = commander_config(address, token=TOKENS["bot"][1])
                agent = ScriptedAgent(tokens_per_s=100, answer_words=10_000)
                results.append(
                    await run_session(agent, "", channel=ch, config=config, cancel=cancel, await_assignment=True)
                )

            tg.start_soon(pool_commander)
            await wait_until(lambda: d.sessions.pool.free_count == 1, "the pool commander registered")
            stub = wire.SessionControlServiceStub(ch)
            started = stub.StartSession(
                wire.ctl.StartSessionRequest(input_text="story", session_id="web-1"), metadata=bearer("web")
            )
            first = await asyncio.wait_for(started.read(), WAIT_S)
            assert first.event.session_id == "web-1"
            info = (
                await stub.GetSession(wire.ctl.GetSessionRequest(session_id="web-1"), metadata=bearer("web"))
            ).session
            assert info.started_by == "backend:web" and info.commander == "bot"  # the commander's token name

            for call in (
                stub.GetSession(wire.ctl.GetSessionRequest(session_id="web-1"), metadata=bearer("other")),
                stub.StopSession(wire.ctl.StopSessionRequest(session_id="web-1", reason="x"), metadata=bearer("other")),
                stub.WatchSession(wire.ctl.WatchSessionRequest(session_id="web-1"), metadata=bearer("other")),
            ):
                code, details = await refused(call)
                assert code is grpc.StatusCode.PERMISSION_DENIED and "backend:other" in details
            others_view = await stub.ListSessions(wire.ctl.ListSessionsRequest(), metadata=bearer("other"))
            assert list(others_view.sessions) == []
            mine = await stub.ListSessions(wire.ctl.ListSessionsRequest(), metadata=bearer("web"))
            assert [s.session_id for s in mine.sessions] == ["web-1"]

            stopped = await stub.StopSession(
                wire.ctl.StopSessionRequest(session_id="web-1", reason="user left"), metadata=bearer("alice")
            )
            assert stopped.result == wire.ctl.STOP_RESULT_CONFIRMED
            assert list(stopped.stop.path) == ["operator:alice", "dispatcher:test"]
            started.cancel()
            await wait_until(lambda: len(results) == 1, "the commander's session ended")
            cancel.set()
        assert results[0].state is SessionState.STOPPED
        assert results[0].stop is not None and results[0].stop.path[0] == "operator:alice"


def test_token_lines_must_be_hashed_and_name_a_known_role() -> None:
    good = parse_token_lines([f"operator alice {hash_token('t')}  # on call", "", "# comment"], "file")
    assert [p.hop for p in good.values()] == ["operator:alice"]
    with pytest.raises(ValueError, match="entry 1: the token must be given hashed"):
        parse_token_lines(["operator alice plaintext"], "file")
    with pytest.raises(ValueError, match="unknown role 'admin'"):
        parse_token_lines([f"admin root {hash_token('t')}"], "file")
    with pytest.raises(ValueError, match="expected '<role> <name> sha256:<hex>'"):
        parse_token_lines(["operator"], "file")
