"""`make conformance-self`: the conformance kit against this project's own dispatcher.

Starts `dispatcher serve` on a free loopback port with the kit's stop word as a block
pattern, waits for its ready file, runs `python -m conformance` (JUnit XML to
build/conformance.xml, no expected failures), then stops the dispatcher with SIGTERM.
Exits with the kit's status; also fails if the dispatcher does not drain and exit 0.

usage: python scripts/conformance_self.py [extra kit arguments, e.g. --only STOP -v]
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
JUNIT = BUILD / "conformance.xml"
LOG = BUILD / "conformance-dispatcher.log"
STOP_WORD = "CONFORMANCE-STOP"
READY_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 20.0
POLL_S = 0.05


def dispatcher_binary() -> str:
    beside = Path(sys.executable).parent / "dispatcher"
    found = str(beside) if beside.exists() else shutil.which("dispatcher")
    if not found:
        sys.exit("conformance-self: no `dispatcher` console script next to this Python or on PATH (make venv)")
    return found


def wait_ready(proc: subprocess.Popen[bytes], ready: Path) -> str:
    """The bound HOST:PORT, once the dispatcher wrote its ready file (a bounded poll: files have no event)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"conformance-self: the dispatcher exited with {proc.returncode} before it was ready; see {LOG}")
        if ready.exists() and (text := ready.read_text()).endswith("\n"):
            return text.strip()
        time.sleep(POLL_S)  # sleep-ok: the interval of a bounded poll
    sys.exit(f"conformance-self: the dispatcher was not ready within {READY_TIMEOUT_S} s; see {LOG}")


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM and wait; None when it had to be killed."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=EXIT_TIMEOUT_S)
        return None


def main() -> int:
    BUILD.mkdir(exist_ok=True)
    env = {**os.environ, "GRPC_VERBOSITY": os.environ.get("GRPC_VERBOSITY", "ERROR")}
    with tempfile.TemporaryDirectory(prefix="conformance-self-") as tmp:
        ready = Path(tmp) / "ready"
        args = [
            dispatcher_binary(), "serve", "--test-tools",
            "--listen", "127.0.0.1:0",
            "--ready-file", str(ready),
            "--instance-id", "conformance-self",
            "--block-pattern", STOP_WORD,
            "--log-format", "json",
        ]  # fmt: skip
        with LOG.open("wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            target = wait_ready(proc, ready)
            print(f"conformance-self: dispatcher pid {proc.pid} serving on {target} (log: {LOG})", flush=True)
            kit = [sys.executable, "-m", "conformance", "--target", target, "--stop-word", STOP_WORD,
                   "--junit-xml", str(JUNIT), *sys.argv[1:]]  # fmt: skip
            status = subprocess.run(kit, cwd=ROOT, env=env, check=False).returncode
        finally:
            exit_code = stop(proc)
    if exit_code != 0:
        how = "had to be killed" if exit_code is None else f"exited {exit_code}"
        print(f"conformance-self: the dispatcher {how} after SIGTERM; see {LOG}", file=sys.stderr)
        return status or 1
    print(f"conformance-self: kit exit status {status}; JUnit XML: {JUNIT}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
