"""What a session reports while it runs, for a CLI, a UI or a test to observe.

Observers are called inline from the session's tasks: they must be quick and must not
block (render, append, set an event).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.model import StopInfo

__all__ = [
    "ContentEmitted",
    "HandshakeDone",
    "Observer",
    "Resumed",
    "SessionEvent",
    "StopReceived",
    "ThoughtEmitted",
    "ToolCallSent",
    "ToolResultReceived",
    "UsageReported",
]


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    session_id: str
    dispatcher_id: str
    compat_mode: bool


@dataclass(frozen=True, slots=True)
class Resumed:
    """The stream broke and the session was resumed on a new one."""

    session_id: str
    dispatcher_holds_seq: int  # the last upstream seq the dispatcher had; the rest was re-sent
    resumes: int


@dataclass(frozen=True, slots=True)
class ThoughtEmitted:
    step: str
    delta: str


@dataclass(frozen=True, slots=True)
class ContentEmitted:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallSent:
    call_id: str
    tool_name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class ToolResultReceived:
    call_id: str
    tool_name: str
    result_json: str
    error_code: str  # "" when the call succeeded
    error_message: str
    execution_time_us: int


@dataclass(frozen=True, slots=True)
class StopReceived:
    stop: StopInfo


@dataclass(frozen=True, slots=True)
class UsageReported:
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    model: str
    estimated: bool


SessionEvent = (
    HandshakeDone
    | Resumed
    | ThoughtEmitted
    | ContentEmitted
    | ToolCallSent
    | ToolResultReceived
    | StopReceived
    | UsageReported
)


class Observer:
    """Receives session events; the default ignores them all."""

    def __call__(self, event: SessionEvent) -> None:
        return None
