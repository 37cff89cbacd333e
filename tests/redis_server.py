"""A real `redis-server` for the replica tests: Debian's package (`make system-deps`), started
on a free loopback port in the test's tmp_path with nothing saved (`--save "" --appendonly
no`), so a restart comes back empty, as a Redis that lost its memory does.

Without the binary the tests skip, with the reason, except under CI (`CI=true`), where a
missing redis-server is a failure: CI installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server"]

_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One redis-server process on a fixed port; `stop` and `start` again for a restart."""

    def __init__(self, binary: str, directory: Path) -> None:
        self._binary = binary
        self._dir = directory
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self._dir), "--logfile", str(self._log), "--protected-mode", "no",
        ]  # fmt: skip
        self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not self._pong():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                log = self._log.read_text() if self._log.exists() else ""
                raise AssertionError(f"redis-server on port {self.port} did not start\n{log}")
            time.sleep(0.02)  # sleep-ok: the interval of a bounded poll (a process offers no event)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()  # as a crash: nothing is saved anyway
            self._proc.wait(timeout=_STOP_TIMEOUT_S)
        self._proc = None

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing: `make system-deps` installs it (Debian's redis-server)")
        pytest.skip("redis-server is not installed (make system-deps)")
    server = RedisServer(binary, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
