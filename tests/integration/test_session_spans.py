"""The dispatcher's session spans in process (an in-memory exporter): what one session's span
holds, its tool-call children with their errors, its events; and no span work at all when
tracing is off."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from shared import tracing, wire
from tests.conftest import RawSession, running_dispatcher, test_config

pytestmark = [pytest.mark.anyio]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider, set_global=False)  # the global provider belongs to test_otel's fixture
    try:
        yield exporter
    finally:
        tracing.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def test_a_session_span_with_tool_calls_a_stop_and_the_callers_parent(exporter: InMemorySpanExporter) -> None:
    config = test_config(policy={"block_patterns": ("(?i)launch codes",)})
    metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
    async with running_dispatcher(config) as dispatcher:
        assert dispatcher.address is not None
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            raw = RawSession(channel, metadata)
            await raw.hello("traced")
            await raw.tool_call(2, "echo", '{"x": 1}', call_id="c1")
            await raw.recv_kind("tool_result")
            await raw.tool_call(3, "no_such_tool", "{}", call_id="c2")
            await raw.recv_kind("tool_result")
            await raw.content(4, "the launch codes are")
            stop = (await raw.recv_kind("stop")).stop
            await raw.send(wire.pb.UpstreamPacket(seq=5, stop_confirm=wire.pb.StopConfirm(stop_id=stop.stop_id)))
            code, _details, _trailers = await raw.status()
    assert code is grpc.StatusCode.PERMISSION_DENIED

    [span] = named(exporter, "dispatcher.session")
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT_ID
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    attributes = dict(span.attributes or {})
    assert attributes["session.id"] == "traced" and attributes["session.state"] == "STOPPED"
    assert attributes["session.stop.code"] == "POLICY_VIOLATION" and attributes["session.stop.confirmed"] is True
    assert attributes["session.tool_calls"] == 2 and attributes["session.packets_in"] >= 4
    assert attributes["rpc.grpc.status"] == "PERMISSION_DENIED"
    events = [event.name for event in span.events]
    assert events[0] == "state_change" and "stop" in events and "stop_confirm" in events, events
    times = [event.timestamp for event in span.events]
    assert times == sorted(times) and span.start_time is not None and times[0] >= span.start_time

    echo, unknown = named(exporter, "execute_tool echo"), named(exporter, "execute_tool no_such_tool")
    assert len(echo) == 1 and len(unknown) == 1
    for child in (*echo, *unknown):
        assert child.parent is not None and child.parent.span_id == span.context.span_id
    assert echo[0].status.status_code is StatusCode.UNSET
    assert unknown[0].status.status_code is StatusCode.ERROR
    assert dict(unknown[0].attributes or {})["error.type"] == "UNKNOWN_TOOL"


async def test_no_tracing_no_span_work() -> None:
    assert tracing.tracer("southwest.dispatcher") is None
    async with running_dispatcher() as dispatcher:
        assert dispatcher.address is not None
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            raw = RawSession(channel)
            await raw.hello("untraced")
            runner = dispatcher.sessions.registry.get_open("untraced")
            assert runner is not None and runner.trace is None  # type: ignore[attr-defined]
            await raw.content(2, "bye", is_finish=True)
            await raw.status()
