"""What the commander's session core asks its shell to do, and how a session ended.

Plain frozen values: `commander.core.CommanderSession` returns them, `run_session` carries
them out and returns the SessionResult.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from commander.events import SessionEvent
from shared import wire
from shared.model import SessionState, StopInfo

__all__ = [
    "Action",
    "Assigned",
    "CancelAgent",
    "CancelCall",
    "CloseUpstream",
    "Deliver",
    "DiscardQueued",
    "Effect",
    "Notify",
    "PendingAtStop",
    "Report",
    "Send",
    "SessionResult",
    "UsageTotals",
]


# -- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Queue `packet` upstream (the writer stamps seq, session id and, on a StopConfirm, last_seq)."""

    packet: wire.pb.UpstreamPacket


@dataclass(frozen=True, slots=True)
class Notify:
    """Hand `event` to the session's observer."""

    event: SessionEvent


@dataclass(frozen=True, slots=True)
class Deliver:
    """Wake the agent's call `call_id`: `result` is its answer."""

    call_id: str
    result: wire.pb.ToolCallResult


@dataclass(frozen=True, slots=True)
class CancelAgent:
    """Cancel the agent's task: whatever it awaits raises cancellation at once. With `stop`,
    the agent is also told (AgentContext.stopped)."""

    reason: str
    stop: StopInfo | None = None


@dataclass(frozen=True, slots=True)
class Assigned:
    """A pool stream was handed a session: stamp its id on every packet from now on."""

    assignment: wire.pb.Assignment


@dataclass(frozen=True, slots=True)
class CancelCall:
    """Reset the RPC (RST_STREAM): the stream cannot end in-band."""

    reason: str


@dataclass(frozen=True, slots=True)
class Report:
    """Something the dispatcher did that is worth one warning line (the session goes on)."""

    event: str
    code: str
    message: str
    seq: int = 0


@dataclass(frozen=True, slots=True)
class DiscardQueued:
    """Drop every packet queued but not written, then report how many: `on_queue_discarded`."""


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    """Nothing more to send: half-close once the queue has drained."""


Effect = Notify | Deliver | CancelAgent | Assigned | CancelCall | Report
Action = Effect | Send | DiscardQueued | CloseUpstream

# -- the outcome ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingAtStop:
    call_id: str
    tool_name: str
    fate: str  # ABANDONED or RESULT_IGNORED


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """The Usage the agent reported (one per model request), summed."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    model_requests: int = 0
    model: str = ""
    estimated: bool = False

    def plus(self, usage: wire.pb.Usage) -> UsageTotals:
        return UsageTotals(
            prompt_tokens=self.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self.completion_tokens + usage.completion_tokens,
            reasoning_tokens=self.reasoning_tokens + usage.reasoning_tokens,
            model_requests=self.model_requests + 1,
            model=usage.model or self.model,
            estimated=self.estimated or usage.estimated,
        )


@dataclass(frozen=True, slots=True)
class SessionResult:
    """How a session ended, from the commander's side."""

    session_id: str
    state: SessionState
    reason: str
    status_code: str = "OK"
    status_details: str = ""
    compat_mode: bool = False
    dispatcher_id: str = ""
    stop: StopInfo | None = None
    stop_to_halt_ms: float | None = None  # stop received -> agent unwound
    # stop received -> the model request it interrupted closed (None: no request was open)
    stop_to_abort_ms: float | None = None
    stop_to_confirm_ms: float | None = None  # dispatcher-measured: stop sent -> confirm received
    pending_at_stop: tuple[PendingAtStop, ...] = ()
    discarded_packets: int = 0
    packets_sent: int = 0
    last_acked_seq: int = 0
    tool_calls: int = 0
    duration_s: float = 0.0  # call opened -> stream ended
    errors: tuple[str, ...] = ()  # non-fatal ErrorSignals the dispatcher sent
    trailers: dict[str, str] = field(default_factory=dict)
    assigned: wire.pb.Assignment | None = None  # pool streams: the session handed to us
    error_code: str = ""  # the agent's failure: AGENT_ERROR, or its AgentFailure's code (MODEL_...)
    usage: UsageTotals = field(default_factory=UsageTotals)
    resumes: int = 0  # times the session was resumed on a new stream after a break

    @property
    def ok(self) -> bool:
        return self.state is SessionState.FINISHED
