"""A session started through the control plane belongs to its caller's call: the caller's
deadline bounds it, and the call ending first stops it."""

from __future__ import annotations

from typing import Any

import grpc
import structlog

from dispatcher.auth import Principal
from dispatcher.sessions.registry import SessionHandle
from shared.model import StopCode, StopInfo

__all__ = ["CallerTie", "caller_deadline_s"]

log = structlog.get_logger("dispatcher.control")

Context = grpc.aio.ServicerContext[Any, Any]


class CallerTie:
    """Ties a started session to its caller's call: when the call ends before the session
    (cancelled, deadline passed, connection lost), the session is stopped, the caller first
    in the stop's path."""

    def __init__(
        self, session: SessionHandle, principal: Principal, context: Context, path: tuple[str, ...] = ()
    ) -> None:
        self._session = session
        self._principal = principal
        self._context = context
        self._path = path or (principal.hop,)  # `caller_path`, checked before the session was started
        self._released = False

    def release(self) -> None:
        """We end the call ourselves and the session goes on (the caller fell behind)."""
        self._released = True

    def on_call_done(self, _call: Any) -> None:
        if self._released or self._session.settled.is_set():
            return
        remaining = self._context.time_remaining()
        if remaining is not None and remaining <= 0:
            stop = StopInfo(StopCode.TIMEOUT, "the caller's deadline passed", path=self._path)
        else:
            stop = StopInfo(StopCode.USER_CANCEL, "the caller cancelled", path=self._path)
        log.info("session.caller_left", session_id=self._session.session_id, code=stop.code.name)
        self._session.request_stop(stop)


def caller_deadline_s(context: Context, timeout_ms: int) -> float | None:
    """Seconds until the session must end: the call's deadline or `timeout_ms`, whichever is sooner."""
    candidates = [timeout_ms / 1000] if timeout_ms else []
    remaining = context.time_remaining()
    if remaining is not None:
        candidates.append(max(0.0, remaining))
    return min(candidates) if candidates else None
