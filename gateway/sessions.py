"""`/v1/sessions`: start a session as an event stream, resume it, list, show and stop sessions.

- `POST /v1/sessions` starts a session on the pool (StartSession) and streams its events. By
  default the stream is the StartSession call itself, so a client that goes away cancels it
  and the dispatcher stops the session with USER_CANCEL, the path starting at the client.
  With `"on_disconnect": "keep"` the call is held by `KeptSessions` and the stream is a
  WatchSession: only `POST /v1/sessions/{id}/stop` stops the session.
- `GET /v1/sessions/{id}/events` resumes from `Last-Event-ID` + 1 (or `?from_seq=`).
- JSON of sessions is dispatcherctl's (`message_to_dict`), so `--json` and HTTP agree.

Errors found before a stream starts are HTTP statuses (the first event is read, or the
session looked up, before the response begins); later ones end the stream with `event: error`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sse_starlette import EventSourceResponse
from sse_starlette.event import ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dispatcherctl.client import StopAnswer
from dispatcherctl.names import parse_kinds, parse_states, parse_stop_code
from dispatcherctl.render import message_to_dict, stop_json
from gateway.bodies import bad_request, optional_int, optional_str, read_json_object, string_map
from gateway.errors import GatewayError
from gateway.events import error_event, relay
from gateway.state import GatewayState, state_of
from gateway.upstream import Metadata
from shared import wire

__all__ = [
    "decide_tool_call",
    "event_stream",
    "get_session",
    "list_sessions",
    "resume_events",
    "start_session",
    "stop_session",
]

_ON_DISCONNECT = ("stop", "keep")


def event_stream(state: GatewayState, content: AsyncIterator[ServerSentEvent], session_id: str = "") -> Response:
    headers = {"X-Session-Id": session_id} if session_id else None
    return EventSourceResponse(
        content, headers=headers, ping=state.config.keepalive_s, send_timeout=state.config.send_timeout_s
    )


def _start_request(body: dict[str, Any], state: GatewayState) -> wire.ctl.StartSessionRequest:
    value = body.get("input")
    if isinstance(value, str) and value:
        text, as_json = value, ""
    elif isinstance(value, dict):
        text, as_json = "", json.dumps(value, ensure_ascii=False)
    else:
        raise bad_request("'input' is required: a non-empty string or a JSON object")
    return wire.ctl.StartSessionRequest(
        input_text=text,
        input_json=as_json,
        metadata=string_map(body, "metadata"),
        session_id=optional_str(body, "session_id"),
        timeout_ms=optional_int(body, "timeout_ms"),
        wait_for_commander_ms=optional_int(body, "wait_for_commander_ms") or state.config.wait_for_commander_ms,
    )


async def _first_event(call: Any, state: GatewayState) -> Any:
    """The StartSession call's first event (OPEN), or its failure as an HTTP error."""
    try:
        return (await call.read()).event
    except grpc.aio.AioRpcError as exc:
        raise state.upstream.error(exc) from exc
    except BaseException:
        call.cancel()
        raise


async def start_session(request: Request) -> Response:
    state = state_of(request)
    body = await read_json_object(request, state.config.max_body_bytes)
    on_disconnect = optional_str(body, "on_disconnect", "stop")
    if on_disconnect not in _ON_DISCONNECT:
        raise bad_request(f"'on_disconnect' must be one of {', '.join(_ON_DISCONNECT)}")
    start = _start_request(body, state)
    metadata = state.upstream.metadata(request)
    if on_disconnect == "keep":
        start.kinds.append(wire.ctl.EVENT_KIND_STATE_CHANGE)  # the holder needs only the states
        first = await state.kept.start(start, metadata)
        watch = state.upstream.stub.WatchSession(
            wire.ctl.WatchSessionRequest(session_id=first.session_id, from_seq=first.seq + 1), metadata=metadata
        )
    else:
        watch = state.upstream.stub.StartSession(start, metadata=metadata)
        first = await _first_event(watch, state)
    session_id = first.session_id
    return event_stream(state, relay(watch, session_id, first=first, upstream=state.upstream), session_id)


def _resume_point(request: Request) -> int:
    """The first seq wanted: `?from_seq=N`, else `Last-Event-ID` + 1, else 0 (the oldest kept)."""
    raw = request.query_params.get("from_seq")
    if raw is not None:
        if not raw.isdigit():
            raise bad_request("from_seq must be a non-negative integer")
        return int(raw)
    last = request.headers.get("last-event-id", "").strip()
    if last:
        if not last.isdigit():
            raise bad_request("Last-Event-ID must be the seq of the last event received")
        return int(last) + 1
    return 0


async def resume_events(request: Request) -> Response:
    state = state_of(request)
    session_id = request.path_params["session_id"]
    from_seq = _resume_point(request)
    try:
        kinds = parse_kinds(request.query_params.getlist("kind"))
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    metadata = state.upstream.metadata(request)
    # Looked up first so that an unknown session, a refusal or a resume point no longer kept
    # is an HTTP status, not an event of a stream that has already said 200.
    found = await state.upstream.unary("GetSession", wire.ctl.GetSessionRequest(session_id=session_id), metadata)
    info = found.session
    if from_seq and info.last_event_seq and (from_seq < info.first_event_seq or from_seq > info.last_event_seq + 1):
        raise GatewayError(
            409,
            "OUT_OF_RANGE",
            f"session {session_id!r} keeps events {info.first_event_seq}..{info.last_event_seq}; "
            f"from_seq {from_seq} is not among them",
            first_kept_seq=info.first_event_seq,
            last_seq=info.last_event_seq,
        )
    call = state.upstream.stub.WatchSession(
        wire.ctl.WatchSessionRequest(session_id=session_id, from_seq=from_seq, kinds=kinds), metadata=metadata
    )
    start_at = from_seq or info.first_event_seq or 1
    return event_stream(state, relay(call, session_id, next_seq=start_at, upstream=state.upstream), session_id)


def _list_request(request: Request) -> wire.ctl.ListSessionsRequest:
    try:
        states = parse_states(request.query_params.getlist("state"))
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return wire.ctl.ListSessionsRequest(states=states, commander=request.query_params.get("commander", ""))


async def _session_list(state: GatewayState, listing: Any, metadata: Metadata) -> list[dict[str, Any]]:
    return [message_to_dict(info) async for info in state.upstream.list_sessions(listing, metadata)]


async def list_sessions(request: Request) -> Response:
    """`{"sessions": [...]}`, each as `dispatcherctl sessions --json` prints it; `?stream=true`
    makes it an event stream of the table (`event: sessions`), sent whenever it changes."""
    state = state_of(request)
    listing = _list_request(request)
    metadata = state.upstream.metadata(request)
    sessions = await _session_list(state, listing, metadata)  # the first read answers errors as statuses
    if request.query_params.get("stream", "").lower() not in ("1", "true", "yes"):
        return JSONResponse({"sessions": sessions})
    return event_stream(state, _table_stream(state, listing, metadata, sessions))


async def _table_stream(
    state: GatewayState, listing: Any, metadata: Metadata, sessions: list[dict[str, Any]]
) -> AsyncIterator[ServerSentEvent]:
    """The session table whenever it changes. The control API has no list-watch RPC (no proto
    change this round), so the gateway re-reads ListSessions every `list_refresh_s` for each
    such stream, with the viewer's own token: the browser itself never polls."""
    last = ""
    while True:
        text = json.dumps({"sessions": sessions}, ensure_ascii=False, separators=(",", ":"))
        if text != last:
            yield ServerSentEvent(data=text, event="sessions")
            last = text
        await asyncio.sleep(state.config.list_refresh_s)  # the poll interval of ListSessions, not a wait
        try:
            sessions = await _session_list(state, listing, metadata)
        except GatewayError as error:
            yield error_event(error, None)
            return


async def get_session(request: Request) -> Response:
    """The GetSessionResponse, as `dispatcherctl show --json` prints it."""
    state = state_of(request)
    session_id = request.path_params["session_id"]
    found = await state.upstream.unary(
        "GetSession", wire.ctl.GetSessionRequest(session_id=session_id), state.upstream.metadata(request)
    )
    return JSONResponse(message_to_dict(found))


async def stop_session(request: Request) -> Response:
    """StopSession; answers when the commander confirmed (or the stream ended without it):
    `confirmed`, `result`, the stop with its path, `stop_to_confirm_us` (dispatcher clock) and
    `round_trip_ms` (measured here), as `dispatcherctl stop --json`."""
    state = state_of(request)
    session_id = request.path_params["session_id"]
    body = await read_json_object(request, state.config.max_body_bytes)
    reason = optional_str(body, "reason").strip()
    if not reason:
        raise bad_request("'reason' is required: say why the session is stopped")
    try:
        code = parse_stop_code(optional_str(body, "code", "operator"))
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    cause = optional_str(body, "cause")
    stop = wire.ctl.StopSessionRequest(session_id=session_id, reason=reason, code=code, cause=cause)
    metadata = state.upstream.metadata(request)
    started = time.perf_counter()
    # No short deadline: the answer waits for the commander's confirmation or the grace period.
    timeout_s = max(60.0, state.config.upstream.timeout_s)
    response = await state.upstream.unary("StopSession", stop, metadata, timeout_s=timeout_s)
    answer = StopAnswer(session_id, response, None, (time.perf_counter() - started) * 1000)
    data = stop_json(answer)
    return JSONResponse({"confirmed": response.result == wire.ctl.STOP_RESULT_CONFIRMED, **data})


async def decide_tool_call(request: Request) -> Response:
    """DecideToolCall for a call waiting for approval: `{"approve": true}` or `{"approve": false,
    "reason": ...}` → the DecideToolCallResponse (`result`: DECIDED, ALREADY_DECIDED with the
    decision in force, NOT_AWAITING), as `dispatcherctl approve/deny` reads it."""
    state = state_of(request)
    body = await read_json_object(request, state.config.max_body_bytes)
    approve = body.get("approve")
    if not isinstance(approve, bool):
        raise bad_request("'approve' must be true or false")
    decide = wire.ctl.DecideToolCallRequest(
        session_id=request.path_params["session_id"],
        call_id=request.path_params["call_id"],
        approve=approve,
        reason=optional_str(body, "reason").strip(),
    )
    response = await state.upstream.unary("DecideToolCall", decide, state.upstream.metadata(request))
    return JSONResponse(message_to_dict(response))
