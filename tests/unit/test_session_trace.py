"""The session span's end: what the journal replay writes, and its bounds."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dispatcher.core.actions import SessionOutcome
from dispatcher.core.journal import Journal
from dispatcher.core.snapshots import state_change
from dispatcher.tracing import MAX_TOOL_SPANS, SessionTrace
from shared import wire
from shared.model import SessionState


def traced(journal: Journal, tool_calls: int) -> tuple[InMemorySpanExporter, SessionTrace]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace = SessionTrace.begin(provider.get_tracer("test"), "s-1", None, commander="agent")
    assert trace is not None
    outcome = SessionOutcome(SessionState.FINISHED, "finished", "commander")
    trace.end(outcome, journal, {"session.tool_calls": tool_calls})
    return exporter, trace


def journal_with(calls: int) -> Journal:
    journal = Journal("s-1", max_events=4096, max_bytes=1 << 20)
    journal.append("state_change", state_change(SessionState.OPEN, "stream opened"))
    for n in range(calls):
        journal.append("tool_call", wire.pb.ToolCallRequest(tool_name="echo", call_id=f"c{n}", arguments_json="{}"))
        journal.append("content", wire.pb.ContentChunk(text="between "))
        kind = "tool_result" if n % 2 else "tool_result_dropped"
        journal.append(kind, wire.pb.ToolCallResult(tool_name="echo", call_id=f"c{n}", execution_time_us=1500))
    journal.append("state_change", state_change(SessionState.FINISHED, "finished"))
    return journal


def test_tool_calls_become_child_spans_and_state_changes_events() -> None:
    exporter, _trace = traced(journal_with(3), tool_calls=3)
    spans = exporter.get_finished_spans()
    [session] = [span for span in spans if span.name == "dispatcher.session"]
    calls = sorted(
        (span for span in spans if span.name == "execute_tool echo"),
        key=lambda span: str(dict(span.attributes or {})["gen_ai.tool.call.id"]),
    )
    assert [dict(span.attributes or {})["gen_ai.tool.call.id"] for span in calls] == ["c0", "c1", "c2"]
    assert [dict(span.attributes or {})["tool.delivered"] for span in calls] == [False, True, False]
    for span in calls:
        assert span.parent is not None and span.parent.span_id == session.context.span_id
        assert (span.end_time or 0) - (span.start_time or 0) >= 1_500_000  # the executor's measured time
    assert [event.name for event in session.events] == ["state_change", "state_change"]
    assert dict(session.attributes or {})["session.commander"] == "agent"
    assert "session.trace.tool_spans_left_out" not in dict(session.attributes or {})


def test_a_long_session_replays_only_the_newest_tool_calls() -> None:
    exporter, _trace = traced(journal_with(200), tool_calls=200)
    spans = exporter.get_finished_spans()
    calls = [span for span in spans if span.name == "execute_tool echo"]
    assert len(calls) == MAX_TOOL_SPANS
    assert {dict(span.attributes or {})["gen_ai.tool.call.id"] for span in calls} == {
        f"c{n}" for n in range(200 - MAX_TOOL_SPANS, 200)
    }
    [session] = [span for span in spans if span.name == "dispatcher.session"]
    assert dict(session.attributes or {})["session.trace.tool_spans_left_out"] == 200 - MAX_TOOL_SPANS
