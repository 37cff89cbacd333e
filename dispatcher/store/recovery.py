"""What a restart does with what the store kept: ended sessions back into the registry (their
outcome listable, their journal watchable), and sessions that were live when the process died
recorded as ended by that crash.

`end_crashed_sessions` is the one place that decides the fate of a live record; a dispatcher
that can resume sessions holds them DETACHED for the resume window instead and ends them so
only when nobody comes back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from dispatcher.core.actions import SessionOutcome
from dispatcher.core.journal import Journal
from dispatcher.core.snapshots import outcome_to_wire, state_change
from dispatcher.sessions.registry import EndedSession
from dispatcher.store.base import LiveRecord, SessionStore, StoredEvent, StoredSession
from shared import wire
from shared.model import SessionState

__all__ = [
    "CRASHED_REASON",
    "RESTARTED_REASON",
    "crashed_outcome",
    "end_crashed_sessions",
    "ended_session",
    "outcome_from_wire",
]

# Why an adopted session (held DETACHED after a restart) lost its stream; "not resumed" follows.
RESTARTED_REASON = "the dispatcher restarted (a crash or kill) while the session was live"
CRASHED_REASON = "the dispatcher stopped (crash or kill) while the session was live; not resumed"


def outcome_from_wire(message: wire.ctl.SessionOutcome) -> SessionOutcome:
    """The inverse of `outcome_to_wire`, for outcomes read back from a store."""
    return SessionOutcome(
        state=wire.session_state_from_wire(message.state) or SessionState.CANCELLED,
        reason=message.reason,
        ended_by=message.ended_by,
        status=message.status or "OK",
        error_code=message.error_code,
        stop=wire.stop_from_wire(message.stop) if message.HasField("stop") else None,
        stop_confirmed=message.stop_confirmed,
        stop_to_confirm_ms=message.stop_to_confirm_us / 1000 if message.stop_to_confirm_us else None,
        ended_at_ms=message.ended_at_ms,
    )


def _journal(session_id: str, events: Sequence[StoredEvent], *, max_events: int, max_bytes: int) -> Journal:
    return Journal.restore(
        session_id, ((event.seq, event.packed) for event in events), max_events=max_events, max_bytes=max_bytes
    )


def ended_session(stored: StoredSession, *, max_events: int, max_bytes: int) -> EndedSession:
    """A stored ended session as the registry keeps it; its journal closed (watchers replay it
    and end), or None when the store kept no events for it."""
    info = wire.ctl.SessionInfo.FromString(stored.info)
    journal = None
    if stored.events:
        journal = _journal(stored.session_id, stored.events, max_events=max_events, max_bytes=max_bytes)
        journal.close()
    return EndedSession(
        session_id=stored.session_id,
        started_at_ms=info.started_at_ms,
        outcome=outcome_from_wire(info.outcome),
        packets_in=dict(info.packets_in),
        dropped_packets=info.packets_dropped,
        started_by=info.started_by,
        info=info,
        journal=journal,
    )


def crashed_outcome(record: LiveRecord, *, hop: str, now_ms: int | None = None) -> bytes:
    """The SessionInfo (serialized, as `SessionStore.session_ended` takes it) of a session that
    was live when its dispatcher died: its last known info (the checkpoint's, else the open's),
    ended CANCELLED by this dispatcher (`hop`, "dispatcher:<instance>") with `CRASHED_REASON`."""
    outcome = SessionOutcome(
        SessionState.CANCELLED,
        CRASHED_REASON,
        hop,
        status="CANCELLED",
        ended_at_ms=now_ms if now_ms is not None else time.time_ns() // 1_000_000,
    )
    info = wire.ctl.SessionInfo.FromString(record.checkpoint_info or record.opened)
    info.session_id = record.session_id
    info.state = wire.session_state_to_wire(outcome.state)  # type: ignore[assignment]  # enums are ints
    info.tool_calls_running = 0
    if record.events:
        info.first_event_seq = record.events[0].seq
        info.last_event_seq = record.events[-1].seq
    info.outcome.CopyFrom(outcome_to_wire(outcome))
    return info.SerializeToString()


def end_crashed_sessions(
    store: SessionStore, live: Sequence[LiveRecord], *, hop: str, max_events: int, max_bytes: int
) -> list[EndedSession]:
    """Record every live record as ended by the crash (`crashed_outcome`), through the store,
    with a final state_change event in its journal; the ended sessions for the registry."""
    ended = []
    for record in live:
        journal = _journal(record.session_id, record.events, max_events=max_events, max_bytes=max_bytes)
        store.session_opened(record.session_id, opened=record.opened, hello=record.hello, journal=journal)
        info = wire.ctl.SessionInfo.FromString(crashed_outcome(record, hop=hop))
        outcome = outcome_from_wire(info.outcome)
        # The journal ends like any session's: with the terminal state change.
        journal.append("state_change", state_change(outcome.state, outcome.reason, outcome))
        info.first_event_seq = journal.first_seq
        info.last_event_seq = journal.last_seq
        store.session_ended(record.session_id, info.SerializeToString())
        journal.close()
        ended.append(
            EndedSession(
                session_id=record.session_id,
                started_at_ms=info.started_at_ms,
                outcome=outcome,
                packets_in=dict(info.packets_in),
                dropped_packets=info.packets_dropped,
                started_by=info.started_by,
                info=info,
                journal=journal,
            )
        )
    return ended
