"""Session events as Server-Sent Events, and the relay from a gRPC event stream to them.

One SSE event per journal event: `event:` its kind (the SessionEvent oneof's name;
`state_change` is `state`), `data:` the event as JSON (dispatcherctl's `message_to_dict`),
`id:` its journal seq, so a browser's `Last-Event-ID` is the resume point. After the
terminal state an `event: end` (no id) carries the outcome. A stream that fails once
started ends with `event: error`: the error object plus `resume_from_seq`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from sse_starlette.event import ServerSentEvent

from dispatcherctl.render import message_to_dict
from gateway.errors import GatewayError, internal_error
from gateway.upstream import responses

__all__ = ["end_event", "error_event", "internal_event", "outcome_of", "relay", "sse_event", "sse_kind"]

log = structlog.get_logger("gateway")

_KIND_NAMES = {"state_change": "state"}


def sse_kind(event: Any) -> str:
    kind = event.WhichOneof("event") or "unknown"
    return _KIND_NAMES.get(kind, kind)


def _json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def sse_event(event: Any) -> ServerSentEvent:
    return ServerSentEvent(data=_json(message_to_dict(event)), event=sse_kind(event), id=str(event.seq))


def outcome_of(event: Any) -> Any:
    """The SessionOutcome when `event` is the terminal state change, else None."""
    if event.WhichOneof("event") == "state_change" and event.state_change.HasField("outcome"):
        return event.state_change.outcome
    return None


def end_event(session_id: str, outcome: Any) -> ServerSentEvent:
    data = {"session_id": session_id, "outcome": message_to_dict(outcome) if outcome is not None else None}
    return ServerSentEvent(data=_json(data), event="end")


def internal_event(exc: BaseException, session_id: str) -> ServerSentEvent:
    return error_event(internal_error(exc, session_id), None)


def error_event(error: GatewayError, resume_from_seq: int | None) -> ServerSentEvent:
    body = error.body()
    if resume_from_seq is not None:
        body["error"]["resume_from_seq"] = resume_from_seq
    return ServerSentEvent(data=_json(body), event="error")


async def relay(
    call: Any, session_id: str, *, first: Any = None, next_seq: int = 1, upstream: Any
) -> AsyncIterator[ServerSentEvent]:
    """`call`'s events (WatchSession or StartSession responses) as SSE events, ending with
    `end` or `error`. `first` is an event already read; `next_seq` the seq expected next (the
    resume point an error names). The call is cancelled however the relay ends: a client
    that goes away cancels it, and for a StartSession that stops the session."""
    resume = next_seq
    try:
        if first is not None:
            yield sse_event(first)
            resume = first.seq + 1
            if (outcome := outcome_of(first)) is not None:
                yield end_event(session_id, outcome)
                return
        async for response in responses(call):
            event = response.event
            yield sse_event(event)
            resume = event.seq + 1
            if (outcome := outcome_of(event)) is not None:
                yield end_event(session_id, outcome)
                return
        yield end_event(session_id, None)  # the stream ended without a terminal state: nothing more to send
    except grpc.aio.AioRpcError as exc:
        error = upstream.error(exc)
        log.info("gateway.stream_failed", session_id=session_id, code=error.code, resume_from_seq=resume)
        yield error_event(error, resume)
    except Exception as exc:  # a bug of ours: the stream ends with an error event, the traceback is logged
        yield internal_event(exc, session_id)
    except BaseException:  # the client left (cancellation) or the gateway is stopping
        log.info("gateway.client_left", session_id=session_id, resume_from_seq=resume)
        raise
    finally:
        call.cancel()
