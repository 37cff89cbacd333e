"""How a session's outcome is worded, for each way it can end (sans-IO, pure functions)."""

from __future__ import annotations

from dispatcher.core.actions import SessionOutcome
from dispatcher.core.status import stop_status
from shared import wire
from shared.model import SessionState, StopCode, StopInfo

__all__ = [
    "CONFIRMED",
    "FINISHED",
    "GRACE_EXPIRED",
    "HALF_CLOSED_UNCONFIRMED",
    "HALF_CLOSED_UNFINISHED",
    "closed_packet_code",
    "commander_error_outcome",
    "stop_outcome",
]

# Outcome reasons and how a stop ended, in words an operator reads (`dispatcherctl show`, the
# `session.ended` log line, metrics): never the name of a proto field.
FINISHED = "finished"  # the commander's last content chunk said so (is_finish)
HALF_CLOSED_UNFINISHED = "commander half-closed without finishing"
CONFIRMED = "confirmed"
GRACE_EXPIRED = "grace period expired without a stop confirmation"
HALF_CLOSED_UNCONFIRMED = "commander half-closed without confirming the stop"


def stop_outcome(
    stop: StopInfo,
    *,
    how: str,
    detail: str,
    ended_by_default: str,
    stop_to_confirm_ms: float | None,
    halt_us: int = 0,
) -> SessionOutcome:
    """A stop honoured (`stop_to_confirm_ms` set: confirmed) or not. `detail` is what the stop's
    origin tells operators only (a policy's pattern): in the outcome, never in the StopSignal."""
    state = SessionState.EXPIRED if stop.code is StopCode.IDLE_TIMEOUT else SessionState.STOPPED
    shown = f" [{detail}]" if detail else ""
    return SessionOutcome(
        state,
        f"{stop.reason}{shown} ({how})",
        stop.path[0] if stop.path else ended_by_default,
        status=stop_status(stop.code),
        error_code=stop.code.name,
        stop=stop,
        stop_confirmed=stop_to_confirm_ms is not None,
        stop_to_confirm_ms=stop_to_confirm_ms,
        halt_us=halt_us,
    )


def commander_error_outcome(error: wire.pb.ErrorSignal) -> SessionOutcome:
    """The commander ended the session with an ErrorSignal: its own cancel, or a failure."""
    code = error.code or "COMMANDER_ERROR"
    if code == "CANCELLED":  # the commander's own cancel (its user, its caller), not a failure
        reason = error.message or "cancelled by the commander"
        return SessionOutcome(SessionState.CANCELLED, reason, "commander", "CANCELLED", code)
    return SessionOutcome(
        SessionState.FAILED, f"commander reported {code}: {error.message}", "commander", error_code=code
    )


def closed_packet_code(state: SessionState) -> str:
    """The ErrorSignal code for a packet that arrives after the session ended in `state`."""
    if state in (SessionState.STOPPED, SessionState.EXPIRED):
        return "PACKET_AFTER_STOP"
    if state is SessionState.FINISHED:
        return "PACKET_AFTER_FINISH"
    return "PACKET_AFTER_END"
