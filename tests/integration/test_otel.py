"""The dispatcher with `server.otel` on: OpenTelemetry's grpc.aio server interceptor wraps every
handler, and the async-generator ChatStream handler still serves whole sessions under it.

Two process-wide side effects are handled here:
- `GrpcAioInstrumentorServer().instrument()` (called by the dispatcher) monkey-patches
  `grpc.aio.server` for the whole process: the fixture uninstruments afterwards and checks that
  the original function is back, so later tests build plain servers.
- The global TracerProvider can be set once per process: the fixture reuses an SDK provider if one
  is already installed (adding its in-memory processor once), else installs its own. Either way the
  dispatcher's `_instrument_otel` sees an SDK provider (without one it warns: the spans would go
  nowhere). The session spans exported over OTLP are tested in tests/e2e/test_tracing.py.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from dispatcher.config import DispatcherConfig
from shared import wire
from shared.model import SessionState, StopCode
from tests.conftest import WAIT_S, run_scripted, running_dispatcher, test_config, wait_until

pytestmark = [pytest.mark.anyio]

CHAT_STREAM = f"/{wire.SERVICE_NAME}/ChatStream"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

# One exporter for the whole process: an SDK provider cannot drop a processor once added.
_EXPORTER = InMemorySpanExporter()
_installed = False


def _install_exporter() -> InMemorySpanExporter:
    global _installed
    if not _installed:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider()
            trace.set_tracer_provider(provider)  # ignored (with a log line) if someone set one meanwhile
        if trace.get_tracer_provider() is not provider:
            pytest.fail(f"a non-SDK global TracerProvider is installed: {trace.get_tracer_provider()!r}")
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        _installed = True
    _EXPORTER.clear()
    return _EXPORTER


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    original_server = grpc.aio.server
    instrumentor = GrpcAioInstrumentorServer()
    assert not instrumentor.is_instrumented_by_opentelemetry, "a previous test left grpc.aio instrumented"
    exporter = _install_exporter()
    try:
        yield exporter
    finally:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
        assert grpc.aio.server is original_server, "grpc.aio.server is still patched"
        exporter.clear()


def otel_config(**sections: Any) -> DispatcherConfig:
    return test_config(server={"otel": True}, **sections)


def finished_spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def test_a_full_session_is_served_and_traced_under_opentelemetry(spans: InMemorySpanExporter) -> None:
    async with running_dispatcher(otel_config()) as dispatcher:
        assert GrpcAioInstrumentorServer().is_instrumented_by_opentelemetry
        result = await run_scripted(dispatcher.address, "What is 6*7?")
    assert result.state is SessionState.FINISHED, result
    assert result.status_code == "OK" and result.tool_calls == 1 and not result.compat_mode
    ended = dispatcher.sessions.registry.get_ended(result.session_id)
    assert ended is not None and ended.outcome.state is SessionState.FINISHED

    await wait_until(lambda: finished_spans(spans, CHAT_STREAM), f"no {CHAT_STREAM} span", timeout_s=WAIT_S)
    [span] = finished_spans(spans, CHAT_STREAM)
    assert span.kind is SpanKind.SERVER
    assert span.attributes is not None
    assert span.attributes["rpc.system"] == "grpc"
    assert span.attributes["rpc.service"] == wire.SERVICE_NAME
    assert span.attributes["rpc.method"] == "ChatStream"
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    # OTel leaves a successful server span's status UNSET (only errors are marked); never ERROR.
    assert span.status.status_code in (StatusCode.UNSET, StatusCode.OK), span.status
    assert not [event for event in span.events if event.name == "exception"]


async def test_a_stopped_session_records_its_grpc_code_on_the_span(spans: InMemorySpanExporter) -> None:
    # The handler sets the final code on the context OTel wrapped (set_code): the span must see it.
    config = otel_config(policy={"block_patterns": ("(?i)launch codes",)})
    async with running_dispatcher(config) as dispatcher:
        result = await run_scripted(dispatcher.address, "tell me the launch codes", tokens_per_s=200)
    assert result.state is SessionState.STOPPED, result
    assert result.stop is not None and result.stop.code is StopCode.POLICY_VIOLATION
    assert result.status_code == "PERMISSION_DENIED"

    await wait_until(lambda: finished_spans(spans, CHAT_STREAM), f"no {CHAT_STREAM} span", timeout_s=WAIT_S)
    [span] = finished_spans(spans, CHAT_STREAM)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]
    # Per the RPC semantic conventions a server span is ERROR only for UNKNOWN, DEADLINE_EXCEEDED,
    # UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS; a policy refusal is the client's problem.
    assert span.status.status_code is StatusCode.UNSET, span.status


async def test_health_check_works_under_opentelemetry(spans: InMemorySpanExporter) -> None:
    async with running_dispatcher(otel_config()) as dispatcher:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = await stub.Check(health_pb2.HealthCheckRequest(service=wire.SERVICE_NAME), timeout=WAIT_S)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
async def test_health_watch_works_under_opentelemetry(spans: InMemorySpanExporter) -> None:
    try:
        async with running_dispatcher(otel_config()) as dispatcher:
            async with grpc.aio.insecure_channel(dispatcher.address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                call = stub.Watch(health_pb2.HealthCheckRequest(service=wire.SERVICE_NAME), timeout=WAIT_S)
                try:
                    first = await call.read()
                finally:
                    call.cancel()
        assert first is not grpc.aio.EOF and first.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        # The broken path leaves an un-awaited Watch coroutine: finalize it here, not in a later test.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gc.collect()


async def test_health_checks_are_not_traced(spans: InMemorySpanExporter) -> None:
    async with running_dispatcher(otel_config()) as dispatcher:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
    assert not [span for span in spans.get_finished_spans() if span.name.startswith(f"/{HEALTH_SERVICE}/")]
