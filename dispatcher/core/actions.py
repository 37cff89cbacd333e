"""What the session state machine asks its runner to do, and how a session ended.

Plain frozen values: the state machine returns them, the runner carries them out, the
registry keeps the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared import wire
from shared.model import SessionState, StopInfo, now_ms

__all__ = ["Action", "CancelTools", "EndStream", "Report", "Send", "SessionOutcome", "StartTool"]


@dataclass(frozen=True, slots=True)
class Send:
    packet: wire.pb.DownstreamPacket


@dataclass(frozen=True, slots=True)
class StartTool:
    call_id: str
    tool_name: str
    arguments_json: str
    timeout_s: float | None


@dataclass(frozen=True, slots=True)
class CancelTools:
    """Cancel every running tool call of the session, recording `reason` on each."""

    reason: str


@dataclass(frozen=True, slots=True)
class Report:
    """A bad packet worth one warning line (emitted once per code per session)."""

    code: str
    message: str
    seq: int


@dataclass(frozen=True, slots=True)
class SessionOutcome:
    """How a session ended: exactly one per session, kept after the stream closes."""

    state: SessionState
    reason: str
    ended_by: str
    status: str = "OK"  # grpc.StatusCode name the stream ends with
    error_code: str = ""
    stop: StopInfo | None = None
    stop_confirmed: bool = False
    stop_to_confirm_ms: float | None = None
    halt_us: int = 0
    ended_at_ms: int = field(default_factory=now_ms)


@dataclass(frozen=True, slots=True)
class EndStream:
    outcome: SessionOutcome


Action = Send | StartTool | CancelTools | Report | EndStream
