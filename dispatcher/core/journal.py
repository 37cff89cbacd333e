"""A session's bounded event journal: what WatchSession and StartSession read from.

The session appends (O(1), never waits); any number of readers follow at their own pace
by sequence number. The journal keeps at most `max_events` events and `max_bytes` of
payload, dropping the oldest first, so a reader that falls behind loses its place
instead of slowing the commander or growing memory; it can tell, because seqs are dense
(1, 2, 3...) and `first_seq` moves past what it has not read.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from google.protobuf.message import Message

from shared import wire

__all__ = ["EVENT_KINDS", "Journal", "JournalEntry"]

# SessionEvent oneof member name -> EventKind number (the proto's filter enum).
EVENT_KINDS: dict[str, int] = {
    "thought": wire.ctl.EVENT_KIND_THOUGHT,
    "content": wire.ctl.EVENT_KIND_CONTENT,
    "tool_call": wire.ctl.EVENT_KIND_TOOL_CALL,
    "tool_result": wire.ctl.EVENT_KIND_TOOL_RESULT,
    "stop": wire.ctl.EVENT_KIND_STOP,
    "stop_confirm": wire.ctl.EVENT_KIND_STOP_CONFIRM,
    "error": wire.ctl.EVENT_KIND_ERROR,
    "state_change": wire.ctl.EVENT_KIND_STATE_CHANGE,
    "tool_result_dropped": wire.ctl.EVENT_KIND_TOOL_RESULT_DROPPED,
    "approval_request": wire.ctl.EVENT_KIND_APPROVAL_REQUEST,
    "approval_decision": wire.ctl.EVENT_KIND_APPROVAL_DECISION,
    "usage": wire.ctl.EVENT_KIND_USAGE,
}


_KINDS = tuple(EVENT_KINDS)  # an event's kind is stored as its index here
_KIND_CODES = {kind: code for code, kind in enumerate(_KINDS)}
_HEADER = struct.Struct("<qQB")  # at_ms, packet_seq, kind code


class JournalEntry(NamedTuple):
    at_ms: int
    packet_seq: int
    kind: str  # a SessionEvent oneof member name
    data: bytes  # the serialized message (see Journal)
    size: int


class Journal:
    """Append-only, bounded, readable from any kept seq."""

    __slots__ = (
        "_bytes", "_changed", "_entries", "_first_seq", "_max_bytes", "_max_events", "closed", "dirty", "session_id",
        "sink",
    )  # fmt: skip

    def __init__(self, session_id: str, *, max_events: int, max_bytes: int) -> None:
        self.session_id = session_id
        # One bytes object per event: a packed header (_HEADER) and the serialized message.
        # Append is on every packet's path, and bytes are invisible to the cyclic GC: kept
        # as message objects, 1 000 busy sessions' journals were ~40 % of the objects each
        # full collection walked (pauses up to 250 ms), and even a tuple per event is a
        # GC-tracked allocation that drives young collections, ~0.8 µs a packet.
        self._entries: deque[bytes] = deque()
        self._first_seq = 1
        self._bytes = 0
        self._max_events = max(1, max_events)
        self._max_bytes = max(1, max_bytes)
        self._changed: asyncio.Event | None = None
        self.closed = False
        # A store that follows this journal (dispatcher/store): told once when the journal gets
        # events it has not committed yet (`dirty`), so the packet path does one flag test,
        # not a call or an allocation per event. The store clears `dirty` when it takes them.
        self.sink: Callable[[Journal], None] | None = None
        self.dirty = False

    @property
    def first_seq(self) -> int:
        """The oldest seq still kept (== next_seq when empty)."""
        return self._first_seq

    @property
    def next_seq(self) -> int:
        """The seq the next event will get."""
        return self._first_seq + len(self._entries)

    @property
    def last_seq(self) -> int:
        """The newest seq (0 before the first event)."""
        return self.next_seq - 1

    def append(self, kind: str, message: Message, packet_seq: int = 0) -> None:
        if self.closed:
            return
        data = message.SerializeToString()
        entries = self._entries
        entries.append(_HEADER.pack(time.time_ns() // 1_000_000, packet_seq, _KIND_CODES[kind]) + data)
        self._bytes += len(data)
        if len(entries) > self._max_events or self._bytes > self._max_bytes:
            self._evict()
        if self._changed is not None:
            self._wake()
        if not self.dirty and self.sink is not None:
            self.dirty = True
            self.sink(self)

    def packed(self, seq: int) -> bytes | None:
        """The stored form of the event at `seq` (header and message), for a session store."""
        index = seq - self._first_seq
        if 0 <= index < len(self._entries):
            return self._entries[index]
        return None

    @staticmethod
    def packet_seq_of(packed: bytes) -> int:
        """The upstream packet seq of a stored event (`packed`), 0 for events of no packet."""
        return int(_HEADER.unpack_from(packed)[1])

    @classmethod
    def restore(
        cls, session_id: str, events: Iterable[tuple[int, bytes]], *, max_events: int, max_bytes: int
    ) -> Journal:
        """A journal rebuilt from a store's (seq, packed) pairs, dense and oldest first: reading
        it gives the same events, seqs and times as the journal that was stored."""
        journal = cls(session_id, max_events=max_events, max_bytes=max_bytes)
        first = True
        for seq, packed in events:
            if first:
                journal._first_seq = seq
                first = False
            journal._entries.append(packed)
            journal._bytes += len(packed) - _HEADER.size
        if journal._entries:
            journal._evict()
        return journal

    def _evict(self) -> None:
        # Always keep the newest event, even one bigger than the byte budget.
        entries = self._entries
        while len(entries) > 1 and (len(entries) > self._max_events or self._bytes > self._max_bytes):
            self._bytes -= len(entries.popleft()) - _HEADER.size
            self._first_seq += 1

    def close(self) -> None:
        """No more events will come (the session ended): readers finish what is kept."""
        self.closed = True
        self._wake()

    def entry(self, seq: int) -> JournalEntry | None:
        """The event at `seq`, or None when it was dropped or does not exist yet."""
        index = seq - self._first_seq
        if 0 <= index < len(self._entries):
            packed = self._entries[index]
            at_ms, packet_seq, code = _HEADER.unpack_from(packed)
            data = packed[_HEADER.size :]
            return JournalEntry(at_ms, packet_seq, _KINDS[code], data, len(data))
        return None

    def newest(self, kinds: frozenset[str]) -> Iterator[tuple[int, JournalEntry]]:
        """(seq, entry) of the kept events of these kinds, newest first; the others are skipped
        by their header's kind byte, unread (the session span reads this once, at the end)."""
        codes = {_KIND_CODES[kind] for kind in kinds}
        kind_at = _HEADER.size - 1
        last = self._first_seq + len(self._entries) - 1
        for offset, packed in enumerate(reversed(self._entries)):
            if packed[kind_at] in codes:
                at_ms, packet_seq, code = _HEADER.unpack_from(packed)
                data = packed[_HEADER.size :]
                yield last - offset, JournalEntry(at_ms, packet_seq, _KINDS[code], data, len(data))

    def event(self, seq: int) -> wire.ctl.SessionEvent | None:
        entry = self.entry(seq)
        if entry is None:
            return None
        event = wire.ctl.SessionEvent(
            session_id=self.session_id, seq=seq, at_ms=entry.at_ms, packet_seq=entry.packet_seq
        )
        getattr(event, entry.kind).MergeFromString(entry.data)
        return event

    async def wait_past(self, seq: int) -> None:
        """Return once an event with a seq >= `seq` exists or the journal is closed."""
        while self.next_seq <= seq and not self.closed:
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
