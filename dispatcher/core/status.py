"""The one table of which gRPC status ends a call: for each deliberate error, and for each stop.

Names of `grpc.StatusCode` members, not the members: the session machine records the status
in its outcome and has no grpc import. The boundary of each servicer (`dispatcher/boundary.py`)
is the only place that turns a name into a status on the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from shared.errors import (
    AccessDenied,
    AgentRuntimeError,
    AtCapacity,
    BadRequest,
    FellBehind,
    NoFreeCommander,
    NotFound,
    OutOfRange,
    ProtocolViolation,
    ResumeRefused,
    SessionConflict,
    SessionEnded,
    ShuttingDown,
    StoreUnavailable,
)
from shared.jsontext import JsonTextError
from shared.model import StopCode

__all__ = ["ERROR_STATUS", "INTERNAL", "STOP_STATUS", "status_of", "stop_status"]

INTERNAL = "INTERNAL"

ERROR_STATUS: Mapping[type[Exception], str] = MappingProxyType(
    {
        ProtocolViolation: "INVALID_ARGUMENT",
        BadRequest: "INVALID_ARGUMENT",
        JsonTextError: "INVALID_ARGUMENT",
        SessionConflict: "ALREADY_EXISTS",
        ShuttingDown: "UNAVAILABLE",
        NoFreeCommander: "UNAVAILABLE",
        StoreUnavailable: "UNAVAILABLE",
        NotFound: "NOT_FOUND",
        SessionEnded: "FAILED_PRECONDITION",
        ResumeRefused: "FAILED_PRECONDITION",
        AccessDenied: "PERMISSION_DENIED",
        OutOfRange: "OUT_OF_RANGE",
        FellBehind: "RESOURCE_EXHAUSTED",
        AtCapacity: "RESOURCE_EXHAUSTED",
    }
)

# How a stopped stream ends, by stop code. Generic clients and retry policies read the status;
# ours read the `x-stop-*` trailers. SHUTDOWN is UNAVAILABLE on purpose: the same request may
# succeed on another dispatcher.
STOP_STATUS: Mapping[StopCode, str] = MappingProxyType(
    {
        StopCode.UNSPECIFIED: "ABORTED",
        StopCode.USER_CANCEL: "CANCELLED",
        StopCode.POLICY_VIOLATION: "PERMISSION_DENIED",
        StopCode.BUDGET_EXCEEDED: "RESOURCE_EXHAUSTED",
        StopCode.OPERATOR: "ABORTED",
        StopCode.SHUTDOWN: "UNAVAILABLE",
        StopCode.TIMEOUT: "DEADLINE_EXCEEDED",
        StopCode.IDLE_TIMEOUT: "DEADLINE_EXCEEDED",
    }
)


def status_of(error: BaseException) -> str | None:
    """The status a deliberate error ends its call with; None for anything else (a bug:
    the boundary makes it INTERNAL with a reference). Subclasses inherit their base's row."""
    for kind in type(error).__mro__:
        status = ERROR_STATUS.get(kind)
        if status is not None:
            return status
        if kind is AgentRuntimeError:
            return INTERNAL
    return None


def stop_status(code: StopCode) -> str:
    return STOP_STATUS[code]
