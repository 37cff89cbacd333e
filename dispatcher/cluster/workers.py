"""`dispatcher serve --workers N`: N serving processes on one port, as grpc recommends for Python.

grpc.aio serves from one event loop per process, so one process uses about one core. The
supervisor picks the port (holding it with SO_REUSEPORT while the workers bind it too),
starts N ordinary `dispatcher serve` processes with `--workers 1 --peer-dir DIR`, and the
kernel spreads incoming connections over them. Each worker advertises a private control
address in DIR, so an operator's call landing on any worker finds a session held by
another (dispatcher/peers.py). SIGTERM/SIGINT are passed on (each worker drains as a
single dispatcher does), SIGHUP too (each rereads its certificate files); if a worker
dies on its own, the others are stopped and the supervisor exits 1, for the process manager to restart the group.

Metrics (`--metrics-listen HOST:PORT`): a port per worker, worker i on PORT+i (each its own
registry and /metrics; Prometheus scrapes them as N targets). With port 0 every worker picks
a free port of its own, named in its `dispatcher.serving` log line.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import structlog

from dispatcher.config import DispatcherConfig
from shared.metrics import parse_listen

__all__ = ["run_workers", "worker_metrics_listen"]

log = structlog.get_logger("dispatcher.cluster.workers")

_READY_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 60.0
_WATCH_INTERVAL_S = 0.2


def worker_metrics_listen(listen: str, workers: int) -> list[str]:
    """Each worker's --metrics-listen: PORT+i for worker i (port 0: each picks its own).
    ValueError when the last port would be past 65535."""
    host, port = parse_listen(listen)
    shown = f"[{host}]" if ":" in host else host
    if port == 0:
        return [f"{shown}:0"] * workers
    if port + workers - 1 > 65535:
        raise ValueError(f"--metrics-listen {listen} with --workers {workers}: ports {port}-{port + workers - 1} "
                         "do not all exist")  # fmt: skip
    return [f"{shown}:{port + index}" for index in range(workers)]


def run_workers(config: DispatcherConfig, cli_args: list[str]) -> int:
    """Run the worker group until it is signalled or a worker dies; the group's exit status."""
    server = config.server
    host, port_text = server.listen.rsplit(":", 1)
    metrics = worker_metrics_listen(config.metrics.listen, server.workers) if config.metrics.listen else []
    holder = _hold_port(host.strip("[]"), int(port_text))
    port = holder.getsockname()[1]
    own_dir = not server.peer_dir
    peer_dir = server.peer_dir or tempfile.mkdtemp(prefix="dispatcher-peers-")
    workers: list[subprocess.Popen[bytes]] = []
    stopping = False
    dead: list[subprocess.Popen[bytes]] = []

    def pass_on(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    def reload_certificates(signum: int, _frame: FrameType | None) -> None:
        for worker in workers:  # each worker rereads its TLS files for its next connection
            if worker.poll() is None:
                worker.send_signal(signum)

    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload_certificates)
    try:
        readies = []
        for index in range(server.workers):
            ready = Path(peer_dir) / f"ready-{index}"
            ready.unlink(missing_ok=True)
            readies.append(ready)
            command = [
                sys.executable, "-m", "dispatcher", *cli_args,
                "--workers", "1", "--listen", f"{host}:{port}", "--peer-dir", peer_dir,
                "--instance-id", f"{server.instance}-w{index}", "--ready-file", str(ready),
                *(("--metrics-listen", metrics[index]) if metrics else ()),
            ]  # fmt: skip
            workers.append(subprocess.Popen(command))
        if not _all_ready(readies, workers):
            pass_on(signal.SIGTERM, None)
            _wait_all(workers)
            return 1
        holder.close()
        address = f"{host}:{port}"
        if server.ready_file:
            Path(server.ready_file).write_text(address + "\n")
        log.info("dispatcher.workers_serving", address=address, workers=server.workers, peer_dir=peer_dir,
                 metrics=_metrics_shown(metrics))  # fmt: skip
        while not stopping:
            dead = [worker for worker in workers if worker.poll() is not None]
            if dead:
                log.error("dispatcher.worker_died", pid=dead[0].pid, code=dead[0].returncode,
                          detail="stopping the group; restart it")  # fmt: skip
                pass_on(signal.SIGTERM, None)
                break
            time.sleep(_WATCH_INTERVAL_S)  # a supervisor's watch loop; signals end it at once
        codes = _wait_all(workers)
        return 0 if all(code == 0 for code in codes) and not dead else 1
    finally:
        holder.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        if own_dir:
            shutil.rmtree(peer_dir, ignore_errors=True)


def _metrics_shown(metrics: list[str]) -> list[str] | str | None:
    if not metrics:
        return None
    if metrics[0].endswith(":0"):
        return "a free port per worker: see each worker's dispatcher.serving line"
    return [f"http://{listen}/metrics" for listen in metrics]


def _hold_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT: reserves the port, lets the workers bind it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((host, port))
    except OSError as exc:
        holder.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc}") from exc
    return holder


def _all_ready(readies: list[Path], workers: list[subprocess.Popen[bytes]]) -> bool:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(worker.poll() is not None for worker in workers):
            log.error("dispatcher.worker_failed_to_start")
            return False
        if all(ready.exists() and ready.read_text().strip() for ready in readies):
            return True
        time.sleep(0.05)  # polling files other processes write, bounded by the deadline
    log.error("dispatcher.workers_not_ready", timeout_s=_READY_TIMEOUT_S)
    return False


def _wait_all(workers: list[subprocess.Popen[bytes]]) -> list[int]:
    codes = []
    for worker in workers:
        try:
            codes.append(worker.wait(timeout=_STOP_TIMEOUT_S))
        except subprocess.TimeoutExpired:
            worker.kill()
            codes.append(worker.wait())
    return codes
