"""Human approval of tool calls, against a real in-process dispatcher: a call that needs
approval waits (an `approval_request` event), DecideToolCall approves or denies it, the
approval timeout denies it, a stop cancels it; backends decide only their own sessions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from dispatcher.tools import ToolRegistry
from shared import wire
from tests.conftest import WAIT_S, Gate, RawSession, gated_tools, running_dispatcher, test_config, wait_until
from tests.integration.test_auth import CONFIG as AUTH_CONFIG
from tests.integration.test_auth import bearer

pytestmark = pytest.mark.anyio


def approval_tools(gate: Gate) -> ToolRegistry:
    """`gated_tools` plus `guarded` (async) and `guarded_inline` (a plain def), both marked
    `requires_approval`; each counts its runs in `gate.calls`."""
    registry = gated_tools(gate)

    @registry.tool(requires_approval=True)
    async def guarded(args: dict[str, Any]) -> dict[str, Any]:
        gate.calls += 1
        return {"ran": True, **args}

    @registry.tool(requires_approval=True)
    def guarded_inline(args: dict[str, Any]) -> dict[str, Any]:
        gate.calls += 1
        return {"ran_inline": True}

    return registry


def decide(
    channel: grpc.aio.Channel, session_id: str, call_id: str, *, approve: bool, reason: str = "", metadata: Any = None
) -> Any:
    return wire.SessionControlServiceStub(channel).DecideToolCall(
        wire.ctl.DecideToolCallRequest(session_id=session_id, call_id=call_id, approve=approve, reason=reason),
        metadata=metadata,
    )


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call succeeded; it should have been refused")


async def awaiting(channel: grpc.aio.Channel, session_id: str, call_id: str, metadata: Any = None) -> Any:
    """The session's `approval_request` event for `call_id` (waits for it, like an operator)."""
    stub = wire.SessionControlServiceStub(channel)
    kinds = [wire.ctl.EVENT_KIND_APPROVAL_REQUEST]
    watch = stub.WatchSession(wire.ctl.WatchSessionRequest(session_id=session_id, kinds=kinds), metadata=metadata)
    try:
        while True:
            response = await asyncio.wait_for(watch.read(), WAIT_S)
            assert response is not grpc.aio.EOF, "the session ended before the call asked for approval"
            if response.event.approval_request.call_id == call_id:
                return response.event.approval_request
    finally:
        watch.cancel()


async def open_with_call(channel: grpc.aio.Channel, session_id: str, tool: str, call_id: str) -> RawSession:
    raw = RawSession(channel)
    await raw.hello(session_id)
    await raw.tool_call(2, tool, json.dumps({"x": 1}), call_id=call_id)
    return raw


async def test_an_approved_call_runs_and_its_result_arrives_and_watch_shows_request_and_decision() -> None:
    gate = Gate()
    async with running_dispatcher(tools=approval_tools(gate)) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = await open_with_call(ch, "ap-1", "guarded", "c1")
        request = await awaiting(ch, "ap-1", "c1")
        assert request.tool_name == "guarded" and json.loads(request.arguments_json) == {"x": 1}
        assert request.timeout_ms == 10_000  # for_tests()
        assert gate.calls == 0  # it waits
        answer = await decide(ch, "ap-1", "c1", approve=True, reason="looks fine")
        assert answer.result == wire.ctl.DECIDE_RESULT_DECIDED
        assert answer.decision.approved and answer.decision.decided_by == "operator:anonymous"
        result = (await raw.recv_kind("tool_result")).tool_result
        assert not result.HasField("error") and json.loads(result.result_json) == {"ran": True, "x": 1}
        assert gate.calls == 1
        again = await decide(ch, "ap-1", "c1", approve=False, reason="changed my mind")
        assert again.result == wire.ctl.DECIDE_RESULT_ALREADY_DECIDED and again.decision.approved
        await raw.content(3, "done", is_finish=True)
        await raw.status()
        watched = [
            r.event
            async for r in wire.SessionControlServiceStub(ch).WatchSession(
                wire.ctl.WatchSessionRequest(session_id="ap-1")
            )
        ]
        kinds = [e.WhichOneof("event") for e in watched]
        assert kinds.index("tool_call") < kinds.index("approval_request") < kinds.index("approval_decision")
        assert kinds.index("approval_decision") < kinds.index("tool_result")
        decision = next(e.approval_decision for e in watched if e.HasField("approval_decision"))
        assert decision.approved and decision.reason == "looks fine" and decision.decided_by == "operator:anonymous"


async def test_a_denied_call_is_a_denied_tool_error_with_the_reason_and_the_stream_goes_on() -> None:
    gate = Gate()
    async with running_dispatcher(tools=approval_tools(gate)) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = await open_with_call(ch, "ap-deny", "guarded_inline", "c1")  # an inline tool waits too
        await awaiting(ch, "ap-deny", "c1")
        answer = await decide(ch, "ap-deny", "c1", approve=False, reason="not on prod")
        assert answer.result == wire.ctl.DECIDE_RESULT_DECIDED and not answer.decision.approved
        result = (await raw.recv_kind("tool_result")).tool_result
        assert result.error.code == wire.pb.TOOL_ERROR_CODE_DENIED
        assert "not on prod" in result.error.message and "operator:anonymous" in result.error.message
        assert gate.calls == 0
        await raw.tool_call(3, "echo", '{"a": 1}', call_id="c2")  # the session goes on
        assert (await raw.recv_kind("tool_result")).tool_result.result_json == '{"a":1}'
        await raw.content(4, "ok", is_finish=True)
        code, _, _ = await raw.status()
        assert code is grpc.StatusCode.OK


async def test_no_decision_within_the_approval_timeout_is_a_timeout_tool_error() -> None:
    gate = Gate()
    config = test_config(tools={"approval_timeout_s": 0.2})
    async with (
        running_dispatcher(config, approval_tools(gate)) as d,
        grpc.aio.insecure_channel(d.address) as ch,
    ):
        raw = await open_with_call(ch, "ap-late", "guarded", "c1")
        result = (await raw.recv_kind("tool_result")).tool_result
        assert result.error.code == wire.pb.TOOL_ERROR_CODE_TIMEOUT and "approval" in result.error.message
        assert gate.calls == 0
        late = await decide(ch, "ap-late", "c1", approve=True)
        assert late.result == wire.ctl.DECIDE_RESULT_ALREADY_DECIDED
        assert late.decision.timed_out and late.decision.decided_by == "dispatcher:test"


async def test_a_stop_while_a_call_awaits_approval_cancels_it_without_a_result() -> None:
    gate = Gate()
    async with running_dispatcher(tools=approval_tools(gate)) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = await open_with_call(ch, "ap-stop", "guarded", "c1")
        await awaiting(ch, "ap-stop", "c1")
        stub = wire.SessionControlServiceStub(ch)
        stopping = asyncio.ensure_future(
            stub.StopSession(wire.ctl.StopSessionRequest(session_id="ap-stop", reason="enough"))
        )
        stop = (await raw.recv_kind("stop")).stop
        await raw.send(wire.pb.UpstreamPacket(seq=3, stop_confirm=wire.pb.StopConfirm(stop_id=stop.stop_id)))
        assert all(not p.HasField("tool_result") for p in await raw.drain())
        assert (await stopping).result == wire.ctl.STOP_RESULT_CONFIRMED
        assert gate.calls == 0
        late = await decide(ch, "ap-stop", "c1", approve=True)
        assert late.result == wire.ctl.DECIDE_RESULT_NOT_AWAITING
        events = [r.event async for r in stub.WatchSession(wire.ctl.WatchSessionRequest(session_id="ap-stop"))]
        dropped = [e.tool_result_dropped for e in events if e.HasField("tool_result_dropped")]
        assert [(r.call_id, r.error.code) for r in dropped] == [("c1", wire.pb.TOOL_ERROR_CODE_CANCELLED)]
        assert not any(e.HasField("approval_decision") or e.HasField("tool_result") for e in events)


async def test_approve_patterns_make_an_unmarked_tool_wait() -> None:
    config = test_config(tools={"approve": ("ech?",)})
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = await open_with_call(ch, "ap-pattern", "echo", "c1")
        await raw.tool_call(3, "clock", call_id="c2")  # not matched: answered at once
        assert (await raw.recv_kind("tool_result")).tool_result.call_id == "c2"
        await awaiting(ch, "ap-pattern", "c1")
        await decide(ch, "ap-pattern", "c1", approve=True)
        result = (await raw.recv_kind("tool_result")).tool_result
        assert result.call_id == "c1" and json.loads(result.result_json) == {"x": 1}


async def test_unknown_sessions_and_calls_are_not_found_and_other_calls_not_awaiting() -> None:
    gate = Gate()
    async with running_dispatcher(tools=approval_tools(gate)) as d, grpc.aio.insecure_channel(d.address) as ch:
        code, details = await refused(decide(ch, "nope", "c1", approve=True))
        assert code is grpc.StatusCode.NOT_FOUND and "nope" in details
        raw = await open_with_call(ch, "ap-nf", "gate_tool", "g1")  # needs no approval
        await wait_until(gate.started.is_set, "gate_tool started")
        code, details = await refused(decide(ch, "ap-nf", "zz", approve=True))
        assert code is grpc.StatusCode.NOT_FOUND and "zz" in details
        running = await decide(ch, "ap-nf", "g1", approve=True)
        assert running.result == wire.ctl.DECIDE_RESULT_NOT_AWAITING and not running.HasField("decision")
        code, details = await refused(decide(ch, "ap-nf", "g1", approve=False))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "reason" in details
        code, _ = await refused(decide(ch, "ap-nf", "", approve=True))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        gate.release.set()
        await raw.recv_kind("tool_result")


async def _pool_session(channel: grpc.aio.Channel, d: Any, session_id: str) -> tuple[RawSession, Any]:
    """A raw pool stream that `web` starts a session on; (the stream, the StartSession call)."""
    raw = RawSession(channel, metadata=bearer("bot"))
    await raw.send(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(agent_name="raw", awaits_assignment=True)))
    await wait_until(lambda: d.sessions.pool.free_count == 1, "the pool stream registered")
    started = wire.SessionControlServiceStub(channel).StartSession(
        wire.ctl.StartSessionRequest(input_text="go", session_id=session_id), metadata=bearer("web")
    )
    assert (await raw.recv()).HasField("assignment")  # the assignment goes down first, then the Welcome
    await raw.recv_kind("welcome")
    return raw, started


async def test_a_backend_decides_only_the_calls_of_its_own_sessions() -> None:
    gate = Gate()
    async with running_dispatcher(AUTH_CONFIG, approval_tools(gate)) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw, started = await _pool_session(ch, d, "web-ap")
        await raw.tool_call(2, "guarded", call_id="c1")
        await awaiting(ch, "web-ap", "c1", metadata=bearer("web"))
        code, details = await refused(decide(ch, "web-ap", "c1", approve=True, metadata=bearer("other")))
        assert code is grpc.StatusCode.PERMISSION_DENIED and "backend:other" in details
        answer = await decide(ch, "web-ap", "c1", approve=False, reason="no", metadata=bearer("web"))
        assert answer.result == wire.ctl.DECIDE_RESULT_DECIDED and answer.decision.decided_by == "backend:web"
        assert (await raw.recv_kind("tool_result")).tool_result.error.code == wire.pb.TOOL_ERROR_CODE_DENIED
        started.cancel()
