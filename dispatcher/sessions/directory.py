"""What the control plane may know of sessions: find, list, start on the pool.

A `Protocol` of its own module, so that the control plane depends on this and on
`SessionHandle` only, never on the manager, the runner or the stream servicer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from dispatcher.core.journal import Journal
from dispatcher.sessions.registry import EndedSession, SessionHandle
from dispatcher.tools.catalog import ToolCatalog
from shared import wire

__all__ = ["SessionDirectory", "SessionHandle"]


class SessionDirectory(Protocol):
    """What the control plane needs: find and list sessions, start one on the pool."""

    @property
    def is_draining(self) -> bool: ...

    @property
    def free_commanders(self) -> int: ...

    @property
    def catalog(self) -> ToolCatalog: ...

    def get_open(self, session_id: str) -> SessionHandle | None: ...

    def get_ended(self, session_id: str) -> EndedSession | None: ...

    def ended_journal(self, session_id: str) -> Journal | None: ...

    def open_sessions(self) -> Iterator[SessionHandle]: ...

    def ended_sessions(self) -> Iterator[EndedSession]: ...

    async def start_on_pool(
        self, assignment: wire.pb.Assignment, wait_s: float, *, tools: frozenset[str] | None = None
    ) -> SessionHandle: ...
