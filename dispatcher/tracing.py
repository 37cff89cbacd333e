"""One span per session, with its tool calls as child spans and its stops, confirmations and
state changes as span events — all written when the session ends.

Nothing is done per packet: the span is started with the session (so its context can go into the
Assignment and parent the commander's span) and everything else is read once, at the end, from the
session's journal, which already holds every event with its time, newest first and bounded
(MAX_EVENTS, MAX_TOOL_SPANS): a very long session's earliest events are left out (the journal
may not hold them anyway); its counters are complete (they are the machine's).

The parent: a backend's `traceparent` (StartSession/Ask metadata, carried in the Assignment the
control service builds) or the commander's (ChatStream metadata); none = a new trace.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from dispatcher.core.actions import SessionOutcome
from dispatcher.core.journal import Journal, JournalEntry
from shared import tracing, wire

__all__ = ["SessionTrace"]

_MS = 1_000_000  # ns per ms
_EVENT_KINDS = frozenset({"state_change", "stop", "stop_confirm", "approval_request", "approval_decision"})
_CALL_ENDS = frozenset({"tool_result", "tool_result_dropped"})
_TOOL_KINDS = _CALL_ENDS | {"tool_call"}
# The replay runs on the event loop when the session ends: bounded, so that a session of
# thousands of tool calls cannot hold the loop (~50 µs per tool-call span; measured end of a
# session with a full 4 000-event journal: 1.3 ms of content, 3.4 ms of 2 000 tool calls). The
# newest are kept; how many tool calls were left out is an attribute.
MAX_TOOL_SPANS = 64
MAX_EVENTS = 64
_FAILED_STATES = frozenset({"FAILED"})


class SessionTrace:
    """The span of one session (only built when tracing is on)."""

    __slots__ = ("_started_ns", "_tracer", "span")

    def __init__(self, tracer: trace.Tracer, span: trace.Span, started_ns: int) -> None:
        self._tracer = tracer
        self.span = span
        # The journal's clock has milliseconds: what it recorded before this instant (the OPEN
        # state change) is shown at the span's start, never before it.
        self._started_ns = started_ns

    @classmethod
    def begin(
        cls, tracer: trace.Tracer | None, session_id: str, parent: Mapping[str, str] | None, **attributes: str
    ) -> SessionTrace | None:
        if tracer is None:
            return None
        started_ns = time.time_ns()
        span = tracer.start_span(
            "dispatcher.session",
            context=tracing.extract(parent),
            kind=SpanKind.SERVER,
            attributes={"session.id": session_id, **{f"session.{k}": v for k, v in attributes.items() if v}},
            start_time=started_ns,
        )
        return cls(tracer, span, started_ns)

    def carrier(self) -> dict[str, str]:
        """This span's W3C context, for the Assignment (the commander's span becomes its child)."""
        return tracing.inject(self.span)

    def end(self, outcome: SessionOutcome, journal: Journal, counters: Mapping[str, Any]) -> None:
        span = self.span
        stop = outcome.stop
        attributes: dict[str, Any] = {
            "session.state": outcome.state.value,
            "session.reason": outcome.reason,
            "session.ended_by": outcome.ended_by,
            "rpc.grpc.status": outcome.status,
            **counters,
        }
        if stop is not None:
            attributes |= {
                "session.stop.code": stop.code.name,
                "session.stop.reason": stop.reason,
                "session.stop.path": list(stop.path),
                "session.stop.confirmed": outcome.stop_confirmed,
            }
            if outcome.stop_to_confirm_ms:
                attributes["session.stop.to_confirm_ms"] = round(outcome.stop_to_confirm_ms, 3)
        span.set_attributes(attributes)
        self._replay(journal, int(counters.get("session.tool_calls", 0)))
        if outcome.state.value in _FAILED_STATES:
            span.set_status(Status(StatusCode.ERROR, outcome.reason))
        span.end()

    def _replay(self, journal: Journal, tool_calls: int) -> None:
        """Span events and tool-call spans from what the journal kept: the newest, bounded, read
        newest first and only as far as needed."""
        events: list[tuple[int, JournalEntry]] = []
        for seq, entry in journal.newest(_EVENT_KINDS):
            events.append((seq, entry))
            if len(events) == MAX_EVENTS:
                self.span.set_attribute("session.trace.events_truncated", True)
                break
        for seq, entry in reversed(events):
            event = journal.event(seq)
            assert event is not None
            self.span.add_event(entry.kind, _event_attributes(event), timestamp=self._at(entry.at_ms))
        parent = trace.set_span_in_context(self.span)
        ends: dict[str, tuple[wire.pb.ToolCallResult, int, bool]] = {}  # call id -> (result, end ns, delivered)
        spans = 0
        for _seq, entry in journal.newest(_TOOL_KINDS):
            if entry.kind != "tool_call":
                if len(ends) < MAX_TOOL_SPANS:
                    result = wire.pb.ToolCallResult.FromString(entry.data)
                    ends[result.call_id] = (result, self._at(entry.at_ms), entry.kind == "tool_result")
                continue
            call = wire.pb.ToolCallRequest.FromString(entry.data)
            end = ends.pop(call.call_id, None)
            if end is not None:
                result, end_ns, delivered = end
                self._tool_span(parent, (self._at(entry.at_ms), call.tool_name), result, end_ns, delivered=delivered)
                spans += 1
                if spans == MAX_TOOL_SPANS:
                    break
        if tool_calls > spans:
            self.span.set_attribute("session.trace.tool_spans_left_out", tool_calls - spans)

    def _at(self, at_ms: int) -> int:
        return max(at_ms * _MS, self._started_ns)

    def _tool_span(
        self, parent: Any, started: tuple[int, str], result: wire.pb.ToolCallResult, at_ns: int, *, delivered: bool
    ) -> None:
        start_ns, tool = started
        end_ns = max(start_ns, at_ns)
        if result.execution_time_us:  # the journal's clock is in ms; the executor measured the call
            end_ns = max(end_ns, start_ns + result.execution_time_us * 1000)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": result.call_id,
            "tool.delivered": delivered,
        }
        if result.HasField("error") and result.error.code:
            attributes["error.type"] = wire.tool_error_code_name(result.error.code)
        span = self._tracer.start_span(
            f"execute_tool {tool}", context=parent, kind=SpanKind.INTERNAL, start_time=start_ns, attributes=attributes
        )
        if "error.type" in attributes:
            span.set_status(Status(StatusCode.ERROR, result.error.message))
        span.end(end_time=end_ns)


def _event_attributes(event: wire.ctl.SessionEvent) -> dict[str, Any]:
    kind = event.WhichOneof("event")
    if kind == "state_change":
        change = event.state_change
        return {"session.state": wire.ctl.SessionState.Name(change.state), "reason": change.reason}
    if kind == "stop":
        stop = event.stop
        return {
            "stop.code": wire.pb.StopCode.Name(stop.code),
            "stop.reason": stop.reason,
            "stop.path": list(stop.path),
            "stop.id": stop.stop_id,
        }
    if kind == "stop_confirm":
        confirm = event.stop_confirm
        return {"stop.id": confirm.stop_id, "halt_us": confirm.halt_us, "discarded_packets": confirm.discarded_packets}
    if kind == "approval_request":
        return {"call_id": event.approval_request.call_id, "tool": event.approval_request.tool_name}
    if kind == "approval_decision":
        decision = event.approval_decision
        return {"call_id": decision.call_id, "approved": decision.approved, "decided_by": decision.decided_by}
    return {}
