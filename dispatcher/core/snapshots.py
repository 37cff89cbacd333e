"""Dispatcher-side values as control-plane messages (SessionOutcome, StateChange, SessionInfo)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.core.actions import SessionOutcome
from shared import wire
from shared.model import SessionState

if TYPE_CHECKING:  # the session module builds its journal events with this one
    from dispatcher.core.session import Session

__all__ = ["outcome_to_wire", "session_info", "state_change"]


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


def session_info(
    machine: Session,
    *,
    commander: str,
    peer: str,
    started_by: str,
    packets_out: dict[str, int],
    outcome: SessionOutcome | None,
) -> wire.ctl.SessionInfo:
    """A session as the control plane shows it (SessionInfo in control.proto); `outcome` once
    it is decided."""
    hello = machine.hello
    journal = machine.journal
    info = wire.ctl.SessionInfo(
        session_id=machine.session_id,
        state=wire.session_state_to_wire(machine.state),  # type: ignore[arg-type]  # enums are ints
        commander=commander,
        commander_peer=peer,
        started_by=started_by,
        dispatcher_id=machine.dispatcher_hop,
        started_at_ms=machine.started_at_ms,
        last_activity_ms=machine.last_activity_ms,
        packets_in=machine.packets_in,
        packets_out=packets_out,
        tool_calls_running=len(machine.tools.started),
        tool_calls_done=machine.tools.done_count,
        packets_dropped=machine.dropped_packets,
        first_event_seq=journal.first_seq if journal.last_seq else 0,
        last_event_seq=journal.last_seq,
        agent_name=hello.agent_name if hello is not None else "",
        agent_version=hello.agent_version if hello is not None else "",
        resumes=machine.resumes,
        detached_at_ms=machine.detached_at_ms,
    )
    if machine.usage is not None:
        info.usage.CopyFrom(machine.usage)
    if outcome is not None:
        info.outcome.CopyFrom(outcome_to_wire(outcome))
    return info
