"""The commander's spans: one per session, one per tool call, and a hook for the model request.

Only when tracing is configured (shared/tracing.py, the OTEL_* variables); otherwise nothing here
runs. The session span's parent is the dispatcher's session span when the session came as an
Assignment (`Assignment.trace_context`), else whatever span is current when `run_session` is called
(none: a new trace), and its context goes up the ChatStream as `traceparent` metadata so the
dispatcher's span becomes its child. While the agent runs the session span is the current span:
`AgentContext.span(...)` (the model request, anything of the agent's) and each `call_tool` nest in it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from commander.actions import SessionResult
from shared import tracing

__all__ = ["SessionSpan", "child_span", "session_tracer"]


def session_tracer() -> trace.Tracer | None:
    return tracing.tracer("southwest.commander")


class SessionSpan:
    """The span of one commander session."""

    __slots__ = ("_token", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self._token: object | None = None

    @classmethod
    def begin(
        cls, tracer: trace.Tracer | None, session_id: str, parent: Mapping[str, str] | None = None
    ) -> SessionSpan | None:
        """A span for the session; `parent` (W3C entries) else the current context."""
        if tracer is None:
            return None
        remote = tracing.extract(parent)
        span = tracer.start_span(
            "commander.session",
            context=remote,  # None: the current context
            kind=SpanKind.CLIENT,
            attributes={"session.id": session_id} if session_id else {},
        )
        return cls(span)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """ChatStream metadata naming this span as the dispatcher's parent."""
        return tuple(tracing.inject(self.span).items())

    @contextmanager
    def current(self) -> Iterator[None]:
        """Make the session span the current one (the agent's spans nest in it)."""
        token = otel_context.attach(trace.set_span_in_context(self.span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def end(self, result: SessionResult) -> None:
        attributes: dict[str, Any] = {
            "session.id": result.session_id,
            "session.state": result.state.value,
            "session.reason": result.reason,
            "rpc.grpc.status": result.status_code,
            "session.packets_sent": result.packets_sent,
            "session.tool_calls": result.tool_calls,
            "session.compat_mode": result.compat_mode,
        }
        if result.stop is not None:
            attributes |= {"session.stop.code": result.stop.code.name, "session.stop.reason": result.stop.reason}
            if result.stop_to_halt_ms is not None:
                attributes["session.stop.to_halt_ms"] = round(result.stop_to_halt_ms, 3)
        if result.assigned is not None:
            attributes["session.started_by"] = result.assigned.started_by
        self.span.set_attributes(attributes)
        if result.state.value == "FAILED":
            self.span.set_status(Status(StatusCode.ERROR, result.reason))
        self.span.end()

    def abandon(self, reason: str) -> None:
        """End the span of a session that was cut short before it had a result."""
        self.span.set_attribute("session.reason", reason)
        self.span.end()


@contextmanager
def child_span(name: str, **attributes: Any) -> Iterator[trace.Span | None]:
    """A span under the current one (the session's while the agent runs); None when tracing is off.
    The agent's cancellation on a stop is not an error: the span just ends."""
    tracer = session_tracer()
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(
        name, kind=SpanKind.CLIENT, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        yield span
