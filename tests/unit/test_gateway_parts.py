"""The gateway's pure parts (no network): the status table, chat message handling, SSE framing,
its settings, and the dispatcher's `x-via` hops."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from starlette.requests import HTTPConnection

from dispatcher.auth import Principal, Role
from dispatcher.control.via import caller_path, via_hops
from dispatcherctl.client import ClientConfig
from gateway.bodies import optional_int, string_map
from gateway.chat import finish_reason, split_messages
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, from_rpc_error, http_status
from gateway.events import end_event, error_event, sse_event, sse_kind
from gateway.upstream import Upstream
from shared import wire
from shared.errors import BadRequest


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.OUT_OF_RANGE, 409),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 502),
        (grpc.StatusCode.UNKNOWN, 502),
    ],
)
def test_each_grpc_status_has_one_http_status(code: grpc.StatusCode, status: int) -> None:
    assert http_status(code) == status


class _Failed(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_an_rpc_error_keeps_its_words_and_an_unreachable_dispatcher_says_so() -> None:
    error = from_rpc_error(_Failed(grpc.StatusCode.NOT_FOUND, "no session 'x'"), "h:1")
    assert (error.status, error.code, error.message) == (404, "NOT_FOUND", "no session 'x'")
    down = from_rpc_error(_Failed(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; ..."), "h:1")
    assert (down.status, down.message) == (503, "cannot reach the dispatcher at h:1")
    body = GatewayError(409, "OUT_OF_RANGE", "gone", first_kept_seq=7).body()
    assert body == {"error": {"message": "gone", "type": "conflict_error", "code": "OUT_OF_RANGE", "status": 409,
                              "first_kept_seq": 7}}  # fmt: skip


def test_chat_messages_split_into_the_input_and_its_context() -> None:
    text, context = split_messages(
        [
            {"role": "system", "content": "be brief"},
            {"role": "assistant", "content": [{"type": "text", "text": "earlier"}, {"type": "image_url"}]},
            {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2 + 2?"}]},
        ]
    )
    assert text == "What is 2 + 2?"
    assert context == [{"role": "system", "content": "be brief"}, {"role": "assistant", "content": "earlier"}]


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        (None, "non-empty list"),
        ([], "non-empty list"),
        (["hi"], "messages[0]"),
        ([{"role": "wizard", "content": "hi"}], "'role'"),
        ([{"role": "user", "content": 3}], "'content'"),
        ([{"role": "user", "content": [3]}], "content part"),
        ([{"role": "user", "content": [{"type": "text"}]}], "string 'text'"),
        ([{"role": "assistant", "content": "hi"}], "last message must be a user message"),
        ([{"role": "user", "content": ""}], "last message must be a user message"),
    ],
)
def test_bad_chat_messages_are_400_saying_why(messages: Any, words: str) -> None:
    with pytest.raises(GatewayError) as bad:
        split_messages(messages)
    assert bad.value.status == 400 and words in bad.value.message


def _outcome(state: int, code: int = 0) -> Any:
    outcome = wire.ctl.SessionOutcome(state=state)
    if code:
        outcome.stop.code = code
    return outcome


def test_finish_reasons_follow_the_outcome() -> None:
    assert finish_reason(None) == "stop"
    assert finish_reason(_outcome(wire.ctl.SESSION_STATE_FINISHED)) == "stop"
    stopped = wire.ctl.SESSION_STATE_STOPPED
    assert finish_reason(_outcome(stopped, wire.pb.STOP_CODE_POLICY_VIOLATION)) == "content_filter"
    assert finish_reason(_outcome(stopped, wire.pb.STOP_CODE_BUDGET_EXCEEDED)) == "length"
    assert finish_reason(_outcome(stopped, wire.pb.STOP_CODE_TIMEOUT)) == "length"
    assert finish_reason(_outcome(stopped, wire.pb.STOP_CODE_OPERATOR)) == "stop"


def test_sse_events_carry_the_kind_the_seq_and_the_event_as_json() -> None:
    event = wire.ctl.SessionEvent(session_id="s", seq=7, content=wire.pb.ContentChunk(text="hi"))
    sse = sse_event(event)
    assert (sse.event, sse.id) == ("content", "7")
    assert json.loads(str(sse.data))["content"]["text"] == "hi"
    change = wire.ctl.SessionEvent(session_id="s", seq=8, state_change=wire.ctl.StateChange(state=2))
    assert sse_kind(change) == "state"
    end = end_event("s", None)
    assert end.event == "end" and end.id is None and json.loads(str(end.data)) == {"session_id": "s", "outcome": None}
    error = error_event(GatewayError(503, "RESOURCE_EXHAUSTED", "fell behind"), 9)
    assert json.loads(str(error.data))["error"]["resume_from_seq"] == 9


def test_body_fields_are_checked() -> None:
    assert optional_int({"n": 5}, "n") == 5 and optional_int({}, "n") == 0
    for bad in (True, -1, 1.5, "5", 2**32):
        with pytest.raises(GatewayError):
            optional_int({"n": bad}, "n")
    assert string_map({"m": {"a": "b"}}, "m") == {"a": "b"}
    with pytest.raises(GatewayError):
        string_map({"m": {"a": 1}}, "m")


def test_the_gateway_holds_no_token_and_names_itself_plainly() -> None:
    assert GatewayConfig(gateway_id="gw-1").hop == "gateway:gw-1"
    with pytest.raises(ValueError, match="no token of its own"):
        GatewayConfig(upstream=ClientConfig(token="secret"))
    for bad_id in ("", "a b", "a,b", "x" * 101):
        with pytest.raises(ValueError, match="--id"):
            GatewayConfig(gateway_id=bad_id)
    with pytest.raises(ValueError, match="keepalive"):
        GatewayConfig(keepalive_s=0)


class _Context:
    def __init__(self, *metadata: tuple[str, str]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def test_via_hops_go_in_front_of_the_callers_own_hop() -> None:
    alice = Principal("alice", Role.OPERATOR)
    assert caller_path(alice, _Context()) == ("operator:alice",)
    context = _Context(("authorization", "Bearer x"), ("x-via", "http:10.0.0.7:5123, gateway:gw-1"))
    assert caller_path(alice, context) == ("http:10.0.0.7:5123", "gateway:gw-1", "operator:alice")
    assert via_hops(_Context(("x-via", "a"), ("x-via", "b"))) == ("a", "b")
    for bad in ("a b", "a,,b", "é", "x" * 129, "a,b,c,d,e"):
        with pytest.raises(BadRequest, match="x-via"):
            via_hops(_Context(("x-via", bad)))


async def test_the_callers_token_and_trace_context_go_upstream_malformed_trace_headers_do_not() -> None:
    upstream = Upstream(GatewayConfig(upstream=ClientConfig(target="127.0.0.1:1"), gateway_id="gw-1"))
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    def request(*headers: tuple[str, str]) -> HTTPConnection:
        raw = [(name.encode(), value.encode("utf-8")) for name, value in headers]
        return HTTPConnection({"type": "http", "headers": raw, "client": ("10.0.0.7", 5123)})

    try:
        sent = upstream.metadata(request(("authorization", "Bearer t"), ("traceparent", parent), ("tracestate", "a=1")))
        assert sent == (
            ("authorization", "Bearer t"),
            ("x-via", "http:10.0.0.7:5123,gateway:gw-1"),
            ("traceparent", parent),
            ("tracestate", "a=1"),
        )
        dropped = upstream.metadata(request(("traceparent", "x" * 600), ("tracestate", "é=1")))
        assert dropped == (("x-via", "http:10.0.0.7:5123,gateway:gw-1"),)  # tracing never fails a request
    finally:
        await upstream.close()
