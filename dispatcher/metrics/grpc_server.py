"""gRPC server metrics under go-grpc-middleware's names, from a grpc.aio server interceptor.

`grpc_server_started_total`, `grpc_server_handled_total{grpc_code}`, `grpc_server_msg_received_total`,
`grpc_server_msg_sent_total` and `grpc_server_handling_seconds`, each labelled `grpc_type`
(unary, client_stream, server_stream, bidi_stream), `grpc_service` and `grpc_method`.

Per call: one Counter increment at the start, one Counter increment and one Histogram observation
at the end. Per streamed message: one integer increment in the call's own record (a counting
wrapper around the request iterator and the response generator); the message totals are
summed at scrape time over the ended calls' totals and the open calls' records (`collect`,
run on the event loop by the exporter), so no Prometheus object is touched per message.
Handlers written in the reader/writer style (`context.write`, e.g. Health's Watch) are timed
and counted per call, but their messages sent are not seen; synchronous handlers (none of ours)
are not wrapped at all.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = ["GrpcServerMetrics", "MetricsInterceptor"]

Context = grpc.aio.ServicerContext[Any, Any]
_LABELS = ("grpc_type", "grpc_service", "grpc_method")
# go-grpc-middleware uses prometheus.DefBuckets (5 ms to 10 s); sessions are long-lived
# streams, so the tail goes on to an hour.
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_clock = time.perf_counter


class _Call:
    """One open call's message counts."""

    __slots__ = ("received", "sent", "started_at")

    def __init__(self, received: int) -> None:
        self.received = received
        self.sent = 0
        self.started_at = _clock()


class _Method:
    """One method's Prometheus children (looked up once) and its message totals."""

    __slots__ = ("handled", "handled_total", "labels", "open", "received", "seconds", "sent", "started")

    def __init__(self, metrics: GrpcServerMetrics, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = metrics.started.labels(*labels)
        self.seconds = metrics.seconds.labels(*labels)
        self.handled_total = metrics.handled
        self.handled: dict[str, Any] = {}
        self.received = 0  # ended calls
        self.sent = 0
        self.open: set[_Call] = set()

    def begin(self, received: int) -> _Call:
        self.started.inc()
        call = _Call(received)
        self.open.add(call)
        return call

    def end(self, call: _Call, context: Context, error: BaseException | None) -> None:
        self.open.discard(call)
        self.received += call.received
        self.sent += call.sent
        self.seconds.observe(_clock() - call.started_at)
        code = _code_of(context, error)
        child = self.handled.get(code)
        if child is None:
            child = self.handled[code] = self.handled_total.labels(*self.labels, code)
        child.inc()


def _code_of(context: Context, error: BaseException | None) -> str:
    """The call's final status: what the handler set or aborted with, else what the end says."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None or isinstance(error, grpc.aio.AbortError):
        return "OK"
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"  # the client went away (or its deadline passed): grpc cancelled the handler
    return "UNKNOWN"  # what grpc sends for an escaped exception (our boundary keeps them out)


class GrpcServerMetrics:
    """The five go-grpc-middleware server metrics of one process, in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter("grpc_server_started", "RPCs started on the server.", _LABELS, registry=registry)
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure.",
            (*_LABELS, "grpc_code"),
            registry=registry,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end, in seconds.",
            _LABELS,
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self._methods: dict[str, _Method] = {}

    def method(self, full_method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> _Method:
        found = self._methods.get(full_method)
        if found is None:
            service, _, name = full_method.lstrip("/").rpartition("/")
            found = self._methods[full_method] = _Method(self, (_grpc_type(handler), service, name))
        return found

    def collect(self) -> Iterable[Metric]:
        """The message counters: ended calls' totals plus the open calls' (run on the event loop)."""
        received = CounterMetricFamily(
            "grpc_server_msg_received", "RPC stream messages received on the server.", labels=_LABELS
        )
        sent = CounterMetricFamily("grpc_server_msg_sent", "gRPC stream messages sent on the server.", labels=_LABELS)
        for method in self._methods.values():
            received.add_metric(method.labels, method.received + sum(call.received for call in method.open))
            sent.add_metric(method.labels, method.sent + sum(call.sent for call in method.open))
        return (received, sent)


def _grpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call of a handler this server has (the first interceptor, so that
    refusals by the ones after it are counted with their status)."""

    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED itself; an unknown name is not a label value
        return _wrapped(handler, self._metrics.method(details.method, handler))


def _wrapped(handler: grpc.RpcMethodHandler[Any, Any], method: _Method) -> grpc.RpcMethodHandler[Any, Any]:
    behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
        return handler  # a synchronous handler (grpc runs it in its thread pool): left as it is, uncounted
    kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, method, 1), **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, method, 0), **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, method, 1), **kwargs)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, method, 0), **kwargs)


async def _counted(requests: AsyncIterator[Any], call: _Call) -> AsyncIterator[Any]:
    async for request in requests:
        call.received += 1
        yield request


def _unary(behavior: Any, method: _Method, received: int) -> Any:
    async def unary_response(request: Any, context: Context) -> Any:
        call = method.begin(received)
        if not received:
            request = _counted(request, call)
        try:
            response = await behavior(request, context)
        except BaseException as error:
            method.end(call, context, error)
            raise
        call.sent = 1
        method.end(call, context, None)
        return response

    return unary_response


def _streaming(behavior: Any, method: _Method, received: int) -> Any:
    if inspect.iscoroutinefunction(behavior):  # reader/writer style: grpc awaits it, it writes itself

        async def written_responses(request: Any, context: Context) -> None:
            call = method.begin(received)
            if not received:
                request = _counted(request, call)
            try:
                await behavior(request, context)
            except BaseException as error:
                method.end(call, context, error)
                raise
            method.end(call, context, None)

        return written_responses

    async def yielded_responses(request: Any, context: Context) -> AsyncIterator[Any]:
        call = method.begin(received)
        if not received:
            request = _counted(request, call)
        responses = behavior(request, context)
        error: BaseException | None = None
        try:
            async for response in responses:
                yield response  # grpc resumes us once the message is written
                call.sent += 1
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                await responses.aclose()  # closed here, not by the GC: its cleanup runs now
            finally:
                method.end(call, context, error)

    return yielded_responses
