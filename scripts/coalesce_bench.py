"""Adaptive coalescing, measured: tokens/s at saturation and latency at low load, on vs off.

A real `dispatcher serve` subprocess on loopback; the commander sessions run in this
process (one channel, like a `commander serve` pool), each with an agent that says
single-word tokens.

1. Saturation: CONCURRENCY sessions at once, every agent at full speed, --tokens in all
   (split between the sessions). Tokens/s = tokens delivered (sessions FINISHED: the
   dispatcher processed every packet up to is_finish) / wall time from the first session
   opening to the last one ending. Median of --runs runs per mode; also the packets sent.
2. Low load: --paced-sessions sessions with coalescing and as many without, all at once
   (same moment, loop and dispatcher for both), each at --pace tokens/s. A WatchSession
   watcher per session (attached before the agent's first token) timestamps each content
   event as it arrives; a token's latency is its say() call -> the arrival of the event
   carrying it (commander -> dispatcher -> watcher, the same path in both modes). Also
   packets per session and session time, which should be the same in both modes.

Not a test: it fails only when a session does not finish.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import grpc

from commander import AgentContext, CommanderConfig, ConnectionConfig, SessionResult, run_session
from commander.events import HandshakeDone, Observer, SessionEvent
from scripts.bench.procs import running_dispatcher
from shared import wire
from shared.log import configure_logging
from shared.model import SessionState

SESSION_TIMEOUT_S = 120.0


@dataclass(slots=True)
class Tokens:
    """One session's agent: says `count` tokens, at `pace` tokens/s (0 = full speed)."""

    count: int
    pace: float = 0.0
    start: anyio.Event | None = None  # wait for it before the first token (a watcher attached)
    said_at: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    async def __call__(self, ctx: AgentContext, prompt: str) -> None:
        if self.start is not None:
            await self.start.wait()
        for i in range(self.count):
            token = f" w{i % 1000}"
            self.said_at.append(time.perf_counter())
            self.texts.append(token)
            await ctx.say(token)
            if self.pace:
                await anyio.sleep(1 / self.pace)


def config_for(target: str, coalesce: bool) -> CommanderConfig:
    return CommanderConfig(connection=ConnectionConfig(target=target, coalesce=coalesce))


def finished(results: Sequence[SessionResult]) -> None:
    bad = [r for r in results if r.state is not SessionState.FINISHED]
    if bad:
        raise SystemExit(f"{len(bad)} session(s) did not finish, e.g. {bad[0]}")


async def saturation(target: str, *, coalesce: bool, concurrency: int, tokens: int) -> dict[str, float]:
    per_session = max(1, tokens // concurrency)
    results: list[SessionResult] = []
    async with grpc.aio.insecure_channel(target) as channel:

        async def one() -> None:
            agent = Tokens(per_session)
            results.append(await run_session(agent, "", channel=channel, config=config_for(target, coalesce)))

        started = time.perf_counter()
        with anyio.fail_after(SESSION_TIMEOUT_S):
            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(one)
        elapsed = time.perf_counter() - started
    finished(results)
    delivered = per_session * concurrency
    return {
        "tokens_per_s": delivered / elapsed,
        "packets": sum(r.packets_sent for r in results),
        "tokens": delivered,
        "elapsed_s": elapsed,
    }


async def watch(
    stub: wire.SessionControlServiceStub, session_id: str, attached: anyio.Event
) -> list[tuple[float, int]]:
    """(arrival time, text length) of every content event of the session, in order."""
    arrivals: list[tuple[float, int]] = []
    call = stub.WatchSession(wire.ctl.WatchSessionRequest(session_id=session_id), timeout=SESSION_TIMEOUT_S)
    async for response in call:
        now = time.perf_counter()
        attached.set()  # the first event (the session's OPEN state) is in: nothing can be missed
        if response.event.HasField("content"):
            arrivals.append((now, len(response.event.content.text)))
    return arrivals


def latencies(agent: Tokens, arrivals: list[tuple[float, int]]) -> list[float]:
    """Per token: say() -> arrival of the (possibly merged) event whose text ends at or after it."""
    out: list[float] = []
    event = 0
    delivered = arrivals[0][1] if arrivals else 0
    end = 0
    for said_at, text in zip(agent.said_at, agent.texts, strict=True):
        end += len(text)
        while delivered < end:
            event += 1
            delivered += arrivals[event][1]
        out.append((arrivals[event][0] - said_at) * 1000)
    return out


async def low_load(target: str, *, sessions: int, tokens: int, pace: float) -> dict[bool, dict[str, float]]:
    """`sessions` paced sessions with coalescing and as many without, all at once: the two
    modes share the same moment, loop and dispatcher, so only the mode differs."""
    samples: dict[bool, list[float]] = {False: [], True: []}
    results: dict[bool, list[SessionResult]] = {False: [], True: []}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wire.SessionControlServiceStub(channel)

        async def one(index: int, coalesce: bool) -> None:
            opened, attached = anyio.Event(), anyio.Event()
            agent = Tokens(tokens, pace, start=attached)

            class OnOpen(Observer):
                def __call__(self, event: SessionEvent) -> None:
                    if isinstance(event, HandshakeDone):
                        opened.set()

            arrivals: list[tuple[float, int]] = []

            async def watcher(session_id: str) -> None:
                await opened.wait()
                arrivals.extend(await watch(stub, session_id, attached))

            session_id = f"paced-{'on' if coalesce else 'off'}-{index}-{time.monotonic_ns()}"
            async with anyio.create_task_group() as tg:
                tg.start_soon(watcher, session_id)
                result = await run_session(
                    agent,
                    "",
                    channel=channel,
                    config=config_for(target, coalesce),
                    session_id=session_id,
                    observer=OnOpen(),
                )
            results[coalesce].append(result)
            samples[coalesce].extend(latencies(agent, arrivals))

        # No fail_after here: the watchers await grpc directly; their calls carry a deadline.
        async with anyio.create_task_group() as tg:
            for index in range(sessions):
                first = bool(index % 2)  # alternate which mode's token goes first in each tick
                tg.start_soon(one, index, first)
                tg.start_soon(one, index, not first)
    out: dict[bool, dict[str, float]] = {}
    for coalesce in (False, True):
        finished(results[coalesce])
        ordered = sorted(samples[coalesce])
        out[coalesce] = {
            "p50_ms": ordered[len(ordered) // 2],
            "p90_ms": ordered[int(len(ordered) * 0.9)],
            "max_ms": ordered[-1],
            "packets_per_session": statistics.fmean(r.packets_sent for r in results[coalesce]),
            "session_s": statistics.fmean(r.duration_s for r in results[coalesce]),
        }
    return out


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median tokens/s (its other figures kept together with it)."""
    return sorted(runs, key=lambda run: run["tokens_per_s"])[len(runs) // 2]


async def measure(target: str, args: argparse.Namespace) -> None:
    # Warm-up, not shown: first connections, imports, the dispatcher's first sessions.
    await saturation(target, coalesce=False, concurrency=2, tokens=2_000)
    await low_load(target, sessions=1, tokens=5, pace=args.pace)
    print(
        f"saturation: agents at full speed, {args.tokens} tokens per run, median of {args.runs} runs "
        f"(dispatcher subprocess, commander sessions in this process; {os.cpu_count()} CPUs)"
    )
    print(f"{'sessions':>8} {'coalesce':>8} {'tokens/s':>10} {'packets':>8} {'tokens/packet':>14} {'speed-up':>9}")
    for concurrency in args.concurrency:
        base = 0.0
        for coalesce in (False, True):
            runs = [
                await saturation(target, coalesce=coalesce, concurrency=concurrency, tokens=args.tokens)
                for _ in range(args.runs)
            ]
            run = median_run(runs)
            base = base or run["tokens_per_s"]
            print(
                f"{concurrency:>8} {'on' if coalesce else 'off':>8} {run['tokens_per_s']:>10,.0f} "
                f"{run['packets']:>8,.0f} {run['tokens'] / run['packets']:>14.1f} "
                f"{run['tokens_per_s'] / base:>8.2f}x"
            )
    print()
    print(
        f"low load: {args.paced_sessions} sessions with and {args.paced_sessions} without coalescing, all at once, "
        f"each at {args.pace:g} tokens/s for {args.paced_tokens} tokens; "
        "latency = say() -> content event at a WatchSession watcher"
    )
    print(f"{'coalesce':>8} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8} {'packets/session':>16} {'session s':>10}")
    paced = await low_load(target, sessions=args.paced_sessions, tokens=args.paced_tokens, pace=args.pace)
    for coalesce, figures in paced.items():
        print(
            f"{'on' if coalesce else 'off':>8} {figures['p50_ms']:>8.3f} {figures['p90_ms']:>8.3f} "
            f"{figures['max_ms']:>8.3f} {figures['packets_per_session']:>16.1f} {figures['session_s']:>10.3f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=40_000, help="tokens per saturation run (default 40000)")
    parser.add_argument("--runs", type=int, default=3, help="saturation runs per mode; the median is shown")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 10, 100], help="sessions at once (default 1 10 100)"
    )
    parser.add_argument("--pace", type=float, default=20.0, help="low load: tokens/s per agent (default 20)")
    parser.add_argument("--paced-sessions", type=int, default=10, help="low load: sessions at once (default 10)")
    parser.add_argument("--paced-tokens", type=int, default=40, help="low load: tokens per session (default 40)")
    args = parser.parse_args()
    configure_logging("warning")
    workdir = Path(tempfile.mkdtemp(prefix="coalesce-bench-"))
    log_level = os.environ.get("COALESCE_BENCH_LOG", "warning")
    with running_dispatcher(workdir, "--log-level", log_level) as dispatcher:
        anyio.run(measure, dispatcher.target, args)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
