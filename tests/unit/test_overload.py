"""The loop-lag guard: when a dispatcher counts itself overloaded, and when it stops."""

from __future__ import annotations

import pytest

from dispatcher.sessions.overload import OVER_SAMPLES, LoopLag


def test_one_late_wake_up_is_not_an_overload() -> None:
    lag = LoopLag(limit_s=0.5)
    lag.observe(2.0)  # a GC pause, a burst of opens
    assert not lag.overloaded
    lag.observe(0.1)
    lag.observe(2.0)
    assert not lag.overloaded


def test_sustained_lag_is_an_overload_until_one_sample_under_the_limit() -> None:
    lag = LoopLag(limit_s=0.5)
    for _ in range(OVER_SAMPLES):
        lag.observe(0.8)
    assert lag.overloaded
    assert "800 ms behind (limit 500 ms)" in lag.refusal()
    lag.observe(0.8)
    assert lag.overloaded
    lag.observe(0.2)
    assert not lag.overloaded


@pytest.mark.parametrize("lag_s", [0.0, 5.0, 60.0])
def test_a_zero_limit_never_sheds(lag_s: float) -> None:
    lag = LoopLag(limit_s=0)
    for _ in range(5):
        lag.observe(lag_s)
    assert not lag.overloaded


async def test_run_returns_at_once_when_shedding_is_off() -> None:
    await LoopLag(limit_s=0).run()  # no task left sampling a loop nobody asked about
