"""9. replicas: `dispatcher serve --store redis://...` replicas sharing a real redis-server.

Two measurements, in the same run:

- stop -> confirm through another replica: a session held by replica C (the bench process is its
  commander: it confirms each stop as soon as it reads it), stopped by `StopSession` on replica A
  (`ours`: forwarded by the session directory) and on C itself (`bare`); the operator's round trip
  (call -> answer, which comes once the commander confirmed), p50 and p99.
- sessions/s and tokens/s with 1, 2 and 3 replicas: a `commander serve` pool on each replica and
  `Ask` calls spread round-robin over the replicas (as a balancer would), a fixed number in flight;
  completed sessions and answer words per second over the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from scripts.bench.procs import BIN, Server, running_dispatcher, stop_process
from scripts.bench.report import Figure
from scripts.bench.runner import Budget, Context
from scripts.bench.stats import latency_summary
from shared import wire

__all__ = ["REPLICAS_METHOD", "replicas_case"]

REPLICAS_METHOD = (
    "9. replicas: three `dispatcher serve --store redis://127.0.0.1:PORT/0` processes (each its own port) and "
    "a redis-server (`--save '' --appendonly no`) on this machine. stop->confirm: the bench process holds one "
    "session on replica C (it confirms each StopSignal when it reads it, then opens the next session); "
    "StopSession is called on replica A (`ours`, forwarded through the Redis session directory) or on C "
    "(`bare`), alternating; the figure is the caller's round trip (call -> StopSessionResponse, confirmed). "
    "throughput: a `commander serve -n 4 --tokens-per-s 0 --answer-words 20` pool on each of the first N "
    "replicas and 8 Ask calls in flight, spread round-robin over those N replicas; sessions/s and tokens/s "
    "(answer words) completed over the window. All of it shares the machine's CPUs."
)
_POOL = 4
_IN_FLIGHT = 8
_ANSWER_WORDS = 20
_READY_TIMEOUT_S = 20.0


def replicas_case(ctx: Context) -> None:
    plan, budget = ctx.plan, Budget(ctx.plan.case_budget_s)
    p50 = Figure("9. replicas", "operator stop->confirm p50, via another replica", "ms", "lower",
                 note="bare = StopSession on the replica holding the session")  # fmt: skip
    p99 = Figure("9. replicas", "operator stop->confirm p99, via another replica", "ms", "lower",
                 note="bare = StopSession on the replica holding the session")  # fmt: skip
    sessions = {n: Figure("9. replicas", f"Ask sessions/s, {n} replica(s)", "sessions/s", "higher") for n in (1, 2, 3)}
    tokens = {n: Figure("9. replicas", f"Ask tokens/s, {n} replica(s)", "tokens/s", "higher") for n in (1, 2, 3)}
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        p99.errors.append("redis-server is not installed (make system-deps): case skipped")
    for rep in range(plan.reps if redis_server else 0):
        if budget.expired():
            p99.errors.append(f"rep {rep}: case budget spent")
            break
        workdir = ctx.workdir / f"replicas-{rep}"
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            with _redis(redis_server or "", workdir) as url, _replicas(workdir, url) as group:
                cross, same = asyncio.run(_stops(group, plan.replica_stops))
                for figure, pick in ((p50, "p50"), (p99, "p99")):
                    figure.ours.append(latency_summary(cross)[pick])
                    figure.baseline.append(latency_summary(same)[pick])
                for n in (1, 2, 3):
                    if budget.expired():
                        sessions[n].errors.append(f"rep {rep}: case budget spent")
                        continue
                    done, words = _throughput(workdir, group[:n], plan.replica_window_s)
                    sessions[n].ours.append(done / plan.replica_window_s)
                    tokens[n].ours.append(words / plan.replica_window_s)
        except Exception as exc:  # a failed repetition is a note, not the end of the run
            p99.errors.append(f"rep {rep}: {type(exc).__name__}: {exc}"[:300])
    for figure in (p50, p99, *sessions.values(), *tokens.values()):
        ctx.emit(figure)


@contextlib.contextmanager
def _redis(binary: str, workdir: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
         str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not _pong(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)  # polling a process that offers no event; bounded above
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(process, signal.SIGTERM, 10.0)


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def _replicas(workdir: Path, url: str) -> Iterator[list[Server]]:
    with contextlib.ExitStack() as stack:
        group = []
        for name in ("a", "b", "c"):
            home = Path(tempfile.mkdtemp(prefix=f"replica-{name}-", dir=workdir))
            flags = ("--store", url, "--instance-id", name, "--log-level", "warning", "--log-format", "json",
                     "--idle-timeout-s", "0", "--max-session-s", "0")  # fmt: skip
            group.append(stack.enter_context(running_dispatcher(home, *flags)))
        yield group


async def _stops(group: list[Server], n: int) -> tuple[list[float], list[float]]:
    """`n` stops of sessions on C, alternately through A and through C: their round trips in ms."""
    a, c = group[0].target, group[2].target
    cross: list[float] = []
    same: list[float] = []
    async with grpc.aio.insecure_channel(a) as to_a, grpc.aio.insecure_channel(c) as to_c:
        via = {"cross": wire.SessionControlServiceStub(to_a), "same": wire.SessionControlServiceStub(to_c)}
        for i in range(n):
            route = "cross" if i % 2 == 0 else "same"
            session_id = f"bench-stop-{i}"
            call = wire.AgentInteractionStub(to_c).ChatStream()
            await call.write(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id=session_id)))
            await call.read()  # the Welcome
            confirming = asyncio.get_running_loop().create_task(_confirm(call))
            await _until_listed(via["cross"], session_id)  # A finds it in the directory
            started = time.perf_counter()
            answer = await via[route].StopSession(wire.ctl.StopSessionRequest(session_id=session_id, reason="bench"))
            took = (time.perf_counter() - started) * 1000
            await confirming
            if answer.result == wire.ctl.STOP_RESULT_CONFIRMED:
                (cross if route == "cross" else same).append(took)
    return cross, same


async def _confirm(call: Any) -> None:
    """The commander's side: confirm the stop at once, half-close, read to the end (a stopped
    stream ends ABORTED: that is its end, not an error)."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        while (packet := await call.read()) is not grpc.aio.EOF:
            if packet.HasField("stop"):
                confirm = wire.pb.StopConfirm(stop_id=packet.stop.stop_id)
                await call.write(wire.pb.UpstreamPacket(seq=2, stop_confirm=confirm))
                await call.done_writing()


async def _until_listed(stub: Any, session_id: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        try:
            await stub.GetSession(wire.ctl.GetSessionRequest(session_id=session_id))
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.005)  # a bounded poll: the directory is published within a step


def _throughput(workdir: Path, replicas: list[Server], window_s: float) -> tuple[int, int]:
    """Sessions and answer words completed in `window_s` by Asks spread over `replicas`' pools."""
    pools = []
    try:
        for server in replicas:
            log = (workdir / f"pool-{server.pid}.log").open("wb")
            command = [str(BIN / "commander"), "serve", "--target", server.target, "-n", str(_POOL), "--tokens-per-s",
                       "0", "--answer-words", str(_ANSWER_WORDS), "--log-level", "warning"]  # fmt: skip
            pools.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        return asyncio.run(_asks([server.target for server in replicas], window_s))
    finally:
        for pool in pools:
            stop_process(pool, signal.SIGTERM, 10.0)


async def _asks(targets: list[str], window_s: float) -> tuple[int, int]:
    channels = [grpc.aio.insecure_channel(target) for target in targets]
    stubs = [wire.SessionControlServiceStub(channel) for channel in channels]
    try:
        await _pools_ready(stubs)
        done = words = 0
        next_stub = 0
        end = time.monotonic() + window_s

        async def one() -> None:
            nonlocal done, words, next_stub
            while time.monotonic() < end:
                stub = stubs[next_stub % len(stubs)]
                next_stub += 1
                answer = await stub.Ask(wire.ctl.AskRequest(input_text="tell me", wait_for_commander_ms=5000))
                if time.monotonic() <= end and answer.outcome.state == wire.ctl.SESSION_STATE_FINISHED:
                    done += 1
                    words += len(answer.answer.split())

        await asyncio.gather(*(one() for _ in range(_IN_FLIGHT)))
        return done, words
    finally:
        for channel in channels:
            await channel.close()


async def _pools_ready(stubs: list[Any]) -> None:
    """Every pool's commanders registered: one quick Ask per replica answers."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    for stub in stubs:
        while True:
            try:
                await stub.Ask(wire.ctl.AskRequest(input_text="ready?", wait_for_commander_ms=1000))
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
