"""Traces over OTLP/gRPC, end to end: a real OTLP receiver (a grpc.aio server implementing the
collector's TraceService from opentelemetry-proto) in the test; `dispatcher serve`, `commander run`
and `commander serve` as subprocesses configured by the standard OTEL_* variables only. Spans
arrive, and parents link across the processes: a backend's traceparent -> the dispatcher's
session span -> (Assignment.trace_context) the commander's session span -> its tool calls; and
for a direct session the commander's span -> (traceparent metadata) the dispatcher's."""

from __future__ import annotations

import json
import re
import secrets
import shlex
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from shared import wire
from tests.conftest import WAIT_S, wait_until
from tests.e2e.conftest import COMMANDER, ENV, ROOT, DispatcherFactory, run_commander

pytestmark = pytest.mark.anyio


@dataclass(frozen=True, slots=True)
class Received:
    service: str
    span: trace_pb2.Span

    def attribute(self, key: str) -> Any:
        for kv in self.span.attributes:
            if kv.key == key:
                value = kv.value
                return getattr(value, value.WhichOneof("value"))
        return None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """What an OpenTelemetry collector's OTLP/gRPC receiver does, keeping every span."""

    def __init__(self) -> None:
        self.spans: list[Received] = []

    async def Export(  # noqa: N802 - the proto's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                (kv.value.string_value for kv in resource_spans.resource.attributes if kv.key == "service.name"), ""
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans += [Received(service, span) for span in scope_spans.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str, **attributes: Any) -> list[Received]:
        return [
            r for r in self.spans if r.span.name == name and all(r.attribute(k) == v for k, v in attributes.items())
        ]

    def children(self, parent: Received) -> list[Received]:
        return [r for r in self.spans if r.span.parent_span_id == parent.span.span_id]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    server = grpc.aio.server()
    spans = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(spans, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield spans, f"http://127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


README_ENDPOINT = "http://127.0.0.1:4317"


def readme_exports() -> dict[str, str]:
    """The variables the README's tracing example exports (its collector endpoint included)."""
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        first = block.splitlines()[0]
        if first.startswith("export OTEL_"):
            words = shlex.split(first.split("#", 1)[0])[1:]
            return dict(word.split("=", 1) for word in words)
    raise AssertionError("no bash block starting `export OTEL_` in the README")


def otel_env(endpoint: str, **extra: str) -> dict[str, str]:
    """The README's variables, its endpoint swapped for the receiver's."""
    exports = readme_exports()
    assert exports["OTEL_EXPORTER_OTLP_ENDPOINT"] == README_ENDPOINT, exports
    return {
        **ENV,
        **exports,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: spans go out promptly while the processes run
        **extra,
    }


async def wait_for_span(spans: Receiver, name: str, **attributes: Any) -> Received:
    await wait_until(lambda: spans.named(name, **attributes), f"no {name} span {attributes} arrived")
    return spans.named(name, **attributes)[0]


async def test_a_direct_session_is_one_trace_across_commander_and_dispatcher(
    receiver: tuple[Receiver, str], start_dispatcher: DispatcherFactory
) -> None:
    spans, endpoint = receiver
    dispatcher = await anyio.to_thread.run_sync(lambda: start_dispatcher(env=otel_env(endpoint)))
    # A long batch delay for the commander: its spans can only arrive through the flush at exit.
    env = otel_env(endpoint, OTEL_BSP_SCHEDULE_DELAY="60000", OTEL_SERVICE_NAME="my-agent")
    run = await anyio.to_thread.run_sync(
        lambda: run_commander(dispatcher.address, "What is 6*7?", "--json", "--quiet", env=env)
    )
    assert run.returncode == 0, run.stdout
    [result] = [json.loads(line) for line in run.stdout.splitlines() if '"SessionResult"' in line]
    session_id = result["session_id"]

    commander = await wait_for_span(spans, "commander.session", **{"session.id": session_id})
    ours = await wait_for_span(spans, "dispatcher.session", **{"session.id": session_id})
    assert commander.service == "my-agent" and ours.service == "dispatcher"
    assert commander.span.parent_span_id == b""  # the root: nothing was current in `commander run`
    assert ours.span.trace_id == commander.span.trace_id
    assert ours.span.parent_span_id == commander.span.span_id  # via the ChatStream's traceparent
    assert commander.attribute("session.state") == "FINISHED" and commander.attribute("session.tool_calls") == 1
    assert ours.attribute("session.state") == "FINISHED" and ours.attribute("session.tool_calls") == 1
    assert ours.attribute("session.packets_in") > 1
    assert [event.name for event in ours.span.events].count("state_change") >= 2  # OPEN ... FINISHED

    [their_call] = [r for r in spans.children(commander) if r.span.name == "execute_tool calculator"]
    [our_call] = [r for r in spans.children(ours) if r.span.name == "execute_tool calculator"]
    assert their_call.attribute("gen_ai.tool.call.id") == our_call.attribute("gen_ai.tool.call.id")
    assert our_call.span.trace_id == commander.span.trace_id
    assert our_call.span.start_time_unix_nano <= our_call.span.end_time_unix_nano


async def test_a_backends_trace_context_reaches_the_pool_commanders_tool_calls(
    receiver: tuple[Receiver, str], start_dispatcher: DispatcherFactory, tmp_path: Path
) -> None:
    spans, endpoint = receiver
    env = otel_env(endpoint)
    dispatcher = await anyio.to_thread.run_sync(
        lambda: start_dispatcher("--block-pattern", "(?i)launch codes", env=env)
    )
    log = (tmp_path / "pool.log").open("wb")
    argv = [str(COMMANDER), "serve", "--target", dispatcher.address, "-n", "1", "--tokens-per-s", "200"]
    pool = await anyio.open_process(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    metadata = (("traceparent", f"00-{trace_id}-{parent_id}-01"),)  # the backend's own span
    try:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            answer = await wire.SessionControlServiceStub(channel).Ask(
                wire.ctl.AskRequest(input_text="What is 6*7?", wait_for_commander_ms=15_000),
                metadata=metadata,
                timeout=WAIT_S * 2,
            )
            stopped = await wire.SessionControlServiceStub(channel).Ask(
                wire.ctl.AskRequest(input_text="the launch codes please", wait_for_commander_ms=15_000),
                metadata=metadata,
                timeout=WAIT_S * 2,
            )
    finally:
        pool.send_signal(signal.SIGTERM)  # its exit flushes its spans: the receiver must keep serving
        with anyio.fail_after(WAIT_S * 2):
            await pool.wait()
        log.close()
    assert answer.outcome.state == wire.ctl.SESSION_STATE_FINISHED, answer
    session_id = answer.session_id

    ours = await wait_for_span(spans, "dispatcher.session", **{"session.id": session_id})
    assert ours.span.trace_id.hex() == trace_id and ours.span.parent_span_id.hex() == parent_id
    assert ours.attribute("session.started_by") == "operator:anonymous"
    commander = await wait_for_span(spans, "commander.session", **{"session.id": session_id})
    assert commander.service == "commander"
    assert commander.span.trace_id.hex() == trace_id
    assert commander.span.parent_span_id == ours.span.span_id  # via Assignment.trace_context
    assert commander.attribute("session.started_by") == "operator:anonymous"
    [call] = [r for r in spans.children(commander) if r.span.name == "execute_tool calculator"]
    assert call.span.trace_id.hex() == trace_id

    # The stopped session: its stop code on the span, the stop and its confirmation as events.
    stopped_span = await wait_for_span(spans, "dispatcher.session", **{"session.id": stopped.session_id})
    assert stopped_span.attribute("session.state") == "STOPPED"
    assert stopped_span.attribute("session.stop.code") == "POLICY_VIOLATION"
    names = [event.name for event in stopped_span.span.events]
    assert "stop" in names, names
    # The events are what happened: a commander that had already half-closed confirms nothing.
    assert ("stop_confirm" in names) is stopped_span.attribute("session.stop.confirmed"), names
    stop_event = stopped_span.span.events[names.index("stop")]
    assert {kv.key: kv.value.string_value for kv in stop_event.attributes}["stop.code"] == "STOP_CODE_POLICY_VIOLATION"
