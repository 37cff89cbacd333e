"""The processes of a benchmark run: the server under test and the load generators.

Servers: `ours` is a real `dispatcher serve` (its session, policy, journal and tool path,
with one block pattern configured: the stop marker); `baseline` is
`scripts/bench/baseline_server.py`. Both listen on 127.0.0.1:0 and report their port in a
ready file. Load generators are `python -m scripts.bench.load` processes that print one
JSON result line. Every wait here is bounded; a process that overstays is killed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

from scripts.bench.streams import LoadSpec

__all__ = [
    "KINDS",
    "IdleLoaders",
    "Server",
    "cpu_seconds",
    "node_seed_loader",
    "rss_kb",
    "run_loaders",
    "running_dispatcher",
    "running_server",
    "split_spec",
    "use_uvloop",
]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KINDS = ("ours", "baseline")
MARKER = "BENCHSTOP"
MAX_STREAMS_PER_CONNECTION = 1024
READY_TIMEOUT_S = 20.0
LOADER_STARTUP_S = 0.6  # python + grpc import + channels (a late loader reports late_s)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """Resident set size of a process (VmRSS), in KiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15 of stat)


@dataclass(frozen=True, slots=True)
class Server:
    kind: str
    target: str
    pid: int


def use_uvloop() -> bool:
    """Both servers run on the same event loop, so that the ratio prices the dispatcher's own
    work: asyncio's (the dispatcher's default), or uvloop for both with DISPATCHER_UVLOOP=true."""
    return os.environ.get("DISPATCHER_UVLOOP", "").strip().lower() in ("1", "true", "yes", "on")


def dispatcher_binary() -> str:
    """The `dispatcher` under test: this checkout's, or BENCH_DISPATCHER's (another build, e.g. an
    older commit's venv, to measure before and after a change with the same loaders in one run)."""
    return os.environ.get("BENCH_DISPATCHER") or str(BIN / "dispatcher")


def _extra_dispatcher_args() -> list[str]:
    """BENCH_DISPATCHER_ARGS: more flags for ours, e.g. "--workers 2" (the bare server has no such flags)."""
    return shlex.split(os.environ.get("BENCH_DISPATCHER_ARGS", ""))


def _server_command(kind: str, ready: Path, defaults: bool = False) -> list[str]:
    loop_flag = ["--uvloop"] if use_uvloop() else ["--no-uvloop"]
    if kind == "ours-metrics":  # the metrics case: ours with --metrics-listen (never scraped)
        return [*_server_command("ours", ready), "--metrics-listen", "127.0.0.1:0"]
    if kind == "ours-store":  # the store case: ours with an SQLite store, a fresh file per server
        return [*_server_command("ours", ready), "--store", f"sqlite:///{ready.parent.resolve() / 'store.db'}"]
    if kind == "ours-plain":  # the metrics and store cases' other column: ours as always
        return _server_command("ours", ready)
    if kind == "ours" and defaults:
        # As an operator starts it: every limit and timer at its default (only the port is chosen).
        return [
            dispatcher_binary(), "serve", "--listen", "127.0.0.1:0", "--ready-file", str(ready), *loop_flag,
            *_extra_dispatcher_args(),
        ]  # fmt: skip
    if kind == "ours":
        return [
            dispatcher_binary(), "serve", "--listen", "127.0.0.1:0", "--ready-file", str(ready),
            "--instance-id", "bench", "--log-level", "warning", "--log-format", "json",
            "--block-pattern", MARKER,
            "--server-max-sessions", "0",
            "--server-max-concurrent-streams", str(MAX_STREAMS_PER_CONNECTION),
            "--server-max-connection-idle-ms", "0",
            "--idle-timeout-s", "0", "--max-session-s", "0",
            "--no-server-reflection", *loop_flag, *_extra_dispatcher_args(),
        ]  # fmt: skip
    if kind == "baseline":
        return [
            sys.executable, "-m", "scripts.bench.baseline_server", "--listen", "127.0.0.1:0",
            "--ready-file", str(ready), "--marker", MARKER,
            "--max-concurrent-streams", str(MAX_STREAMS_PER_CONNECTION), *loop_flag,
        ]  # fmt: skip
    raise ValueError(f"unknown server kind {kind!r}")


@contextlib.contextmanager
def running_server(kind: str, workdir: Path, *, defaults: bool = False) -> Iterator[Server]:
    """Start a server, wait for its ready file, stop it (SIGTERM, then SIGKILL) on exit. `defaults`:
    ours with its default settings, as `dispatcher serve --listen` runs (not the bench's limits-off flags)."""
    ready = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir)) / "ready"
    with _started(kind, _server_command(kind, ready, defaults), ready) as server:
        yield server


@contextlib.contextmanager
def running_dispatcher(workdir: Path, *flags: str) -> Iterator[Server]:
    """A plain `dispatcher serve` on 127.0.0.1:0 with `flags` (scripts/stop_latency.py,
    scripts/coalesce_bench.py); its log is `workdir/server.log`."""
    ready = workdir / "ready"
    command = [
        str(BIN / "dispatcher"), "serve", "--listen", "127.0.0.1:0", "--ready-file", str(ready),
        "--instance-id", "bench", *flags,
    ]  # fmt: skip
    with _started("dispatcher", command, ready) as server:
        yield server


@contextlib.contextmanager
def _started(kind: str, command: list[str], ready: Path) -> Iterator[Server]:
    log_path = ready.with_name("server.log")
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (ready.exists() and ready.read_text().strip()):
            if process.poll() is not None:
                raise RuntimeError(f"{kind} server exited early ({process.returncode}): {log_path.read_text()[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server not ready within {READY_TIMEOUT_S:g} s")
            time.sleep(0.02)  # polling a file another process writes; bounded above
        yield Server(kind, ready.read_text().strip(), process.pid)
    finally:
        _stop(process, signal.SIGTERM, 15.0)


def stop_process(process: subprocess.Popen[Any], signum: int = signal.SIGTERM, wait_s: float = 20.0) -> None:
    """Signal, wait, and kill what overstays."""
    _stop(process, signum, wait_s)


def _stop(process: subprocess.Popen[Any], signum: int, wait_s: float) -> None:
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def channels_for(sessions: int, per_channel: int = 250) -> int:
    """Enough connections that no connection comes near the server's stream limit."""
    return max(1, math.ceil(sessions / per_channel))


def split_spec(spec: LoadSpec, processes: int) -> list[LoadSpec]:
    """Share `spec.sessions` (and stops) between `processes` loaders, with distinct seeds."""
    processes = max(1, min(processes, spec.sessions))
    specs = []
    for index in range(processes):
        sessions = spec.sessions // processes + (1 if index < spec.sessions % processes else 0)
        specs.append(
            replace(
                spec,
                sessions=sessions,
                channels=channels_for(sessions),
                stops_per_s=spec.stops_per_s * sessions / spec.sessions,
                seed=spec.seed * 1000 + index + 1,
            )
        )
    return specs


NODE_SEED_LOADER = ROOT / "interop" / "node" / "seed_load.js"


def node_seed_loader() -> str | None:
    """`node` when the Node seed-era loader can run here (Node on PATH, `make node-deps` done), else None."""
    node = shutil.which("node")
    if node and (ROOT / "interop" / "node" / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return node
    return None


def _loader_command(spec: LoadSpec) -> list[str]:
    if spec.mode == "seed" and (node := node_seed_loader()):
        # An independent client on a separate HTTP/2 stack (grpc-js), and a cheaper one than Python's
        # grpc.aio: on two shared cores the loader's own CPU would otherwise decide the figure.
        return [node, str(NODE_SEED_LOADER), json.dumps(asdict(spec))]
    return [sys.executable, "-m", "scripts.bench.load", json.dumps(asdict(spec))]


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return None


class WindowCpu:
    """CPU use of the server and of the loaders inside the measured window (start_at to start_at +
    duration, or until the loaders are done), sampled from /proc by a short-lived thread."""

    def __init__(self, server_pid: int, loader_pids: list[int], start_at: float, end_at: float) -> None:
        self._pids = {"server": [server_pid], "loaders": loader_pids}
        self._start_at, self._end_at = start_at, end_at
        self._done = threading.Event()
        self.figures: dict[str, float] = {}
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _read(self) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for pids in self._pids.values() for pid in pids}

    def _sample(self) -> None:
        if self._done.wait(max(0.0, self._start_at - time.monotonic())):
            return
        first, started = self._read(), time.monotonic()
        self._done.wait(max(0.0, self._end_at - time.monotonic()))
        last, wall = self._read(), time.monotonic() - started
        if wall < 0.05 or any(last[pid] < first[pid] for pid in first):  # too short, or a process is gone
            return
        for name, pids in self._pids.items():
            used = sum(last[pid] - first[pid] for pid in pids)
            self.figures[f"{name}_cpu_pct"] = round(used / wall * 100)

    def finish(self) -> dict[str, float]:
        self._done.set()
        self._thread.join(timeout=5)
        return self.figures


def run_loaders(
    specs: list[LoadSpec], log: IO[bytes], *, server_pid: int = 0, cpu: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Run loaders side by side; each result is its JSON line, or `{"errors": ...}` when it failed.

    With `server_pid` and a `cpu` dict, the server's and the loaders' CPU % inside the window go in `cpu`.
    """
    processes = [
        subprocess.Popen(_loader_command(spec), cwd=ROOT, stdout=subprocess.PIPE, stderr=log) for spec in specs
    ]
    window: WindowCpu | None = None
    if server_pid and cpu is not None:
        start_at = specs[0].start_at
        window = WindowCpu(server_pid, [p.pid for p in processes], start_at, start_at + specs[0].duration_s)
    try:
        return _collect(specs, processes)
    finally:
        if window is not None and cpu is not None:
            cpu.update(window.finish())


def _collect(specs: list[LoadSpec], processes: list[subprocess.Popen[bytes]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for spec, process in zip(specs, processes, strict=True):
        remaining = max(1.0, spec.start_at + spec.deadline_s + 10 - time.monotonic())
        try:
            out, _ = process.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate(timeout=5)
            results.append({"errors": {"loader killed: overstayed its deadline": 1}})
            continue
        result = _last_json(out.decode(errors="replace"))
        if result is None:
            result = {"errors": {f"loader exited {process.returncode} without a result": 1}}
        results.append(result)
    return results


class IdleLoaders:
    """Idle-mode loaders: open sessions, report `ready`, hold them until `release()`."""

    def __init__(self, specs: list[LoadSpec], log: IO[bytes]) -> None:
        self._specs = specs
        self._processes = [
            subprocess.Popen(_loader_command(spec), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
            for spec in specs
        ]

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def wait_ready(self, timeout_s: float) -> int:
        """Sessions open across loaders once every loader said `ready` (bounded by `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        opened = 0
        for process in self._processes:
            assert process.stdout is not None
            line = _readline(process, deadline)
            value = _last_json(line) or {}
            opened += int(value.get("opened", 0))
        return opened

    def release(self) -> list[dict[str, Any]]:
        results = []
        for process in self._processes:
            try:
                out, _ = process.communicate(input=b"", timeout=30)  # EOF on stdin: release
                results.append(_last_json(out.decode(errors="replace")) or {})
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate(timeout=5)
                results.append({"errors": {"idle loader killed": 1}})
        return results


def _readline(process: subprocess.Popen[bytes], deadline: float) -> str:
    """One stdout line of a child, or "" when the deadline passes first (the child is then killed)."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            process.kill()
            return ""
    return process.stdout.readline().decode(errors="replace")
