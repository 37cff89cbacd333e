"""The benchmark's arithmetic: percentiles, paired ratios and target verdicts decide what
`make bench` prints as met or missed, so they are tested like product code."""

from __future__ import annotations

import pytest

from scripts.bench.report import Target, ratio_of
from scripts.bench.stats import latency_summary, percentile, spread
from scripts.bench.stops import StopCase


def test_percentile_is_nearest_rank_without_interpolation() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.50) == 51.0  # rank round(0.5 * 99) = 50 (0-based)
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 0.0) == 1.0  # unsorted input


def test_latency_summary_of_no_samples_says_so() -> None:
    assert latency_summary([]) == {"n": 0}
    summary = latency_summary([1.0, 2.0, 3.0, 10.0])
    assert summary["n"] == 4
    assert summary["max"] == 10.0
    assert summary["mean"] == pytest.approx(4.0)


def test_ratio_pairs_repetitions_then_takes_the_median() -> None:
    # Pairs 0.5, 2.0, 3.0 -> 2.0; the ratio of the medians would be 4 / 2 = 2.0 too, so
    # pick a case where they differ: pairs 1.0, 1.0, 9.0 -> 1.0 against 3 / 1 = 3.0.
    assert ratio_of([1.0, 4.0, 9.0], [2.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert ratio_of([1.0, 3.0, 9.0], [1.0, 3.0, 1.0]) == pytest.approx(1.0)
    assert ratio_of([4.0, 6.0], [2.0]) == pytest.approx(2.5)  # counts differ: medians
    assert ratio_of([], [1.0]) is None
    assert ratio_of([1.0], []) is None


def test_target_verdicts() -> None:
    at_least = Target("≥ 0.8×", ratio_at_least=0.8)
    assert at_least.check(spread([1.0]), 0.8) == "yes"
    assert at_least.check(spread([1.0]), 0.79) == "**no**"
    assert at_least.check(spread([1.0]), None) == "n/a"
    at_most_ms = Target("p99 ≤ 20 ms", ours_at_most=20.0)
    assert at_most_ms.check(spread([10.0, 30.0, 19.0]), None) == "yes"  # the median is judged
    assert at_most_ms.check(spread([21.0]), None) == "**no**"
    assert at_most_ms.check(None, None) == "n/a"
    assert Target("state the number").check(spread([1.0]), 1.0) == ""


@pytest.mark.parametrize("coalesce", [False, True])
def test_paced_stop_targets_apply_with_and_without_coalescing(coalesce: bool) -> None:
    hundred = StopCase("paced", 100, coalesce=coalesce).target()
    thousand = StopCase("paced", 1000, coalesce=coalesce).target()
    assert hundred is not None and hundred.ours_at_most == 5.0
    assert thousand is not None and thousand.ours_at_most == 20.0
    assert StopCase("full speed", 1000, coalesce=coalesce).target() is None
    assert StopCase("paced", 1, coalesce=coalesce).target() is None
