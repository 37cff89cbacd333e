"""HS: the opening handshake and session ids."""

from __future__ import annotations

import grpc
import pytest

from conformance.client import session_id
from conformance.plugin import requirement
from conformance.suite.steps import echo_round_trip, finish_ok
from conformance.target import Target
from shared import wire


@requirement("HS-001")
async def test_welcome_is_the_first_answer_to_hello(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("hs-001"))  # fails unless the first packet back is a Welcome
        await finish_ok(session, 2, "a session that only said Hello")


@requirement("HS-002")
@pytest.mark.parametrize("asked", [True, False], ids=["asked-for", "assigned"])
async def test_welcome_names_the_session_in_force(target: Target, asked: bool) -> None:
    wanted = session_id("hs-002") if asked else ""
    async with target.channel() as channel:
        session = target.session(channel)
        welcome = await session.hello(wanted)
        if asked:
            assert welcome.session_id == wanted, f"asked for {wanted!r}, Welcome says {welcome.session_id!r}"
        else:
            assert welcome.session_id, "Hello asked for no id: Welcome.session_id must carry the assigned one"
        await finish_ok(session, 2, "a session that only said Hello")


@requirement("HS-003")
async def test_initial_metadata_names_the_session_and_dispatcher(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        welcome = await session.hello(session_id("hs-003"))
        metadata = await session.initial_metadata()
        assert metadata.get("x-session-id") == welcome.session_id, (
            f"initial metadata x-session-id should be {welcome.session_id!r}; metadata: {metadata}"
        )
        assert metadata.get("x-dispatcher-id"), f"initial metadata has no x-dispatcher-id: {metadata}"
        await finish_ok(session, 2, "a session that only said Hello")


@requirement("HS-004")
async def test_session_id_held_by_an_open_stream_is_refused(target: Target) -> None:
    taken = session_id("hs-004")
    async with target.channel() as channel:
        first = target.session(channel)
        await first.hello(taken)
        second = target.session(channel)
        await second.send(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id=taken)))
        await second.expect_status(grpc.StatusCode.ALREADY_EXISTS, f"a second stream asking for open session {taken!r}")
        await echo_round_trip(first, 2, "c1", "the session holding the id is untouched")
        await finish_ok(first, 3, "the session holding the id")


@requirement("HS-005")
@pytest.mark.parametrize(
    "bad_id", ["x" * 129, "sessión-1", "tab\tinside"], ids=["129-characters", "non-ascii", "control-character"]
)
async def test_malformed_session_id_is_refused(target: Target, bad_id: str) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.send(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id=bad_id)))
        await session.expect_status(grpc.StatusCode.INVALID_ARGUMENT, f"Hello asking for session id {bad_id!r}")
