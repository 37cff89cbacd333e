"""The session store: what outlives a dispatcher process (outcomes, journals, the session
directory, tool results by call id), behind one interface with several implementations.

- `memory://` (`MemoryStore`): nothing outlives the process; tests and demos.
- `sqlite:///PATH` (`SqliteStore`): one node, an embedded SQLite database in WAL mode.
- `redis://HOST:PORT/DB` (replicas, later): the same interface on Redis.

The hot path never waits for the store and does no per-packet allocation for it: a session's
`Journal` marks itself *dirty* once (`Journal.sink`), and the store's committer reads the new
entries from every dirty journal in one batch (group commit). Acks cover only what is durable:
when the machine acks upstream seq N, the runner asks the store for a *checkpoint* instead of
sending the ack; once the store has committed everything journaled up to that point it calls
back (`on_durable`) and the ack goes out. A store that is not durable (memory) says so
(`durable = False`) and the runner acks at once, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dispatcher.core.journal import Journal

__all__ = ["LiveRecord", "Recovered", "SessionStore", "StoreOpenError", "StoredEvent", "StoredSession"]


class StoreOpenError(Exception):
    """`SessionStore.open` cannot open the store (an unwritable path, a file that is not a
    database, a newer schema, an unreachable server): the operator's to fix; `dispatcher serve`
    prints it as one line and exits 2."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One journal entry as stored: its seq in the session's journal and the packed entry
    (`Journal.packed(seq)`: header and serialized message), restored with `Journal.restore`."""

    seq: int
    packed: bytes


@dataclass(frozen=True, slots=True)
class StoredSession:
    """An ended session: its last SessionInfo (outcome included) and its journal."""

    session_id: str
    info: bytes  # control.SessionInfo, serialized
    events: Sequence[StoredEvent] = ()


@dataclass(frozen=True, slots=True)
class LiveRecord:
    """A session that was open when the process stopped (it never recorded an end)."""

    session_id: str
    opened: bytes  # control.SessionInfo at the open, serialized (commander, peer, started_by, hello's agent)
    hello: bytes  # the Hello it opened with, serialized (b"" for a seed-era stream)
    checkpoint_seq: int  # the last upstream seq made durable (0: none)
    checkpoint_info: bytes  # control.SessionInfo at that checkpoint (b"": none)
    events: Sequence[StoredEvent] = ()
    # call_id -> the DownstreamPacket (seq and tool_result set) that answered it, serialized
    tool_results: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Recovered:
    """What `SessionStore.open` found: ended sessions oldest first, and the live ones."""

    ended: Sequence[StoredSession] = ()
    live: Sequence[LiveRecord] = ()


class SessionStore(Protocol):
    """Where sessions are recorded. Every method but `open`, `flush` and `aclose` returns at
    once (writes are queued and committed in batches); none raises for a write that fails
    later — a failed commit is logged once and retried, and acks wait for it."""

    @property
    def durable(self) -> bool:
        """True when what is committed survives a crash (acks then wait for commits)."""
        ...

    @property
    def url(self) -> str:
        """How it was configured (`memory://`, `sqlite:///PATH`), without secrets."""
        ...

    async def open(self) -> Recovered:
        """Start (open the database, the committer task) and read what a previous process left."""
        ...

    def session_opened(self, session_id: str, *, opened: bytes, hello: bytes, journal: Journal) -> None:
        """A session was opened (or adopted after a restart): record it in the directory and
        follow its journal from `journal.first_seq` (or from where it was already stored)."""
        ...

    def checkpoint(self, session_id: str, upstream_seq: int, info: bytes) -> None:
        """Everything journaled so far covers upstream packets up to `upstream_seq`: once that
        is committed, call the `on_durable` callback with (session_id, upstream_seq)."""
        ...

    def tool_result(self, session_id: str, call_id: str, packet: bytes) -> None:
        """Call `call_id` was answered by this DownstreamPacket (serialized): a repeated call id
        gets it again, also after a restart."""
        ...

    def session_ended(self, session_id: str, info: bytes) -> None:
        """The session ended (`info` has its outcome): it moves from live to ended, its journal is
        committed to its last event, and the oldest ended sessions beyond the retention go."""
        ...

    def on_durable(self, callback: Callable[[str, int], None]) -> None:
        """Set the callback for committed checkpoints: (session_id, upstream_seq), called in the
        event loop's thread after each commit."""
        ...

    async def flush(self) -> None:
        """Wait until everything queued so far is committed (tests, shutdown)."""
        ...

    async def aclose(self) -> None:
        """Commit what is queued (bounded) and close."""
        ...
