"""ListSessions' filters and page tokens, and the answers built from a session's info."""

from __future__ import annotations

import base64
from collections.abc import Callable

from shared import wire
from shared.errors import BadRequest

__all__ = ["already_ended", "decode_page_token", "encode_page_token", "session_filter"]


def session_filter(request: wire.ctl.ListSessionsRequest, now: int) -> Callable[[wire.ctl.SessionInfo], bool]:
    states = set(request.states)

    def wanted(info: wire.ctl.SessionInfo) -> bool:
        age_s = (now - info.started_at_ms) / 1000
        return (
            (not states or info.state in states)
            and (not request.commander or info.commander == request.commander)
            and (not request.min_age_s or age_s >= request.min_age_s)
            and (not request.max_age_s or age_s <= request.max_age_s)
        )

    return wanted


def encode_page_token(info: wire.ctl.SessionInfo) -> str:
    return base64.urlsafe_b64encode(f"{info.started_at_ms}:{info.session_id}".encode()).decode()


def decode_page_token(token: str) -> tuple[int, str] | None:
    if not token:
        return None
    try:
        started, session_id = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        return int(started), session_id
    except ValueError:
        raise BadRequest("page_token is not one this dispatcher issued; start again with an empty token") from None


def already_ended(session_id: str, info: wire.ctl.SessionInfo) -> wire.ctl.StopSessionResponse:
    response = wire.ctl.StopSessionResponse(session_id=session_id, result=wire.ctl.STOP_RESULT_ALREADY_ENDED)
    if info.HasField("outcome"):
        response.outcome.CopyFrom(info.outcome)
        if info.outcome.HasField("stop"):
            response.stop.CopyFrom(info.outcome.stop)
    return response
