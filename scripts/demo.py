"""`make demo`: a dispatcher and three commander sessions, as real processes on loopback.

1. a session that thinks, calls a tool, receives its result, streams its answer, finishes;
2. a session stopped mid-answer by the dispatcher's content policy, with the stop's code,
   reason, path and measured stop-to-halt time;
3. a short full-speed session: 3000 tokens, which the commander's writer coalesces into
   fewer, fuller packets whenever they queue up faster than the stream drains;
4. an operator stop through the CLI: `dispatcherctl sessions` shows a session streaming,
   `dispatcherctl stop` stops it and prints the confirmation time, the commander prints
   the stop with its path `operator:... -> dispatcher:demo`;
5. a backend-style question (`dispatcherctl ask`) answered by a pool commander
   (`commander serve`).
Then the dispatcher is sent SIGTERM and must drain and exit 0. Nothing is left running.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 15.0
SESSION_TIMEOUT_S = 60.0


def banner(text: str) -> None:
    line = "─" * max(20, min(100, len(text) + 4))
    print(f"\n{line}\n  {text}\n{line}", flush=True)


def wait_ready(ready: Path, dispatcher: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if dispatcher.poll() is not None:
            sys.exit(f"demo: the dispatcher exited early ({dispatcher.returncode}); its log:\n{log.read_text()}")
        if ready.exists() and ready.read_text().strip():
            return ready.read_text().strip()
        time.sleep(0.05)  # polling a file another process writes; bounded by READY_TIMEOUT_S
    sys.exit(f"demo: the dispatcher did not report ready within {READY_TIMEOUT_S} s")


def run_commander(target: str, prompt: str, *extra: str) -> int:
    command = [str(BIN / "commander"), "run", "--target", target, "--prompt", prompt, *extra]
    print(f"$ commander run --target {target} --prompt {prompt!r} {' '.join(extra)}\n", flush=True)
    return subprocess.run(command, timeout=SESSION_TIMEOUT_S, check=False).returncode


def dispatcherctl(target: str, *args: str) -> int:
    print(f"$ dispatcherctl --target {target} {shlex.join(args)}", flush=True)
    command = [str(BIN / "dispatcherctl"), "--target", target, *args]
    code = subprocess.run(command, timeout=SESSION_TIMEOUT_S, check=False).returncode
    print(flush=True)
    return code


def wait_streaming(target: str, session_id: str, min_events: int = 6) -> None:
    """Bounded poll of the control API until the session has streamed a few events."""
    import grpc

    from shared import wire

    deadline = time.monotonic() + SESSION_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        stub = wire.SessionControlServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                info = stub.GetSession(wire.ctl.GetSessionRequest(session_id=session_id), timeout=5).session
                if info.last_event_seq >= min_events:
                    return
            except grpc.RpcError:
                pass  # not open yet
            time.sleep(0.05)  # polling another process's state, bounded by the deadline
    sys.exit(f"demo: session {session_id} did not start streaming within {SESSION_TIMEOUT_S} s")


def operator_stop(target: str, workdir: Path, failures: list[str]) -> None:
    out = workdir / "operator-session.out"
    command = [
        str(BIN / "commander"), "run", "--target", target, "--session-id", "demo-operator",
        "--prompt", "Tell me a long story.", "--tokens-per-s", "20", "--answer-words", "2000",
    ]  # fmt: skip
    print("$ commander run --target ... --session-id demo-operator --prompt 'Tell me a long story.' &\n")
    with out.open("wb") as sink:
        commander = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_streaming(target, "demo-operator")
        dispatcherctl(target, "sessions", "--state", "live")
        code = dispatcherctl(target, "stop", "demo-operator", "--reason", "operator demo: incident 42",
                             "--cause", "ticket=INC-42")  # fmt: skip
        if code != 0:
            failures.append(f"dispatcherctl stop exited {code}, expected 0 (confirmed)")
        commander_code = commander.wait(timeout=SESSION_TIMEOUT_S)
    finally:
        if commander.poll() is None:
            commander.kill()
            commander.wait()
    print("the commander's side of it:\n")
    print(out.read_text())
    if commander_code != 2:
        failures.append(f"the operator-stopped commander exited {commander_code}, expected 2 (stopped)")


def pool_question(target: str, failures: list[str]) -> None:
    command = [str(BIN / "commander"), "serve", "--target", target, "-n", "1", "--tokens-per-s", "40",
               "--log-level", "warning"]  # fmt: skip
    print(f"$ commander serve --target {target} -n 1 &\n")
    pool = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        code = dispatcherctl(target, "ask", "What is 6 * 7?", "--wait-ms", "10000")
        if code != 0:
            failures.append(f"dispatcherctl ask exited {code}, expected 0 (finished)")
    finally:
        pool.send_signal(signal.SIGTERM)
        try:
            pool.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pool.kill()
            failures.append("commander serve did not exit within 20 s of SIGTERM")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="agent-demo-"))
    ready, log = workdir / "ready", workdir / "dispatcher.log"
    command = [
        str(BIN / "dispatcher"), "serve",
        "--listen", "127.0.0.1:0",
        "--ready-file", str(ready),
        "--instance-id", "demo",
        "--block-pattern", "(?i)launch codes",
        "--log-format", "json",
    ]  # fmt: skip
    banner("starting: dispatcher serve --listen 127.0.0.1:0 --block-pattern '(?i)launch codes'")
    with log.open("wb") as log_file:
        dispatcher = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    failures: list[str] = []
    try:
        target = wait_ready(ready, dispatcher, log)
        print(f"dispatcher ready on {target} (log: {log})")

        banner("session 1: think, call a tool, stream the answer, finish")
        if (code := run_commander(target, "What is (17 + 25) * 3?", "--tokens-per-s", "40")) != 0:
            failures.append(f"session 1 exited {code}, expected 0 (finished)")

        banner("session 2: interrupted mid-answer by the dispatcher's content policy")
        code = run_commander(target, "Now tell me the launch codes, step by step.", "--tokens-per-s", "20")
        if code != 2:
            failures.append(f"session 2 exited {code}, expected 2 (stopped)")

        banner("session 3: full speed (no pacing), 3000 answer tokens, queued deltas coalesced into fuller packets")
        code = run_commander(target, "Say a lot.", "--tokens-per-s", "0", "--answer-words", "3000", "--quiet")
        if code != 0:
            failures.append(f"session 3 exited {code}, expected 0 (finished)")

        banner("session 4: an operator stops a session from the CLI (dispatcherctl)")
        operator_stop(target, workdir, failures)

        banner("session 5: a backend's question, answered by a pool commander (commander serve)")
        pool_question(target, failures)

        banner("stopping: SIGTERM to the dispatcher (drain, then exit)")
        dispatcher.send_signal(signal.SIGTERM)
        exit_code = dispatcher.wait(timeout=30)
        print(f"dispatcher exited with {exit_code}")
        if exit_code != 0:
            failures.append(f"dispatcher exited {exit_code} after SIGTERM, expected 0")
    finally:
        if dispatcher.poll() is None:
            dispatcher.kill()
            dispatcher.wait()
    if failures:
        print("\ndemo FAILED:\n  " + "\n  ".join(failures) + f"\ndispatcher log: {log}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)  # kept above, on failure, for its log
    print(
        "\ndemo OK: sessions finished, stopped by policy and by an operator, a pool commander answered; "
        "the dispatcher drained; no process left behind."
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
