"""8. gateway: session events through the HTTP/SSE gateway against WatchSession directly, in
the same run. One `dispatcher serve`, one `dispatcher-gateway` in front of it, and two reader
processes (scripts/bench/gateway_reader.py) on the same live session: one reads the
gateway's `GET /v1/sessions/{id}/events`, the other WatchSession. The session is written by
this process (Hello, then content packets): once as fast as grpc takes them (events/s each
reader gets) and once paced (the delivery latency of each event: the reader's receipt minus
the event's journal time). "ours" is the SSE reader, "bare" the direct one, so the ratio and
the difference price the gateway's hop.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from scripts.bench.procs import BIN, running_dispatcher, stop_process
from scripts.bench.report import Figure
from scripts.bench.runner import Budget, Context
from scripts.bench.stats import latency_summary
from shared import wire

__all__ = ["GATEWAY_METHOD", "gateway_case"]

GATEWAY_METHOD = (
    "8. gateway: one session written by the bench process (content packets of one 4-character token), read at "
    "once by two child processes: one through `dispatcher-gateway` (GET /v1/sessions/{id}/events, httpx; "
    "`ours`), one by WatchSession directly (`bare`). events/s = content events / (first -> last content "
    "event received) while the session is written as fast as grpc takes it; delivery latency = the "
    "reader's receipt (its wall clock) minus the event's at_ms (the dispatcher's, when journaled; one "
    "machine, 1 ms resolution) while the session is paced. The journal is made large enough that neither "
    "reader is cut off. Everything shares the machine's CPUs."
)
_READY_TIMEOUT_S = 20.0
_END_TIMEOUT_S = 60.0
_BIG_JOURNAL = ("--session-journal-max-events", "1000000", "--session-journal-max-bytes", str(1 << 30))


def gateway_case(ctx: Context) -> None:
    plan, budget = ctx.plan, Budget(ctx.plan.case_budget_s)
    rate = Figure("8. gateway", "events/s to one reader, full speed", "events/s", "higher",
                  note="bare = WatchSession directly")  # fmt: skip
    p50 = Figure("8. gateway", f"event delivery p50, paced {plan.gateway_rate:g}/s", "ms", "lower")
    p99 = Figure("8. gateway", f"event delivery p99, paced {plan.gateway_rate:g}/s", "ms", "lower")
    for rep in range(plan.reps):
        if budget.expired():
            rate.errors.append(f"rep {rep}: case budget spent")
            break
        workdir = ctx.workdir / f"gateway-{rep}"
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            with running_dispatcher(workdir, *_BIG_JOURNAL, "--log-level", "warning") as d:
                gateway, url = _start_gateway(workdir, d.target)
                try:
                    fast = asyncio.run(_one_session(d.target, url, f"gw-fast-{rep}", plan.gateway_events, 0.0))
                    paced_n = max(1, round(plan.gateway_rate * plan.gateway_paced_s))
                    paced = asyncio.run(_one_session(d.target, url, f"gw-paced-{rep}", paced_n, plan.gateway_rate))
                finally:
                    stop_process(gateway)
        except Exception as exc:  # a failed repetition is a note, not the end of the run
            rate.errors.append(f"rep {rep}: {type(exc).__name__}: {exc}"[:300])
            continue
        for side, key in (("ours", "sse"), ("baseline", "watch")):
            getattr(rate, side).append(_events_per_s(fast[key]))
            summary = latency_summary(paced[key]["latencies_ms"])
            getattr(p50, side).append(summary["p50"])
            getattr(p99, side).append(summary["p99"])
        added = [a - b for a, b in zip(p50.ours, p50.baseline, strict=True)]
        p50.details.append({"rep": rep, "added_p50_ms": added[-1]})
    for figure in (rate, p50, p99):
        ctx.emit(figure)


def _events_per_s(result: dict[str, Any]) -> float:
    span = result["last_s"] - result["first_s"]
    return len(result["latencies_ms"]) / span if span > 0 else 0.0


def _start_gateway(workdir: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    log_path = workdir / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "dispatcher-gateway"), "--target", target, "--listen", "127.0.0.1:0", "--id", "bench",
             "--log-format", "json"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        for line in log_path.read_text().splitlines():
            if '"gateway.serving"' in line:
                return process, "http://" + json.loads(line)["address"]
        time.sleep(0.02)  # polling a file another process writes; bounded above
    stop_process(process)
    raise RuntimeError(f"the gateway did not start: {log_path.read_text()[-500:]}")


@asynccontextmanager
async def _reader(mode: str, target: str, session_id: str) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scripts.bench.gateway_reader", "--mode", mode, "--target", target,
        "--session", session_id, stdout=asyncio.subprocess.PIPE, limit=1 << 26,  # the result: one long line
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _result(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), _END_TIMEOUT_S)
    result: dict[str, Any] = json.loads(line)
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


async def _one_session(target: str, url: str, session_id: str, n: int, per_s: float) -> dict[str, dict[str, Any]]:
    """Write one session of `n` content packets (`per_s` 0: as fast as grpc takes them) while
    both readers follow it; their results by mode."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = wire.AgentInteractionStub(channel).ChatStream()
        hello = wire.pb.Hello(session_id=session_id)
        await call.write(wire.pb.UpstreamPacket(seq=1, session_id=session_id, hello=hello))
        await call.read()  # the Welcome: the session and its journal exist
        drain = asyncio.get_running_loop().create_task(_drain(call))
        try:
            async with _reader("sse", url, session_id) as sse, _reader("watch", target, session_id) as watch:
                for process in (sse, watch):
                    assert process.stdout is not None
                    ready = await asyncio.wait_for(process.stdout.readline(), _READY_TIMEOUT_S)
                    if ready.strip() != b"ready":
                        raise RuntimeError(f"a reader did not start: {ready[:300]!r}")
                started = time.monotonic()
                for seq in range(2, n + 2):
                    packet = wire.pb.UpstreamPacket(seq=seq, session_id=session_id,
                                                    content=wire.pb.ContentChunk(text=" tok"))  # fmt: skip
                    await call.write(packet)
                    if per_s:
                        delay = started + (seq - 1) / per_s - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)  # pacing the writer, not synchronisation
                await call.write(wire.pb.UpstreamPacket(seq=n + 2, session_id=session_id,
                                                        content=wire.pb.ContentChunk(is_finish=True)))  # fmt: skip
                await call.done_writing()
                return {"sse": await _result(sse), "watch": await _result(watch)}
        finally:
            drain.cancel()
            call.cancel()


async def _drain(call: Any) -> None:
    """Reads the downstream (acks) so that its flow-control window never stalls the stream."""
    while await call.read() is not grpc.aio.EOF:
        pass
