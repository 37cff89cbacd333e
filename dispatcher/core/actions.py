"""What the session state machine asks its runner to do, and how a session ended.

Plain frozen values: the state machine returns them, the runner carries them out, the
registry keeps the outcome.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from shared import wire
from shared.model import SessionState, StopInfo, now_ms

__all__ = ["Action", "CancelTools", "Delivery", "EndStream", "Report", "Send", "SessionOutcome", "StartTool"]


class Delivery(enum.Enum):
    """How a downstream packet is queued: decided here, once, and honoured by the outbox,
    whose one reader is the only writer of the stream."""

    IN_ORDER = "in_order"
    """Tool results, error signals, the Welcome: first in, first out, bounded (the sender
    waits for room: that is the backpressure). Dropped, and reported as dropped, when a stop
    goes out before them."""
    ACK = "ack"
    """Cumulative progress: never waits; a newer ack replaces one still queued."""
    URGENT = "urgent"
    """The stop: ahead of everything queued, whether the outbox is full or not. After it only
    acks are written."""


@dataclass(frozen=True, slots=True)
class Send:
    packet: wire.pb.DownstreamPacket
    delivery: Delivery = Delivery.IN_ORDER


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
