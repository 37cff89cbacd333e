"""The dispatcher's Prometheus exposition: its own registry, the gRPC server metrics, the
runtime's counters and histograms, served at `--metrics-listen` /metrics.

Counters and gauges that depend on the sessions are read at scrape time, on the event loop
(`LoopCollector`): the open sessions' own counts plus what ended sessions left in
`RuntimeStats`. Histograms are prometheus-client's, observed per session end and per tool call.
Every runtime metric is named `dispatcher_*`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from dispatcher.metrics.grpc_server import GrpcServerMetrics, MetricsInterceptor
from dispatcher.metrics.stats import RuntimeStats
from dispatcher.sessions.manager import SessionManager
from dispatcher.sessions.runner import SessionRunner
from shared.metrics import LoopCollector, MetricsServer

__all__ = ["DispatcherMetrics", "HistogramObservations"]

# Stops are confirmed within milliseconds (README, Performance) and bounded by the stop grace.
_STOP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_TOOL_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300)


class HistogramObservations:
    """`Observations` into Prometheus histograms (see dispatcher/metrics/stats.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._confirm = Histogram(
            "dispatcher_stop_to_confirm_seconds",
            "Stop sent to StopConfirm received, dispatcher clock, per confirmed stop.",
            buckets=_STOP_BUCKETS,
            registry=registry,
        )
        self._halt = Histogram(
            "dispatcher_stop_to_halt_seconds",
            "Stop received to agent halted, as the commander measured and reported it in StopConfirm.",
            buckets=_STOP_BUCKETS,
            registry=registry,
        )
        self._tool = Histogram(
            "dispatcher_tool_call_duration_seconds",
            "Tool call execution time, by tool and outcome.",
            ("tool", "outcome"),
            buckets=_TOOL_BUCKETS,
            registry=registry,
        )

    def stop_confirmed(self, seconds: float) -> None:
        self._confirm.observe(seconds)

    def stop_halted(self, seconds: float) -> None:
        self._halt.observe(seconds)

    def tool_call(self, tool: str, outcome: str, seconds: float) -> None:
        self._tool.labels(tool, outcome).observe(seconds)


class DispatcherMetrics:
    """One process's metrics: build before the SessionManager (it takes `stats`), then `start`."""

    def __init__(self, listen: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.grpc = GrpcServerMetrics(self.registry)
        self.interceptor = MetricsInterceptor(self.grpc)
        self.stats = RuntimeStats(HistogramObservations(self.registry))
        self._server = MetricsServer(self.registry, listen)
        self._sessions: SessionManager | None = None

    @property
    def address(self) -> str:
        return self._server.address

    def start(self, sessions: SessionManager, loop: asyncio.AbstractEventLoop) -> str:
        """Serve /metrics (OSError when the address cannot be bound); the bound HOST:PORT."""
        self._sessions = sessions
        self.registry.register(LoopCollector(loop, self.collect))
        return self._server.start()

    def close(self) -> None:
        self._server.close()

    def collect(self) -> Iterable[Metric]:
        """Everything read from the sessions (on the event loop)."""
        yield from self.grpc.collect()
        if self._sessions is not None:
            yield from runtime_metrics(self._sessions)


def runtime_metrics(sessions: SessionManager) -> list[Metric]:
    """The `dispatcher_*` counters and gauges: open sessions' counts plus the ended ones'."""
    stats = sessions.stats
    packets_in = dict(stats.packets_in)
    packets_out = dict(stats.packets_out)
    outbox_full = stats.outbox_full
    on_pool = 0
    for handle in sessions.open_sessions():
        if not isinstance(handle, SessionRunner):  # pragma: no cover - the registry holds runners
            continue
        for kind, n in handle.machine.packets_in.items():
            packets_in[kind] = packets_in.get(kind, 0) + n
        for kind, n in handle.packets_out.items():
            packets_out[kind] = packets_out.get(kind, 0) + n
        outbox_full += handle.outbox.full_waits
        on_pool += handle.assignment is not None

    received = CounterMetricFamily(
        "dispatcher_packets_received", "Upstream packets received, by payload kind.", labels=("kind",)
    )
    for kind, n in sorted(packets_in.items()):
        received.add_metric((kind,), n)
    sent = CounterMetricFamily(
        "dispatcher_packets_sent", "Downstream packets written, by signal kind.", labels=("kind",)
    )
    for kind, n in sorted(packets_out.items()):
        sent.add_metric((kind,), n)
    ended = CounterMetricFamily("dispatcher_sessions_ended", "Sessions ended, by final state.", labels=("state",))
    for state, n in sorted(stats.sessions_ended.items()):
        ended.add_metric((state,), n)
    stops = CounterMetricFamily(
        "dispatcher_stops",
        "Sessions that ended by a stop, by stop code and origin kind (policy, operator, timer, ...).",
        labels=("code", "origin"),
    )
    for (code, origin), n in sorted(stats.stops.items()):
        stops.add_metric((code, origin), n)
    dropped = CounterMetricFamily(
        "dispatcher_packets_dropped",
        "Packets dropped, by reason: upstream after_stop / after_finish / after_end (counted when the session "
        "ends), downstream unsent (decided, never written).",
        labels=("reason",),
    )
    for reason, n in sorted(stats.dropped.items()):
        dropped.add_metric((reason,), n)
    tools = CounterMetricFamily(
        "dispatcher_tool_calls",
        "Tool calls ended, by tool and outcome (ok or the error code).",
        labels=("tool", "outcome"),
    )
    for (tool, outcome), n in sorted(stats.tool_calls.items()):
        tools.add_metric((tool, outcome), n)
    metrics: list[Metric] = [
        GaugeMetricFamily("dispatcher_sessions_open", "Sessions open now.", value=sessions.registry.open_count),
        ended,
        received,
        sent,
        stops,
        dropped,
        CounterMetricFamily(
            "dispatcher_outbox_full",
            "Times a session found its outbox full and waited (its commander reads slower than it is sent to).",
            value=outbox_full,
        ),
        tools,
        GaugeMetricFamily(
            "dispatcher_watchers", "Journal followers now (WatchSession, StartSession, Ask).", value=stats.watchers
        ),
        CounterMetricFamily(
            "dispatcher_watchers_cut_off",
            "Watchers ended because they fell behind the journal.",
            value=stats.watchers_cut_off,
        ),
        GaugeMetricFamily("dispatcher_pool_commanders_free", "Idle pool commanders.", value=sessions.free_commanders),
        GaugeMetricFamily(
            "dispatcher_pool_commanders_busy", "Open sessions that run on a pool commander.", value=on_pool
        ),
        GaugeMetricFamily(
            "dispatcher_pool_callers_waiting",
            "Callers waiting for a free pool commander.",
            value=sessions.pool.waiting_count,
        ),
    ]
    lag = sessions.loop_lag
    metrics += [
        GaugeMetricFamily(
            "dispatcher_loop_lag_seconds",
            "How late the event loop woke up at its latest sample (0 while --server-shed-loop-lag-ms is off).",
            value=lag.lag_s,
        ),
        GaugeMetricFamily(
            "dispatcher_overloaded",
            "1 while new sessions are refused because the loop lags (load shedding).",
            value=int(lag.overloaded),
        ),
    ]
    if stats.tokens:
        tokens = CounterMetricFamily("dispatcher_tokens", "Model tokens reported by commanders.", labels=("kind",))
        for kind, n in sorted(stats.tokens.items()):
            tokens.add_metric((kind,), n)
        metrics.append(tokens)
    return metrics
