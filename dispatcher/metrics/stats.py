"""What the runtime counts for its metrics, as plain Python numbers: no Prometheus here.

The hot path (one upstream packet) adds nothing: each session already counts its packets by
kind (`Session.packets_in`, `SessionRunner.packets_out`), and the exporter sums the open
sessions' counts at scrape time. When a session ends, its counts are folded in here once
(`session_ended`), in the same synchronous step that removes it from the open sessions, so a
scrape (which runs on the event loop) never counts a session twice or misses it.
Per tool call and per watcher the cost is one dict update. Observations that need buckets
(stop->confirm, stop->halt, tool durations) go to an `Observations` sink: a no-op unless
`--metrics-listen` is on.
"""

from __future__ import annotations

from typing import Protocol

from dispatcher.core.actions import SessionOutcome
from shared.model import SessionState

__all__ = ["NO_OBSERVATIONS", "Observations", "RuntimeStats", "drop_reason", "stop_origin"]


class Observations(Protocol):
    """Where the runtime's histogram observations go (the exporter's Prometheus histograms)."""

    def stop_confirmed(self, seconds: float) -> None: ...

    def stop_halted(self, seconds: float) -> None: ...

    def tool_call(self, tool: str, outcome: str, seconds: float) -> None: ...


class _NoObservations:
    def stop_confirmed(self, seconds: float) -> None:
        return None

    def stop_halted(self, seconds: float) -> None:
        return None

    def tool_call(self, tool: str, outcome: str, seconds: float) -> None:
        return None


NO_OBSERVATIONS: Observations = _NoObservations()


def stop_origin(path: tuple[str, ...]) -> str:
    """The kind of a stop's origin (`policy`, `operator`, `timer`, `shutdown`, ...): the first hop
    without its name, so that the label's values stay few (operator names are not labels)."""
    return path[0].split(":", 1)[0] if path else "unknown"


def drop_reason(state: SessionState) -> str:
    """Why an upstream packet of a session that ended in `state` was dropped."""
    if state in (SessionState.STOPPED, SessionState.EXPIRED):
        return "after_stop"
    if state is SessionState.FINISHED:
        return "after_finish"
    return "after_end"


class RuntimeStats:
    """The dispatcher's counters beside what each open session keeps (summed at scrape time)."""

    def __init__(self, observations: Observations = NO_OBSERVATIONS) -> None:
        self.observations = observations
        # Folded in from ended sessions:
        self.packets_in: dict[str, int] = {}
        self.packets_out: dict[str, int] = {}
        self.sessions_ended: dict[str, int] = {}  # by final state
        self.stops: dict[tuple[str, str], int] = {}  # (stop code, origin kind)
        self.dropped: dict[str, int] = {}  # by reason
        self.outbox_full = 0
        # Counted as they happen:
        self.tool_calls: dict[tuple[str, str], int] = {}  # (tool, outcome)
        self.watchers = 0
        self.watchers_cut_off = 0
        # Token usage from the commanders' Usage packets, added when each session ends (the
        # runner); the exporter shows dispatcher_tokens_total{kind} once there are any.
        self.tokens: dict[str, int] = {}

    def session_ended(
        self,
        outcome: SessionOutcome,
        *,
        packets_in: dict[str, int],
        packets_out: dict[str, int],
        dropped_in: int,
        unsent: int,
        outbox_full: int,
    ) -> None:
        """Fold one ended session in (once, when it leaves the open sessions)."""
        _add_all(self.packets_in, packets_in)
        if outcome.stop_confirmed:  # the machine takes it as the stop's end, not as a counted packet
            _add(self.packets_in, "stop_confirm", 1)
        _add_all(self.packets_out, packets_out)
        state = outcome.state.value
        self.sessions_ended[state] = self.sessions_ended.get(state, 0) + 1
        if dropped_in:
            _add(self.dropped, drop_reason(outcome.state), dropped_in)
        if unsent:
            _add(self.dropped, "unsent", unsent)
        self.outbox_full += outbox_full
        stop = outcome.stop
        if stop is not None:
            key = (stop.code.name, stop_origin(stop.path))
            self.stops[key] = self.stops.get(key, 0) + 1
            if outcome.stop_to_confirm_ms is not None:
                self.observations.stop_confirmed(outcome.stop_to_confirm_ms / 1000)
            if outcome.halt_us:
                self.observations.stop_halted(outcome.halt_us / 1e6)

    def packet_written_after_end(self, kind: str) -> None:
        """A downstream packet written after its session was folded in (the last Ack, the stop)."""
        self.packets_out[kind] = self.packets_out.get(kind, 0) + 1

    def tool_call_done(self, tool: str, outcome: str, seconds: float) -> None:
        key = (tool, outcome)
        self.tool_calls[key] = self.tool_calls.get(key, 0) + 1
        self.observations.tool_call(tool, outcome, seconds)

    def add_usage(self, kind: str, tokens: int) -> None:
        """Token usage a commander reported (`kind`: input, output, ...). The hook for Usage packets."""
        _add(self.tokens, kind, tokens)


def _add(counts: dict[str, int], key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


def _add_all(into: dict[str, int], counts: dict[str, int]) -> None:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n
