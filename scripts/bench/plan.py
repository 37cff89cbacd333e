"""How big each case is: `QUICK` (make bench-quick, about three minutes) and `FULL` (make bench)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FULL", "PLANS", "QUICK", "Plan"]


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    reps: int  # repetitions of every case (ours and baseline interleaved in each)
    throughput_sessions: tuple[int, ...]
    throughput_packets: int  # per run, shared by the sessions
    tool_sessions: tuple[int, ...]
    tool_window_s: float
    stop_paced_sessions: tuple[int, ...]
    stop_coalesced_sessions: tuple[int, ...]  # paced, the loader's writer joining queued tokens
    stop_full_speed_sessions: tuple[int, ...]
    stop_window_s: float
    stops_per_s: float  # stop triggers per second over all sessions
    capacity_steps: tuple[int, ...]  # paced sessions per step, ramped until a step fails
    capacity_window_s: float
    capacity_reps: int
    memory_sessions: tuple[int, ...]
    serialization_number: int  # timeit calls per measurement
    case_budget_s: float  # a case stops starting new runs after this long (it reports what it has)
    seed_steps: tuple[int, ...] = (100, 200, 400, 800)  # seed-era sessions per step (case 7)
    seed_session_s: float = 4.0  # how long each seed-era session streams before is_finish
    tokens_per_s: float = 50.0
    capacity_tool_every_s: float = 3.0
    capacity_stops_per_s: float = 10.0
    capacity_limit_ms: float = 50.0
    paced_warmup_s: float = 1.0  # paced sessions stream this long before the measured window opens
    stop_wait_s: float = 3.0  # after the window, how long a sent stop trigger may still take
    gateway_events: int = 20_000  # content events of the gateway case's full-speed session
    gateway_rate: float = 200.0  # events/s of its paced session
    gateway_paced_s: float = 5.0  # how long the paced session is written
    replica_stops: int = 200  # case 9: stops of a session on replica C, half through A, half through C
    replica_window_s: float = 5.0  # case 9: the Ask throughput window for each replica count


QUICK = Plan(
    name="quick",
    reps=1,
    throughput_sessions=(1, 10, 100),
    throughput_packets=20_000,
    tool_sessions=(1, 100),
    tool_window_s=1.5,
    stop_paced_sessions=(1, 100, 1000),
    stop_coalesced_sessions=(1000,),
    stop_full_speed_sessions=(100,),
    stop_window_s=2.0,
    stops_per_s=25.0,
    capacity_steps=(100, 200, 400),
    capacity_window_s=2.0,
    capacity_reps=1,
    memory_sessions=(1000,),
    serialization_number=10_000,
    case_budget_s=40.0,
    paced_warmup_s=0.5,
    stop_wait_s=1.5,
    gateway_events=5_000,
    gateway_paced_s=2.0,
    replica_stops=40,
    replica_window_s=2.0,
)

FULL = Plan(
    name="full",
    reps=3,
    throughput_sessions=(1, 10, 100),
    throughput_packets=30_000,
    tool_sessions=(1, 100),
    tool_window_s=4.0,
    stop_paced_sessions=(1, 100, 1000),
    stop_coalesced_sessions=(100, 1000),
    stop_full_speed_sessions=(1, 100, 1000),
    stop_window_s=5.0,
    stops_per_s=40.0,
    capacity_steps=(50, 100, 150, 200, 300, 400, 600, 800, 1000, 1500),
    capacity_window_s=5.0,
    capacity_reps=2,
    memory_sessions=(1000, 10_000),
    serialization_number=50_000,
    case_budget_s=420.0,
    seed_steps=(100, 200, 300, 400, 600, 800, 1000, 1200, 1600),
    seed_session_s=8.0,
)

PLANS = {plan.name: plan for plan in (QUICK, FULL)}
