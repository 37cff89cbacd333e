"""OpenTelemetry tracing for the dispatcher and the commander: off unless configured, the standard way.

`configure()` reads the standard variables — `OTEL_TRACES_EXPORTER` (`otlp`, `console`, `none`;
default `otlp` when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set,
else tracing stays off), `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SDK_DISABLED`, and
through the SDK and the exporter themselves `OTEL_EXPORTER_OTLP_*` (endpoint, headers, insecure,
certificate, timeout) and `OTEL_BSP_*` (batching) — and installs a TracerProvider with a batch
processor. The OTLP exporter is `opentelemetry-exporter-otlp-proto-grpc`; its own gRPC channel runs on
the processor's thread, never on our event loop. `shutdown()` flushes what is batched (the CLIs call
it on the way out; it is also registered with atexit).

W3C trace context travels as `traceparent`/`tracestate` in gRPC metadata and in
`Assignment.trace_context` (`inject`, `extract`; the global propagator, so `OTEL_PROPAGATORS` applies).
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

if TYPE_CHECKING:  # the SDK is imported only when tracing is configured
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["TRACE_KEYS", "carrier_from_metadata", "configure", "extract", "inject", "install", "shutdown", "tracer"]

TRACE_KEYS = ("traceparent", "tracestate")
_provider: TracerProvider | None = None


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _exporters() -> list[str]:
    if _env("OTEL_SDK_DISABLED").lower() == "true":
        return []
    names = [name.strip().lower() for name in _env("OTEL_TRACES_EXPORTER").split(",") if name.strip()]
    if not names:
        endpoint = _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _env("OTEL_EXPORTER_OTLP_ENDPOINT")
        names = ["otlp"] if endpoint else []
    return [name for name in names if name != "none"]


def _exporter(name: str) -> SpanExporter:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    if name == "otlp":
        protocol = _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
        if protocol != "grpc":
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: only grpc is installed (OTLP over gRPC)")
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter(out=sys.stderr)  # stdout is the CLIs' own output
    raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console, none)")


def configure(default_service_name: str, **attributes: str) -> bool:
    """Install tracing as the OTEL_* variables say; False (and nothing installed) when they say
    nothing. ValueError for a value we cannot honour (the CLIs print it as one line)."""
    names = _exporters()
    if not names:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = [_exporter(name) for name in names]
    resource_attributes: dict[str, Any] = {key.replace("_", "."): value for key, value in attributes.items() if value}
    if not _env("OTEL_SERVICE_NAME") and "service.name=" not in _env("OTEL_RESOURCE_ATTRIBUTES"):
        resource_attributes["service.name"] = default_service_name
    provider = TracerProvider(resource=Resource.create(resource_attributes), shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    atexit.register(shutdown)
    return True


def install(provider: TracerProvider, *, set_global: bool = True) -> None:
    """Use `provider` for our spans; `set_global` also makes it the process's global provider
    (for opentelemetry-instrumentation-grpc, `--server-otel`), which can be set once per process.
    Tests install one with an in-memory exporter, not globally, and `shutdown()` it after."""
    global _provider
    _provider = provider
    if set_global:
        trace.set_tracer_provider(provider)


def tracer(name: str) -> trace.Tracer | None:
    """The tracer for our spans, or None when tracing is off (callers then do nothing at all)."""
    return _provider.get_tracer(name) if _provider is not None else None


def shutdown() -> None:
    """Export what is batched and stop (idempotent)."""
    global _provider
    provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


def carrier_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """The trace-context entries of gRPC metadata."""
    return {key: value for key, value in metadata or () if key in TRACE_KEYS and isinstance(value, str)}


def inject(span: trace.Span) -> dict[str, str]:
    """`span`'s context as W3C entries (`traceparent`, maybe `tracestate`)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def extract(carrier: Mapping[str, str] | None) -> otel_context.Context | None:
    """The remote parent named by `carrier`, or None when it names none."""
    if not carrier or "traceparent" not in carrier:
        return None
    return propagate.extract(dict(carrier))
