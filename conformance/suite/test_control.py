"""CTRL: the SessionControlService API (control.proto), graded only when the target serves it.

Adding a control requirement: register `CTRL-00N` in conformance/requirements.py, then write
a test here that takes the `control` fixture (the service's descriptor; the test is skipped,
and reported as such, when the target does not serve SessionControlService).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor

from conformance.client import session_id
from conformance.plugin import requirement
from conformance.probes import Reflection
from conformance.target import Target
from shared import wire

CONTROL_SERVICE = wire.CONTROL_SERVICE_NAME  # southwest.ai.agent.v1.SessionControlService


def _require_control(reflection: Reflection) -> None:
    if not reflection.ok:
        pytest.skip(
            f"cannot tell whether the target serves SessionControlService: reflection failed ({reflection.error})"
        )
    if CONTROL_SERVICE not in reflection.services:
        pytest.skip("target does not serve SessionControlService")


@pytest.fixture(scope="session")
def control(target: Target, reflection: Reflection) -> descriptor.ServiceDescriptor:
    """SessionControlService's descriptor, read through reflection; skips when it is not served."""
    _require_control(reflection)
    service = target.state.run(reflection.find_service(CONTROL_SERVICE, target.options.wait_s))
    if service is None:
        pytest.skip("reflection lists SessionControlService but cannot resolve it (graded by CTRL-001)")
    return service


@requirement("CTRL-001")
async def test_session_control_is_served_and_described(target: Target, reflection: Reflection) -> None:
    _require_control(reflection)
    service = await reflection.find_service(CONTROL_SERVICE, target.options.wait_s)
    assert service is not None, f"reflection lists {CONTROL_SERVICE} but cannot resolve its descriptor"
    assert list(service.methods_by_name), f"{CONTROL_SERVICE} has no methods"


def _stub(channel: grpc.aio.Channel) -> wire.SessionControlServiceStub:
    return wire.SessionControlServiceStub(channel)


async def _rpc_error(call: Any, wait_s: float) -> grpc.aio.AioRpcError:
    """The error a unary or server-streaming call must end with."""
    try:
        if hasattr(call, "read"):
            while await asyncio.wait_for(call.read(), wait_s) is not grpc.aio.EOF:
                pass
        else:
            await asyncio.wait_for(call, wait_s)
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded; it should have failed")


async def _events(call: Any, wait_s: float, limit: int = 10_000) -> list[wire.ctl.SessionEvent]:
    events: list[wire.ctl.SessionEvent] = []
    while len(events) < limit and (response := await asyncio.wait_for(call.read(), wait_s)) is not grpc.aio.EOF:
        events.append(response.event)
    return events


@requirement("CTRL-002")
async def test_a_live_session_is_listed_and_shown(target: Target, control: descriptor.ServiceDescriptor) -> None:
    wait_s, metadata = target.options.wait_s, target.options.metadata()
    async with target.channel() as channel:
        session = target.session(channel)
        welcome = await session.hello(session_id("ctrl-002"))
        await session.content(2, "listed ")
        stub = _stub(channel)
        shown = (await stub.GetSession(wire.ctl.GetSessionRequest(session_id=welcome.session_id), metadata=metadata,
                                       timeout=wait_s)).session  # fmt: skip
        assert shown.session_id == welcome.session_id, f"GetSession showed {shown.session_id!r}"
        state = wire.ctl.SessionState.Name(shown.state)
        assert state in _LIVE, f"an open session must be in a live state, got {state}"
        assert shown.packets_in.get("hello", 0) >= 1, f"packets_in should count the hello: {dict(shown.packets_in)}"
        listed = await stub.ListSessions(wire.ctl.ListSessionsRequest(page_size=1000), metadata=metadata,
                                         timeout=wait_s)  # fmt: skip
        ids = [s.session_id for s in listed.sessions]
        token = listed.next_page_token
        while token and welcome.session_id not in ids:
            page = await stub.ListSessions(wire.ctl.ListSessionsRequest(page_size=1000, page_token=token),
                                           metadata=metadata, timeout=wait_s)  # fmt: skip
            ids += [s.session_id for s in page.sessions]
            token = page.next_page_token
        assert welcome.session_id in ids, "ListSessions does not list the open session"
        unknown = session_id("ctrl-002-unknown")
        for call in (
            stub.GetSession(wire.ctl.GetSessionRequest(session_id=unknown), metadata=metadata),
            stub.StopSession(wire.ctl.StopSessionRequest(session_id=unknown, reason="kit"), metadata=metadata),
            stub.WatchSession(wire.ctl.WatchSessionRequest(session_id=unknown), metadata=metadata),
        ):
            error = await _rpc_error(call, wait_s)
            assert error.code() is grpc.StatusCode.NOT_FOUND, f"unknown session: expected NOT_FOUND, got {error.code()}"
        await session.content(3, "", is_finish=True)
        await session.half_close()
        await session.finish()


@requirement("CTRL-003")
async def test_stop_session_answers_after_the_confirmation(
    target: Target, control: descriptor.ServiceDescriptor
) -> None:
    wait_s, metadata = target.options.wait_s, target.options.metadata()
    async with target.channel() as channel:
        session = target.session(channel)
        welcome = await session.hello(session_id("ctrl-003"))
        await session.content(2, "about to be stopped ")
        stub = _stub(channel)
        request = wire.ctl.StopSessionRequest(session_id=welcome.session_id, reason="conformance kit", cause="kit")
        answer = asyncio.ensure_future(stub.StopSession(request, metadata=metadata, timeout=wait_s * 2))
        stop = (await session.expect("stop", "the StopSignal sent by StopSession")).stop
        code = wire.pb.StopCode.Name(stop.code)
        assert code == "STOP_CODE_OPERATOR", f"StopSession without a code must stop with OPERATOR, got {code}"
        path = list(stop.path)
        assert len(path) >= 2 and path[0].split(":")[0] in {"operator", "backend"}, (
            f"the path must start with the caller (operator:... or backend:...) then the dispatcher: {path}"
        )
        assert not answer.done(), "StopSession answered before the commander confirmed"
        await session.stop_confirm(3, stop)
        await session.half_close()
        response = await asyncio.wait_for(answer, wait_s)
        result = wire.ctl.StopResult.Name(response.result)
        assert result == "STOP_RESULT_CONFIRMED", f"expected STOP_RESULT_CONFIRMED, got {result}"
        assert response.stop_to_confirm_us > 0, "a confirmed stop reports its stop_to_confirm_us"
        assert response.stop.stop_id == stop.stop_id, "StopSessionResponse.stop is not the stop that was sent"
        await session.finish()
        again = await stub.StopSession(request, metadata=metadata, timeout=wait_s)
        result = wire.ctl.StopResult.Name(again.result)
        assert result == "STOP_RESULT_ALREADY_ENDED", f"stopping an ended session: expected ALREADY_ENDED, got {result}"
        assert again.outcome.stop.stop_id == stop.stop_id, "the recorded outcome must carry the stop that ended it"


@requirement("CTRL-004")
async def test_a_watcher_resumes_without_gaps_or_duplicates(
    target: Target, control: descriptor.ServiceDescriptor
) -> None:
    wait_s, metadata = target.options.wait_s, target.options.metadata()
    async with target.channel() as channel:
        session = target.session(channel)
        welcome = await session.hello(session_id("ctrl-004"))
        for seq in range(2, 8):
            await session.content(seq, f"part {seq} ")
        stub = _stub(channel)
        first_call = stub.WatchSession(wire.ctl.WatchSessionRequest(session_id=welcome.session_id), metadata=metadata)
        first = await _events(first_call, wait_s, limit=4)
        first_call.cancel()
        for seq in range(8, 12):
            await session.content(seq, f"part {seq} ")
        await session.content(12, "", is_finish=True)
        await session.half_close()
        await session.finish()
        assert first, "WatchSession sent no event for a session with seven packets"
        resume = wire.ctl.WatchSessionRequest(session_id=welcome.session_id, from_seq=first[-1].seq + 1)
        rest = await _events(stub.WatchSession(resume, metadata=metadata), wait_s)
        seqs = [e.seq for e in first + rest]
        assert seqs == list(range(1, len(seqs) + 1)), f"seqs across the reconnect are not 1..N exactly once: {seqs}"
        texts = "".join(e.content.text for e in first + rest if e.HasField("content"))
        assert texts == "".join(f"part {seq} " for seq in range(2, 12)), f"content seen by the watcher: {texts!r}"
        last = rest[-1] if rest else first[-1]
        assert last.HasField("state_change"), f"the last event must be the terminal state change, got {last}"
        state = wire.ctl.SessionState.Name(last.state_change.state)
        assert state == "SESSION_STATE_FINISHED", f"terminal state: expected FINISHED, got {state}"


@requirement("CTRL-005")
async def test_bad_control_requests_are_refused_and_harmless(
    target: Target, control: descriptor.ServiceDescriptor
) -> None:
    wait_s, metadata = target.options.wait_s, target.options.metadata()
    async with target.channel() as channel:
        session = target.session(channel)
        welcome = await session.hello(session_id("ctrl-005"))
        stub = _stub(channel)
        error = await _rpc_error(
            stub.WatchSession(wire.ctl.WatchSessionRequest(session_id=welcome.session_id, from_seq=1_000_000),
                              metadata=metadata),
            wait_s,
        )  # fmt: skip
        assert error.code() is grpc.StatusCode.OUT_OF_RANGE, (
            f"from_seq far ahead: expected OUT_OF_RANGE, got {error.code()}"
        )
        error = await _rpc_error(
            stub.StopSession(wire.ctl.StopSessionRequest(session_id=welcome.session_id), metadata=metadata), wait_s
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (
            f"no reason: expected INVALID_ARGUMENT, got {error.code()}"
        )
        await session.content(2, "still running", is_finish=True)
        await session.half_close()
        ending = await session.finish()
        assert ending.code is grpc.StatusCode.OK, f"the session must be untouched: {ending.describe()}"


_LIVE = {"SESSION_STATE_OPEN", "SESSION_STATE_ACTIVE", "SESSION_STATE_AWAITING_TOOL"}
