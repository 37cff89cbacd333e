"""Small statistics helpers: percentiles of latency samples, median with min-max of repetitions."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Spread", "latency_summary", "percentile", "spread"]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation); `values` must not be empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def latency_summary(values_ms: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99, max and mean of latency samples in ms ({"n": 0} when there are none)."""
    if not values_ms:
        return {"n": 0}
    return {
        "n": len(values_ms),
        "p50": percentile(values_ms, 0.50),
        "p90": percentile(values_ms, 0.90),
        "p99": percentile(values_ms, 0.99),
        "max": max(values_ms),
        "mean": statistics.fmean(values_ms),
    }


@dataclass(frozen=True, slots=True)
class Spread:
    """The median of a figure over repetitions, with the smallest and largest repetition."""

    median: float
    low: float
    high: float
    n: int


def spread(values: Sequence[float]) -> Spread | None:
    if not values:
        return None
    return Spread(statistics.median(values), min(values), max(values), len(values))
