"""What a chaos run checks: a session's journal against what the agent produced, and the tool
side's record of executions. Plain functions over plain data (tested without a network).

Journal events are `SessionEvent`s as JSON objects with the proto's field names: what
`dispatcherctl watch --json` prints, or `event_dict(event)` of one read in process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from dispatcherctl.render import message_to_dict

__all__ = ["JournalCheck", "ToolLog", "check_journal", "event_dict"]

# Events made from one upstream packet: a resume must not journal such a packet twice.
UPSTREAM_KINDS = ("thought", "content", "tool_call", "usage", "stop_confirm", "error")
KINDS = (*UPSTREAM_KINDS, "tool_result", "tool_result_dropped", "stop", "state_change", "approval_request",
         "approval_decision")  # fmt: skip


def event_dict(event: Message) -> dict[str, Any]:
    """A SessionEvent exactly as `dispatcherctl watch --json` prints it."""
    return message_to_dict(event)


def _kind(event: Mapping[str, Any]) -> str:
    for kind in KINDS:
        if kind in event:
            return kind
    return "?"


@dataclass(slots=True)
class JournalCheck:
    """One session's journal against the agent's expected answer."""

    session_id: str
    events: int = 0
    lost: int = 0  # expected chunks missing from the journal's content
    duplicates: int = 0  # chunks journaled more than once, plus events journaled twice
    out_of_order: bool = False
    seq_gaps: int = 0  # the journal's own seqs must be 1, 2, 3... with no repeat
    tool_calls: list[str] = field(default_factory=list)  # call ids, in journal order
    tool_results: list[str] = field(default_factory=list)
    dropped_results: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)  # the state changes, in order
    problems: list[str] = field(default_factory=list)

    @property
    def final_state(self) -> str:
        return self.states[-1] if self.states else ""

    @property
    def ok(self) -> bool:
        return not self.problems


def check_journal(session_id: str, events: Iterable[Mapping[str, Any]], expected_content: str | None) -> JournalCheck:
    """Content exactly once and in order (when `expected_content` is given), every call id's
    request and result at most once, no upstream packet journaled twice, seqs dense."""
    check = JournalCheck(session_id)
    text: list[str] = []
    packets: Counter[tuple[str, int]] = Counter()
    last_seq = 0
    for event in events:
        check.events += 1
        seq = int(event.get("seq", 0))
        if seq != last_seq + 1:
            check.seq_gaps += 1
        last_seq = seq
        kind = _kind(event)
        body = event.get(kind) or {}
        packet_seq = int(event.get("packet_seq", 0))
        if kind in UPSTREAM_KINDS and packet_seq:
            packets[(kind, packet_seq)] += 1
        if kind == "content":
            text.append(str(body.get("text", "")))
        elif kind == "tool_call":
            check.tool_calls.append(str(body.get("call_id", "")))
        elif kind == "tool_result":
            check.tool_results.append(str(body.get("call_id", "")))
        elif kind == "tool_result_dropped":
            check.dropped_results.append(str(body.get("call_id", "")))
        elif kind == "state_change":
            check.states.append(str(body.get("state", "")))
    repeated_packets = sum(count - 1 for count in packets.values() if count > 1)
    repeated_calls = _repeats(check.tool_calls) + _repeats(check.tool_results + check.dropped_results)
    check.duplicates = repeated_packets + repeated_calls
    if expected_content is not None:
        want = expected_content.split()
        got = "".join(text).split()
        seen = Counter(got)
        check.lost = sum(1 for token in want if token not in seen)
        check.duplicates += sum(count - 1 for count in seen.values() if count > 1)
        check.out_of_order = not check.lost and got != want
        if check.lost:
            check.problems.append(f"{check.lost} chunk(s) lost")
        if check.out_of_order:
            check.problems.append("content out of order")
    if check.duplicates:
        check.problems.append(f"{check.duplicates} duplicate(s)")
    if check.seq_gaps:
        check.problems.append(f"journal seqs not dense ({check.seq_gaps} break(s))")
    return check


def _repeats(ids: list[str]) -> int:
    return sum(count - 1 for count in Counter(ids).values() if count > 1)


@dataclass(slots=True)
class ToolLog:
    """The tool side's record (`scripts/chaos/tools.py`): executions per (session, call id)."""

    starts: Counter[tuple[str, str]] = field(default_factory=Counter)
    done: Counter[tuple[str, str]] = field(default_factory=Counter)
    cancelled: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, event: str, session_id: str, call_id: str) -> None:
        key = (session_id, call_id)
        if event == "start":
            self.starts[key] += 1
        elif event == "done":
            self.done[key] += 1
        elif event == "cancelled":
            self.cancelled[key] += 1

    @classmethod
    def read(cls, path: Path) -> ToolLog:
        log = cls()
        if path.exists():
            for line in path.read_text().splitlines():
                words = line.split()
                if len(words) == 4:
                    log.add(words[0], words[1], words[2])
        return log

    def executed_twice(self, session_id: str | None = None) -> int:
        """Executions beyond the first of any call id (of one session, or all)."""
        return sum(count - 1 for (sid, _), count in self.starts.items() if count > 1 and session_id in (None, sid))

    def running(self, session_id: str) -> list[str]:
        """Call ids of `session_id` started and neither done nor cancelled."""
        return [
            call for (sid, call), n in self.starts.items()
            if sid == session_id and n > self.done[(sid, call)] + self.cancelled[(sid, call)]
        ]  # fmt: skip

    def calls_of(self, session_id: str) -> set[str]:
        return {call for (sid, call) in self.starts if sid == session_id}
