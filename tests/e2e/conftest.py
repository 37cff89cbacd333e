"""End-to-end fixtures: the real `dispatcher` and `commander` console scripts as subprocesses.

The binaries are the ones installed next to the running interpreter (the project's venv).
Every wait is bounded: process exits with `wait(timeout=...)`, files and log lines with
`wait_for` (a short poll), so a hang fails with a message that shows the dispatcher's log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
DISPATCHER = BIN / "dispatcher"
COMMANDER = BIN / "commander"
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR"}

READY_TIMEOUT_S = 15.0  # interpreter start-up + grpc import on a busy 2-core machine
EXIT_TIMEOUT_S = 15.0  # a dispatcher with no open session exits well within this after SIGTERM
COMMANDER_TIMEOUT_S = 30.0
POLL_S = 0.02


def wait_for(
    predicate: Callable[[], Any],
    what: str,
    timeout: float = READY_TIMEOUT_S,
    details: Callable[[], str] | None = None,
) -> Any:
    """Poll `predicate` every POLL_S until it returns something truthy (returned); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(POLL_S)  # sleep-ok: the interval of a bounded poll (files and processes offer no event)


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among `text`'s lines (grpc's C core may add plain-text lines to stderr)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line still being written
        if isinstance(value, dict):
            out.append(value)
    return out


@dataclass
class DispatcherProcess:
    """A running `dispatcher serve` subprocess, its bound address and its log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    ready_path: Path
    args: list[str]
    address: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self) -> list[dict[str, Any]]:
        return parse_json_lines(self.log_text())

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [
            line
            for line in self.log_lines()
            if line.get("event") == name and all(line.get(k) == v for k, v in match.items())
        ]

    def wait_for_event(self, name: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        found: list[dict[str, Any]] = wait_for(
            lambda: self.events(name, **match),
            f"log line {name!r} {match or ''} from the dispatcher",
            timeout,
            details=self.describe,
        )
        return found[0]

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"dispatcher still running {timeout} s later\n{self.describe()}") from None

    def describe(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited with {self.proc.returncode}"
        return f"dispatcher (pid {self.pid}, {state}): {' '.join(self.args)}\n--- its log ---\n{self.log_text()}"


@dataclass
class DispatcherFactory:
    tmp_path: Path
    started: list[DispatcherProcess] = field(default_factory=list)

    def __call__(
        self, *extra: str, instance_id: str = "e2e", cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> DispatcherProcess:
        """Start `dispatcher serve` on a free loopback port and wait until it reports ready."""
        n = len(self.started)
        ready = self.tmp_path / f"dispatcher-{n}.ready"
        log_path = self.tmp_path / f"dispatcher-{n}.log"
        args = [
            str(DISPATCHER), "serve",
            "--listen", "127.0.0.1:0",
            "--ready-file", str(ready),
            "--instance-id", instance_id,
            "--log-format", "json",
            "--test-tools",  # the `sleep` tool: slow calls to stop and cancel
            *extra,
        ]  # fmt: skip
        with log_path.open("wb") as log_file:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env or ENV, cwd=cwd
            )
        dispatcher = DispatcherProcess(proc=proc, log_path=log_path, ready_path=ready, args=args)
        self.started.append(dispatcher)

        def ready_or_exited() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the dispatcher exited before it was ready\n{dispatcher.describe()}")
            # the ready file is written in one go, newline-terminated; a partial read has no newline
            return ready.exists() and ready.read_text().endswith("\n")

        wait_for(ready_or_exited, "the dispatcher's ready file", READY_TIMEOUT_S, details=dispatcher.describe)
        dispatcher.address = ready.read_text().strip()
        assert dispatcher.address.startswith("127.0.0.1:"), dispatcher.address
        return dispatcher

    def stop_all(self) -> None:
        problems = []
        for dispatcher in self.started:
            proc = dispatcher.proc
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=EXIT_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=EXIT_TIMEOUT_S)
                    problems.append(f"needed SIGKILL after SIGTERM + {EXIT_TIMEOUT_S} s\n{dispatcher.describe()}")
            assert proc.returncode is not None, f"dispatcher pid {proc.pid} is still running"
        assert not problems, "\n".join(problems)


@pytest.fixture
def start_dispatcher(tmp_path: Path) -> Iterator[DispatcherFactory]:
    """A factory: `start_dispatcher("--block-pattern", "x")`; every process is stopped at teardown."""
    factory = DispatcherFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def dispatcher(start_dispatcher: DispatcherFactory) -> DispatcherProcess:
    """A dispatcher with the default flags."""
    return start_dispatcher()


def run_commander(
    target: str, prompt: str, *extra: str, timeout: float = COMMANDER_TIMEOUT_S, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`commander run` to completion; stdout and stderr together in `.stdout`."""
    return subprocess.run(
        [str(COMMANDER), "run", "--target", target, "--prompt", prompt, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        env=env or ENV,
        check=False,
    )


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Any console script (`args[0]` is a path); stdout and stderr kept apart."""
    return subprocess.run(
        list(args),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        env=env if env is not None else ENV,
        check=False,
    )
