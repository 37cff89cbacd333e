"""`commander run|serve --metrics-listen HOST:PORT`: the commander's own Prometheus metrics.

- `commander_sessions_total{state}`: sessions ended, by outcome (FINISHED, STOPPED, ...);
- `commander_stop_to_halt_seconds`: a stop received -> the agent unwound (this side's clock);
- `commander_time_to_first_token_seconds`: the handshake done (the session in force, the agent
  starts) -> the agent's first content delta handed to the stream. For the scripted agent that
  is its `--first-token-delay-s` plus scheduling; for a model backend, its time to first token.

Observations are per session (one Counter increment and at most two Histogram observations),
never per packet. The registry is this process's own; the HTTP side is shared/metrics.py's.
A model backend's request latency belongs beside these once one runs (another branch adds models).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram

from commander.actions import SessionResult
from commander.events import ContentEmitted, HandshakeDone, Observer, SessionEvent
from shared.metrics import MetricsServer

__all__ = ["CommanderMetrics"]

_STOP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class CommanderMetrics:
    """One commander process's metrics and their /metrics endpoint (`start` binds it)."""

    def __init__(self, listen: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._sessions = Counter(
            "commander_sessions", "Sessions ended, by outcome state.", ("state",), registry=self.registry
        )
        self._halt = Histogram(
            "commander_stop_to_halt_seconds",
            "Stop received to agent halted (cancelled and unwound), commander clock.",
            buckets=_STOP_BUCKETS,
            registry=self.registry,
        )
        self._first_token = Histogram(
            "commander_time_to_first_token_seconds",
            "Handshake done to the agent's first content delta handed to the stream.",
            buckets=_FIRST_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self._server = MetricsServer(self.registry, listen)

    @property
    def address(self) -> str:
        return self._server.address

    def start(self) -> str:
        """Serve /metrics; OSError naming the address when it cannot bind."""
        return self._server.start()

    def close(self) -> None:
        self._server.close()

    def observing(self, inner: Observer) -> Observer:
        """An observer for one session that times its first token, then passes every event on."""
        return _FirstToken(inner, self._first_token)

    def session_ended(self, result: SessionResult) -> None:
        self._sessions.labels(result.state.value).inc()
        if result.stop_to_halt_ms is not None:
            self._halt.observe(result.stop_to_halt_ms / 1000)


class _FirstToken(Observer):
    __slots__ = ("_histogram", "_inner", "_started_at")

    def __init__(self, inner: Observer, histogram: Histogram) -> None:
        self._inner = inner
        self._histogram = histogram
        self._started_at: float | None = None

    def __call__(self, event: SessionEvent) -> None:
        if isinstance(event, HandshakeDone):
            self._started_at = time.perf_counter()
        elif isinstance(event, ContentEmitted) and self._started_at is not None:
            self._histogram.observe(time.perf_counter() - self._started_at)
            self._started_at = None  # the first one only
        self._inner(event)
