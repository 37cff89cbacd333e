"""One error base for the runtime's deliberate errors.

Each subclass names whose fault it is. Which gRPC status each ends a call with is said in
one table, `dispatcher/core/status.py`, and applied at one boundary per servicer
(`dispatcher/boundary.py`); unexpected exceptions become INTERNAL with a reference id for
the peer and the traceback in the log. No grpc import here: the sans-IO modules raise these.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "AgentFailure",
    "AgentRuntimeError",
    "AtCapacity",
    "BadRequest",
    "FellBehind",
    "NoFreeCommander",
    "NotFound",
    "OutOfRange",
    "ProtocolViolation",
    "ResumeRefused",
    "SessionConflict",
    "SessionEnded",
    "ShuttingDown",
    "StoreUnavailable",
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


class ProtocolViolation(AgentRuntimeError):
    """The peer broke the contract (seq regression, wrong session id...): the peer's fault.
    `code` is the machine-readable name recorded in the outcome (e.g. SEQ_REGRESSION)."""

    def __init__(self, message: str, code: str = "PROTOCOL_VIOLATION") -> None:
        super().__init__(message)
        self.code = code


class SessionConflict(AgentRuntimeError):
    """The session id asked for is held by another open stream: the caller's fault."""


class SessionEnded(AgentRuntimeError):
    """The session asked for (a resume) has already ended: nothing to resume."""


class ResumeRefused(AgentRuntimeError):
    """The session cannot be resumed as asked (not resumable, or the packets it needs are gone)."""


class ShuttingDown(AgentRuntimeError):
    """The dispatcher is draining and takes no new sessions: retry elsewhere."""


class StoreUnavailable(AgentRuntimeError):
    """The replicas' shared store (Redis) does not answer: no new session until it does."""


class NoFreeCommander(AgentRuntimeError):
    """No pool commander became free in time (or too many callers already wait): retry later."""


class NotFound(AgentRuntimeError):
    """The control plane was asked about a session this dispatcher does not know."""


class AccessDenied(AgentRuntimeError):
    """The caller's role may not touch this session (a backend and another's session)."""


class BadRequest(AgentRuntimeError):
    """A control-plane request is malformed (empty reason, input that is not JSON...)."""


class OutOfRange(AgentRuntimeError):
    """A watcher asked for events the journal no longer (or does not yet) hold."""


class FellBehind(AgentRuntimeError):
    """A watcher read slower than the session produced and lost its place in the journal."""


class AtCapacity(AgentRuntimeError):
    """The dispatcher serves its configured maximum of sessions: retry later or elsewhere."""


class ToolCallError(AgentRuntimeError):
    """Commander side: a tool call came back with a structured error (the stream goes on)."""

    def __init__(self, tool_name: str, call_id: str, code: str, message: str):
        super().__init__(f"tool {tool_name!r} (call {call_id}) failed with {code}: {message}")
        self.tool_name = tool_name
        self.call_id = call_id
        self.code = code
        self.message = message


class AgentFailure(AgentRuntimeError):
    """Commander side: the agent failed for a reason with a name (the model server refused,
    timed out, sent garbage...). Raised out of an agent, it ends the session FAILED and the
    dispatcher is told `code` (ErrorSignal.code, e.g. MODEL_UNAUTHORIZED) and `message`."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
