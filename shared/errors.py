"""One error base, one status table.

Each subclass names whose fault it is. Only the dispatcher's servicer turns these into
gRPC statuses (`status_for`); unexpected exceptions become INTERNAL with a generic
message to the peer and the traceback in the log.
"""

from __future__ import annotations

import grpc

__all__ = [
    "AccessDenied",
    "AgentRuntimeError",
    "AtCapacity",
    "BadRequest",
    "FellBehind",
    "NoFreeCommander",
    "NotFound",
    "OutOfRange",
    "ProtocolViolation",
    "SessionConflict",
    "ShuttingDown",
    "ToolCallError",
    "describe_exception",
]

_MAX_DETAIL_CHARS = 1000


def describe_exception(exc: BaseException, max_chars: int = _MAX_DETAIL_CHARS) -> str:
    """`Type: message`, bounded: it goes on the wire or into a log line, and may be huge.
    A broken `__str__` must not turn the failure being described into a second one."""
    kind = type(exc).__name__
    try:
        detail = str(exc)
    except Exception:
        detail = ""
    if len(detail) > max_chars:
        detail = detail[:max_chars] + "..."
    return f"{kind}: {detail}" if detail else kind


class AgentRuntimeError(Exception):
    """Base of every error this runtime raises on purpose."""

    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class ProtocolViolation(AgentRuntimeError):
    """The peer broke the contract (seq regression, wrong session id...): the peer's fault."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class SessionConflict(AgentRuntimeError):
    """The session id asked for is held by another open stream: the caller's fault."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class ShuttingDown(AgentRuntimeError):
    """The dispatcher is draining and takes no new sessions: retry elsewhere."""

    status_code = grpc.StatusCode.UNAVAILABLE


class NoFreeCommander(AgentRuntimeError):
    """No pool commander became free in time (or too many callers already wait): retry later."""

    status_code = grpc.StatusCode.UNAVAILABLE


class NotFound(AgentRuntimeError):
    """The control plane was asked about a session this dispatcher does not know."""

    status_code = grpc.StatusCode.NOT_FOUND


class AccessDenied(AgentRuntimeError):
    """The caller's role may not touch this session (a backend and another's session)."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class BadRequest(AgentRuntimeError):
    """A control-plane request is malformed (empty reason, input that is not JSON...)."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class OutOfRange(AgentRuntimeError):
    """A watcher asked for events the journal no longer (or does not yet) hold."""

    status_code = grpc.StatusCode.OUT_OF_RANGE


class FellBehind(AgentRuntimeError):
    """A watcher read slower than the session produced and lost its place in the journal."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class AtCapacity(AgentRuntimeError):
    """The dispatcher serves its configured maximum of sessions: retry later or elsewhere."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ToolCallError(AgentRuntimeError):
    """Commander side: a tool call came back with a structured error (the stream goes on)."""

    def __init__(self, tool_name: str, call_id: str, code: str, message: str):
        super().__init__(f"tool {tool_name!r} (call {call_id}) failed with {code}: {message}")
        self.tool_name = tool_name
        self.call_id = call_id
        self.code = code
        self.message = message
