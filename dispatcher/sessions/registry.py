"""Which sessions are open, and how the recent ended ones ended (bounded)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from dispatcher.core.actions import SessionOutcome
from dispatcher.core.journal import Journal
from dispatcher.sessions.latch import Latch
from shared import wire
from shared.errors import AtCapacity, SessionConflict
from shared.model import StopInfo

__all__ = ["EndedSession", "SessionHandle", "SessionRegistry"]


class SessionHandle(Protocol):
    """What the registry and the control plane need from a running session."""

    session_id: str
    started_by: str
    settled: Latch
    done: Latch
    outcome: SessionOutcome | None

    def request_stop(self, stop: StopInfo) -> None: ...

    def set_caller_deadline(self, deadline: float, caller_hop: str) -> None: ...

    def info(self) -> wire.ctl.SessionInfo: ...

    def decide_tool_call(
        self, call_id: str, *, approve: bool, reason: str, decided_by: str
    ) -> wire.ctl.DecideToolCallResponse: ...

    def running_tool_calls(self) -> list[wire.ctl.RunningToolCall]: ...

    @property
    def journal(self) -> Journal: ...

    @property
    def pending_stop(self) -> StopInfo | None: ...


@dataclass(frozen=True, slots=True)
class EndedSession:
    session_id: str
    started_at_ms: int
    outcome: SessionOutcome
    packets_in: dict[str, int]
    dropped_packets: int
    started_by: str = ""
    info: wire.ctl.SessionInfo | None = None
    journal: Journal | None = None


class SessionRegistry:
    """Open sessions by id; ended ones kept up to `ended_kept` (their journals up to
    `journals_kept`), oldest dropped first."""

    def __init__(self, *, max_open: int, ended_kept: int, journals_kept: int = 0) -> None:
        self._max_open = max_open
        self._ended_kept = ended_kept
        self._journals_kept = journals_kept
        self._open: dict[str, SessionHandle] = {}
        self._ended: OrderedDict[str, EndedSession] = OrderedDict()
        self._journals: OrderedDict[str, Journal] = OrderedDict()

    def claim(self, session_id: str, handle: SessionHandle) -> None:
        """Register an opening session; its id must not be held by another open stream."""
        if session_id in self._open:
            raise SessionConflict(f"session id {session_id!r} is already in use by another open stream")
        if self._max_open and len(self._open) >= self._max_open:
            raise AtCapacity(f"dispatcher at capacity ({self._max_open} open sessions); retry later")
        self._open[session_id] = handle
        self._ended.pop(session_id, None)  # a reused id starts a new history
        self._journals.pop(session_id, None)

    def release(self, ended: EndedSession) -> None:
        self._open.pop(ended.session_id, None)
        self._ended[ended.session_id] = ended
        self._ended.move_to_end(ended.session_id)
        while len(self._ended) > self._ended_kept:
            self._ended.popitem(last=False)
        if ended.journal is not None and self._journals_kept:
            self._journals[ended.session_id] = ended.journal
            self._journals.move_to_end(ended.session_id)
        while len(self._journals) > self._journals_kept or (self._journals and not self._ended_kept):
            self._journals.popitem(last=False)

    def restore(self, ended: Iterable[EndedSession]) -> None:
        """Ended sessions a store kept from an earlier process, oldest first: listed and, with
        their journals, watchable as if they had ended here (the same retention applies)."""
        for session in ended:
            if session.session_id not in self._open:
                self.release(session)

    def get_open(self, session_id: str) -> SessionHandle | None:
        return self._open.get(session_id)

    def get_ended(self, session_id: str) -> EndedSession | None:
        return self._ended.get(session_id)

    def ended_journal(self, session_id: str) -> Journal | None:
        """The journal of an ended session, while it is among the newest `journals_kept`."""
        return self._journals.get(session_id)

    def open_sessions(self) -> Iterator[SessionHandle]:
        return iter(list(self._open.values()))

    def ended_sessions(self) -> Iterator[EndedSession]:
        return iter(list(self._ended.values()))

    @property
    def open_count(self) -> int:
        return len(self._open)
