"""The real processes of a chaos run: `dispatcher serve`, `commander run` / `commander serve`,
`dispatcherctl watch`, and an in-process view of the control API to time detection and recovery.

Every process runs from the repository root (so `scripts.chaos.*` imports for `--agent` and
`--tools`), writes to a file in the run's directory, and is waited for with a bound; one that
overstays is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from shared import wire

__all__ = [
    "Commander",
    "DispatcherProc",
    "Features",
    "Monitor",
    "Timeline",
    "keepalive_flags",
    "start_commander",
    "start_dispatcher",
    "watch_journal",
]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.025  # the monitor's poll of GetSession: the resolution of the detect / recover times

# Short keepalive on both sides so a blackhole is detected in seconds: a PING after 1 s without
# activity, dead when unanswered for 1 s more. grpc clients never ping more often than once a
# second, and the server allows one every 500 ms (it must allow the client's rate, or the client
# is refused with too_many_pings).
KEEPALIVE_TIME_MS = 1000
KEEPALIVE_TIMEOUT_MS = 1000
HANDSHAKE_TIMEOUT_S = 30.0
KEEPALIVE_BOUND_S = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000 + 1.0  # + a PING's timer slack

ENDED = {
    wire.ctl.SESSION_STATE_FINISHED,
    wire.ctl.SESSION_STATE_STOPPED,
    wire.ctl.SESSION_STATE_FAILED,
    wire.ctl.SESSION_STATE_CANCELLED,
    wire.ctl.SESSION_STATE_EXPIRED,
}
DETACHED = getattr(wire.ctl, "SESSION_STATE_DETACHED", 10)


def env(tool_log: Path) -> dict[str, str]:
    return {**os.environ, "GRPC_VERBOSITY": "ERROR", "CHAOS_TOOL_LOG": str(tool_log), "PYTHONPATH": str(ROOT)}


def keepalive_flags(server: bool) -> list[str]:
    flags = ["--keepalive-time-ms", str(KEEPALIVE_TIME_MS), "--keepalive-timeout-ms", str(KEEPALIVE_TIMEOUT_MS)]
    if server:
        flags += ["--keepalive-min-ping-interval-ms", "500"]
    else:
        # The dispatcher under test speaks today's contract: a Welcome later than the default
        # 5 s (seen with 1 000 sessions starting at once on two cores, --full) must not make a
        # commander fall back to compatibility mode, which cannot resume.
        flags += ["--connection-handshake-timeout-s", str(HANDSHAKE_TIMEOUT_S)]
    return flags


@dataclass(frozen=True, slots=True)
class Features:
    """What this build's CLIs offer (read from their --help): resume and the durable store."""

    resume: bool
    store: bool

    @classmethod
    async def detect(cls) -> Features:
        serve = await _help(str(BIN / "dispatcher"), "serve")
        run = await _help(str(BIN / "commander"), "run")
        return cls(
            resume="--session-resume-window-s" in serve and "--resume-timeout-s" in run,
            store="--store" in serve,
        )


async def _help(*command: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, "--help", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), READY_TIMEOUT_S)
    return out.decode(errors="replace")


@dataclass
class DispatcherProc:
    process: asyncio.subprocess.Process
    address: str
    log_path: Path

    async def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)

    async def stop(self) -> None:
        await _stop(self.process)


async def _stop(process: asyncio.subprocess.Process, signum: int = signal.SIGTERM) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)


async def start_dispatcher(workdir: Path, tool_log: Path, name: str, *flags: str) -> DispatcherProc:
    ready = workdir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    log_path = workdir / f"{name}.log"
    command = [
        str(BIN / "dispatcher"), "serve", "--listen", "127.0.0.1:0", "--ready-file", str(ready),
        "--instance-id", f"chaos-{name}", "--log-format", "json", "--log-level", "info",
        "--tools", "scripts.chaos.tools:tools", *keepalive_flags(server=True), *flags,
    ]  # fmt: skip
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, env=env(tool_log), stdout=log, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (ready.exists() and ready.read_text().endswith("\n")):
        if process.returncode is not None:
            raise RuntimeError(f"dispatcher {name} exited early: {log_path.read_text()[-800:]}")
        if time.monotonic() > deadline:
            await _stop(process)
            raise RuntimeError(f"dispatcher {name} not ready within {READY_TIMEOUT_S:g} s")
        await asyncio.sleep(0.02)  # polling a file another process writes; bounded above
    return DispatcherProc(process, ready.read_text().strip(), log_path)


@contextlib.asynccontextmanager
async def dispatcher(workdir: Path, tool_log: Path, name: str, *flags: str) -> AsyncIterator[DispatcherProc]:
    proc = await start_dispatcher(workdir, tool_log, name, *flags)
    try:
        yield proc
    finally:
        await proc.stop()


@dataclass
class Commander:
    """One `commander run --json` process and, once it exited, its SessionResult."""

    session_id: str
    process: asyncio.subprocess.Process
    out_path: Path
    started_at: float
    result: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    async def wait(self, timeout_s: float) -> None:
        try:
            self.exit_code = await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            await _stop(self.process, signal.SIGKILL)
            self.exit_code = None
        for line in reversed(self.out_path.read_text(errors="replace").splitlines()):
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    value = json.loads(line)
                    if isinstance(value, dict) and value.get("event") == "SessionResult":
                        self.result = value
                        break

    async def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.exit_code = await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)


async def start_commander(
    workdir: Path, tool_log: Path, target: str, session_id: str, prompt: str, *flags: str
) -> Commander:
    out_path = workdir / f"commander-{session_id}.out"
    command = [
        str(BIN / "commander"), "run", "--target", target, "--session-id", session_id,
        "--agent", "scripts.chaos.agent:numbered", "--prompt", prompt, "--json",
        *keepalive_flags(server=False), *flags,
    ]  # fmt: skip
    with out_path.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, env=env(tool_log), stdout=out, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    return Commander(session_id, process, out_path, time.monotonic())


@contextlib.asynccontextmanager
async def commander_pool(
    workdir: Path, tool_log: Path, target: str, n: int, name: str = "pool"
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`commander serve -n N` with the chaos agent (StartSession hands it sessions)."""
    command = [
        str(BIN / "commander"), "serve", "--target", target, "-n", str(n),
        "--agent", "scripts.chaos.agent:numbered", *keepalive_flags(server=False),
    ]  # fmt: skip
    with (workdir / f"{name}.out").open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, env=env(tool_log), stdout=out, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    try:
        yield process
    finally:
        await _stop(process)


async def watch_journal(address: str, session_id: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The session's whole journal, as `dispatcherctl watch SID --from 1 --json` prints it."""
    process = await asyncio.create_subprocess_exec(
        str(BIN / "dispatcherctl"), "--target", address, "watch", session_id, "--from", "1", "--json",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        await _stop(process, signal.SIGKILL)
        return []
    events = []
    for line in out.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict) and "seq" in value:
                events.append(value)
    return events


@dataclass(slots=True)
class Timeline:
    """What the monitor saw of one session (monotonic times)."""

    events: int = 0  # last_event_seq
    state: int = 0
    resumes: int = 0
    detached_at: float | None = None  # first seen DETACHED
    resumed_at: float | None = None  # first seen with resumes >= 1 and not DETACHED
    ended_at: float | None = None
    reason: str = ""


class Monitor:
    """Polls GetSession for some sessions (directly, not through the proxy) every POLL_S."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sessions: dict[str, Timeline] = {}
        self._channel: grpc.aio.Channel | None = None
        self._closing: list[grpc.aio.Channel] = []  # channels to the dispatcher before a restart
        self._task: asyncio.Task[None] | None = None

    def follow(self, session_ids: Iterable[str]) -> None:
        for session_id in session_ids:
            self.sessions.setdefault(session_id, Timeline())

    def retarget(self, address: str) -> None:
        """A restarted dispatcher: follow the same sessions there."""
        self.address = address
        old, self._channel = self._channel, grpc.aio.insecure_channel(address)
        if old is not None:
            self._closing.append(old)

    async def __aenter__(self) -> Monitor:
        self._channel = grpc.aio.insecure_channel(self.address)
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._channel is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for channel in [*self._closing, self._channel]:
            await channel.close()

    async def _poll(self) -> None:
        while True:
            assert self._channel is not None
            stub = wire.SessionControlServiceStub(self._channel)
            for session_id, line in self.sessions.items():
                if line.ended_at is not None:
                    continue
                try:
                    answer = await stub.GetSession(wire.ctl.GetSessionRequest(session_id=session_id), timeout=2)
                except grpc.aio.AioRpcError:
                    continue  # not there yet, or the dispatcher is down (a kill -9 scenario)
                self._observe(line, answer.session)
            await asyncio.sleep(POLL_S)  # the sampling interval of a measurement, not a synchronisation

    @staticmethod
    def _observe(line: Timeline, info: Any) -> None:
        now = time.monotonic()
        line.events, line.state, line.resumes = int(info.last_event_seq), int(info.state), int(info.resumes)
        if info.state == DETACHED and line.detached_at is None:
            line.detached_at = now
        if line.resumes and info.state != DETACHED and line.resumed_at is None:
            line.resumed_at = now
        if info.state in ENDED:
            line.ended_at = now
            line.reason = info.outcome.reason

    async def until(self, predicate: Any, what: str, timeout_s: float) -> None:
        """Wait (bounded) until `predicate(self.sessions)` holds."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self.sessions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
            await asyncio.sleep(POLL_S)  # follows the poller's own interval
