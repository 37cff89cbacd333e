"""Dispatcher-side values as control-plane messages (SessionOutcome, StateChange)."""

from __future__ import annotations

from dispatcher.core.actions import SessionOutcome
from shared import wire
from shared.model import SessionState

__all__ = ["outcome_to_wire", "state_change"]


def outcome_to_wire(outcome: SessionOutcome) -> wire.ctl.SessionOutcome:
    message = wire.ctl.SessionOutcome(
        state=wire.session_state_to_wire(outcome.state),  # type: ignore[arg-type]  # enums are ints on the wire
        reason=outcome.reason,
        ended_by=outcome.ended_by,
        status=outcome.status,
        error_code=outcome.error_code,
        stop_confirmed=outcome.stop_confirmed,
        stop_to_confirm_us=round(outcome.stop_to_confirm_ms * 1000) if outcome.stop_to_confirm_ms else 0,
        ended_at_ms=outcome.ended_at_ms,
    )
    if outcome.stop is not None:
        message.stop.CopyFrom(wire.stop_to_wire(outcome.stop))
    return message


def state_change(state: SessionState, reason: str = "", outcome: SessionOutcome | None = None) -> wire.ctl.StateChange:
    message = wire.ctl.StateChange(
        state=wire.session_state_to_wire(state),  # type: ignore[arg-type]
        reason=reason,
    )
    if outcome is not None:
        message.outcome.CopyFrom(outcome_to_wire(outcome))
    return message
