"""The error boundary of the dispatcher's servicers: the one place an exception becomes a status.

Every handler of both services passes its exceptions through here (`guarded` wraps the
control plane's handlers; the ChatStream handler calls `refuse`, and a session's crash is
turned into its outcome by the runner with a reference from `new_reference`):

- a deliberate error (`AgentRuntimeError`, `JsonTextError`) ends the call with its row of
  the one status table (`dispatcher/core/status.py`) and its message, logged once as
  `control.refused` / `session.refused` with the session id;
- anything else is a bug of ours: INTERNAL "internal error (ref …)" to the peer, the
  traceback logged once with the same reference and the session id. A peer never reads
  `Unexpected <class …>`, which is what grpc would send for an escaped exception;
- grpc's own `AbortError` (an abort already sent) and cancellation pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
import structlog

from dispatcher.core.status import INTERNAL, status_of

__all__ = ["await_first_write", "guarded", "guarded_stream", "new_reference", "refuse", "status_code"]

log = structlog.get_logger("dispatcher.boundary")

Context = grpc.aio.ServicerContext[Any, Any]
_Self = TypeVar("_Self")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

# Aborting a streaming call while the client's first message is in flight can reach the client
# as INTERNAL instead of our status (grpc/grpc#36066): let that write land first, this long.
_FIRST_WRITE_WAIT_S = 0.5


def new_reference() -> str:
    """A short id that ties what a peer is told to the log line holding the traceback."""
    return uuid.uuid4().hex[:12]


def status_code(name: str) -> grpc.StatusCode:
    """A status table name (`"INVALID_ARGUMENT"`) as grpc's enum member."""
    return grpc.StatusCode[name]


async def refuse(
    context: Context, error: BaseException, *, session_id: str, method: str, event: str = "control.refused"
) -> NoReturn:
    """End the call for `error`: its table status, or INTERNAL with a reference for a bug."""
    status = status_of(error)
    if status is None or status == INTERNAL:
        reference = new_reference()
        log.error("rpc.internal_error", method=method, session_id=session_id, ref=reference, exc_info=error)
        message = f"internal error (ref {reference})"
        status = INTERNAL
    else:
        message = str(error)
        log.warning(event, method=method, session_id=session_id, code=status, detail=message)
    await context.abort(status_code(status), message)
    raise AssertionError("unreachable")  # abort() always raises


def _session_of(request: object) -> str:
    session_id = getattr(request, "session_id", "")
    return session_id if isinstance(session_id, str) else ""


def guarded(
    handler: Callable[[_Self, _Request, Context], Awaitable[_Response]],
) -> Callable[[_Self, _Request, Context], Awaitable[_Response]]:
    """The boundary around a unary-response handler."""

    @functools.wraps(handler)
    async def boundary(self: _Self, request: _Request, context: Context) -> _Response:
        try:
            return await handler(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:
            await refuse(context, error, session_id=_session_of(request), method=handler.__name__)

    return boundary


def guarded_stream(
    handler: Callable[[_Self, _Request, Context], AsyncIterator[_Response]],
) -> Callable[[_Self, _Request, Context], AsyncIterator[_Response]]:
    """The boundary around a server-streaming handler (an async generator)."""

    @functools.wraps(handler)
    async def boundary(self: _Self, request: _Request, context: Context) -> AsyncIterator[_Response]:
        try:
            async for response in handler(self, request, context):
                yield response
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:
            await refuse(context, error, session_id=_session_of(request), method=handler.__name__)

    return boundary


async def await_first_write(requests: AsyncIterator[Any]) -> None:
    """Before refusing a client-streaming call, let the client's first write land (bounded)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(anext(aiter(requests)), _FIRST_WRITE_WAIT_S)
