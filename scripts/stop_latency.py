"""`make stop-latency`: operator stops through the control API, measured over many sessions.

Real processes on loopback: one `dispatcher serve`, one `commander serve -n CONCURRENCY`
pool. Each round starts CONCURRENCY sessions with StartSession (the scripted agent
streaming at --tokens-per-s), waits until each has streamed some content, then stops
them with StopSession, as `dispatcherctl stop` does: one at a time while the others keep
streaming, or with --burst all at once (`dispatcherctl stop --all`). For every stop it
records the dispatcher-measured stop->confirm time (StopSignal sent -> StopConfirm
received) and the operator's StopSession round trip. Prints p50/p90/p99/max; writes
JSON with --json-out. Not a test: it never fails on timing, only when a stop is not
confirmed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from scripts.bench.procs import BIN, running_dispatcher, stop_process
from shared import wire


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.50),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


async def one_round(
    stub: wire.SessionControlServiceStub, round_no: int, concurrency: int, burst: bool
) -> list[dict[str, float]]:
    requests = [
        wire.ctl.StartSessionRequest(
            input_text="Tell me a long story.",
            session_id=f"r{round_no}-{index}",
            wait_for_commander_ms=10_000,
            kinds=[wire.ctl.EVENT_KIND_CONTENT],
        )
        for index in range(concurrency)
    ]
    calls = [stub.StartSession(request) for request in requests]
    # Each session must be mid-answer when stopped: wait for its first content event. While
    # the pool is still connecting, StartSession may be refused (UNAVAILABLE): start it again.
    for index, call in enumerate(calls):
        for _attempt in range(50):
            try:
                first = await asyncio.wait_for(call.read(), 30)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                await asyncio.sleep(0.1)  # a client's retry backoff, not synchronisation
                call = calls[index] = stub.StartSession(requests[index])
        if first is grpc.aio.EOF:
            raise SystemExit(f"a session ended before any content: {await call.code()} {await call.details()}")

    async def stop(index: int) -> dict[str, float]:
        started = time.perf_counter()
        response = await stub.StopSession(
            wire.ctl.StopSessionRequest(session_id=f"r{round_no}-{index}", reason="stop-latency measurement")
        )
        round_trip_ms = (time.perf_counter() - started) * 1000
        if response.result != wire.ctl.STOP_RESULT_CONFIRMED:
            raise SystemExit(f"stop of r{round_no}-{index} not confirmed: {response}")
        return {"stop_to_confirm_ms": response.stop_to_confirm_us / 1000, "round_trip_ms": round_trip_ms}

    if burst:
        results = await asyncio.gather(*(stop(index) for index in range(concurrency)))
    else:  # one at a time, while the other sessions keep streaming
        results = [await stop(index) for index in range(concurrency)]
    for call in calls:
        call.cancel()
    return list(results)


async def measure(target: str, stops: int, concurrency: int, burst: bool) -> list[dict[str, float]]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wire.SessionControlServiceStub(channel)  # StartSession waits for the pool to connect
        samples: list[dict[str, float]] = []
        round_no = 0
        while len(samples) < stops:
            samples += await one_round(stub, round_no, concurrency, burst)
            round_no += 1
        return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stops", type=int, default=200, help="stops to measure (default 200)")
    parser.add_argument("--concurrency", type=int, default=10, help="sessions stopped per round (default 10)")
    parser.add_argument("--tokens-per-s", type=float, default=50.0, help="each agent's pace (default 50)")
    parser.add_argument(
        "--burst", action="store_true", help="stop each round's sessions all at once (default: one at a time)"
    )
    parser.add_argument("--json-out", type=Path, help="write the samples and summary here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="stop-latency-"))
    log_level = os.environ.get("STOP_LATENCY_LOG", "warning")
    with running_dispatcher(workdir, "--log-level", log_level) as dispatcher:
        with (workdir / "pool.log").open("wb") as pool_log:
            pool = subprocess.Popen(
                [str(BIN / "commander"), "serve", "--target", dispatcher.target, "-n", str(args.concurrency),
                 "--tokens-per-s", str(args.tokens_per_s), "--answer-words", "100000", "--log-level", log_level],
                stdout=subprocess.DEVNULL, stderr=pool_log,
            )  # fmt: skip
        try:
            samples = asyncio.run(measure(dispatcher.target, args.stops, args.concurrency, args.burst))
        finally:
            stop_process(pool)
    confirm = summary([s["stop_to_confirm_ms"] for s in samples])
    round_trip = summary([s["round_trip_ms"] for s in samples])
    how = "all at once" if args.burst else "one at a time"
    print(
        f"{len(samples)} operator stops ({how}) among {args.concurrency} streaming sessions, "
        f"agents at {args.tokens_per_s:g} tokens/s"
    )
    print(f"{'':28} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}  (ms)")
    for name, figures in (("stop -> confirm (dispatcher)", confirm), ("StopSession round trip", round_trip)):
        print(f"{name:28} {figures['p50']:8.3f} {figures['p90']:8.3f} {figures['p99']:8.3f} {figures['max']:8.3f}")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(
            json.dumps({"stop_to_confirm_ms": confirm, "round_trip_ms": round_trip, "samples": samples}, indent=1)
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
