"""End to end: what SIGINT/SIGTERM do to `commander run` and `commander serve` processes.

The first signal cancels the session cleanly: exit 130, and the dispatcher records why
(it is told in-band). A second signal ends the process within a second even when the
session cannot end: the dispatcher is frozen with SIGSTOP, so the end the commander waits
for after its ErrorSignal never comes (until SIGCONT, after the test has measured).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import test_control_plane
from tests.e2e.conftest import COMMANDER, DispatcherProcess, parse_json_lines, wait_for
from tests.e2e.test_cli import no_traceback
from tests.e2e.test_control_plane import Spawned, Spawner, ctl_argv

spawn = test_control_plane.spawn  # the fixture: children with their output in files, killed at teardown

# The promise (a second signal exits at once) as a bound: well above the ~0.1 s it takes, far below the
# 60 s the first signal's clean end would wait for a frozen dispatcher.
SECOND_SIGNAL_EXIT_S = 1.0
# What the measurement waits at most: a bound, so a process that does not exit fails the test.
EXIT_WAIT_S = 5.0
CANCELLED_HERE = "cancelled by the commander"
# A long, slow answer: the session is still streaming when the test signals it.
SLOW_AGENT = ("--tokens-per-s", "5", "--answer-words", "200")
# Long enough that only the second signal can end a commander whose dispatcher is frozen.
END_WAIT = ("--connection-end-timeout-s", "60")


def log_events(child: Spawned, name: str) -> list[dict[str, Any]]:
    return [line for line in parse_json_lines(child.stderr()) if line.get("event") == name]


def commander_run(spawn: Spawner, dispatcher: DispatcherProcess, session_id: str, *extra: str) -> Spawned:
    return spawn(
        "commander-run",
        COMMANDER, "run",
        "--target", dispatcher.address,
        "--prompt", "Tell me a long story.",
        "--session-id", session_id,
        "--log-level", "info",
        *SLOW_AGENT,
        *extra,
    )  # fmt: skip


def wait_streaming(commander: Spawned) -> None:
    wait_for(lambda: "answer:" in commander.stdout(), "the commander streaming its answer", details=commander.describe)


@contextlib.contextmanager
def frozen(dispatcher: DispatcherProcess) -> Iterator[None]:
    """The dispatcher stopped (SIGSTOP): its sockets stay open and it answers nothing."""
    os.kill(dispatcher.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(dispatcher.pid, signal.SIGCONT)


def first_signal_is_taken(child: Spawned, signum: int) -> None:
    """Send `signum`; return once the session has taken the cancel, asserting it has not ended."""
    child.proc.send_signal(signum)
    wait_for(lambda: log_events(child, "session.cancelling"), "the session taking the cancel", details=child.describe)
    assert child.proc.poll() is None, f"the first signal should leave it waiting for the end\n{child.describe()}"


def exits_at_once_with_130(child: Spawned, signum: int) -> None:
    """Send the second signal: the process must be gone within SECOND_SIGNAL_EXIT_S, cleanly."""
    started = time.monotonic()
    child.proc.send_signal(signum)
    child.wait(EXIT_WAIT_S)
    took_s = time.monotonic() - started
    assert took_s < SECOND_SIGNAL_EXIT_S, f"{took_s:.2f} s after the second signal\n{child.describe()}"
    assert child.proc.returncode == 130, child.describe()
    no_traceback(child.stdout() + child.stderr())


# -- the first signal ----------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_session_cancels_it_with_exit_130_and_the_dispatcher_records_why(
    dispatcher: DispatcherProcess, spawn: Spawner, signum: int
) -> None:
    session_id = f"e2e-signal-{uuid.uuid4()}"
    commander = commander_run(spawn, dispatcher, session_id, "--json")
    wait_for(lambda: '"ContentEmitted"' in commander.stdout(), "the answer streaming", details=commander.describe)

    commander.proc.send_signal(signum)

    assert commander.wait() == 130, commander.describe()
    no_traceback(commander.stdout() + commander.stderr())
    [result] = [line for line in parse_json_lines(commander.stdout()) if line["event"] == "SessionResult"]
    assert (result["state"], result["reason"], result["session_id"]) == ("CANCELLED", CANCELLED_HERE, session_id)
    ended = dispatcher.wait_for_event("session.ended", session_id=session_id)
    assert (ended["state"], ended["ended_by"], ended["reason"]) == ("CANCELLED", "commander", CANCELLED_HERE)


# -- the second signal ---------------------------------------------------------------------


def test_a_second_sigint_ends_commander_run_at_once_while_the_end_never_comes(
    dispatcher: DispatcherProcess, spawn: Spawner
) -> None:
    session_id = f"e2e-second-{uuid.uuid4()}"
    commander = commander_run(spawn, dispatcher, session_id, *END_WAIT)
    wait_streaming(commander)

    with frozen(dispatcher):
        first_signal_is_taken(commander, signal.SIGINT)
        exits_at_once_with_130(commander, signal.SIGINT)

    assert log_events(commander, "commander.forced_exit")
    # The ErrorSignal was written before the freeze ended: thawed, the dispatcher reads it.
    assert dispatcher.wait_for_event("session.ended", session_id=session_id)["state"] == "CANCELLED"


def test_a_second_signal_ends_commander_serve_at_once_while_a_session_cannot_end(
    dispatcher: DispatcherProcess, spawn: Spawner
) -> None:
    joined_before = len(dispatcher.events("pool.commander_free"))
    serve = spawn(
        "commander-serve",
        COMMANDER, "serve", "--target", dispatcher.address, "-n", "1", "--log-level", "info", *SLOW_AGENT, *END_WAIT,
    )  # fmt: skip
    wait_for(
        lambda: dispatcher.events("pool.commander_free")[joined_before:],
        "the pool commander joining",
        details=serve.describe,
    )
    ask = spawn("ask", *ctl_argv(dispatcher, "ask", "Tell me a long story.", "--wait-ms", "10000"))
    wait_for(lambda: "tool_result" in ask.stdout(), "the pool session running its agent", details=ask.describe)

    with frozen(dispatcher):
        first_signal_is_taken(serve, signal.SIGTERM)
        exits_at_once_with_130(serve, signal.SIGINT)

    assert log_events(serve, "commander.forced_exit")
    ask.wait()  # the session has ended on the dispatcher: its caller is told


# The mechanism itself, with a cleanup that never finishes: no event loop could end this process.
STUCK_CLEANUP = """
import anyio
from commander.cli import SignalPolicy

async def main() -> None:
    policy = SignalPolicy()
    async with anyio.create_task_group() as tg:
        await tg.start(policy.watch, tg.cancel_scope)
        print("ready", flush=True)
        await policy.cancel.wait()
        print("cleaning up", flush=True)
        with anyio.CancelScope(shield=True):  # a cleanup await that nothing answers
            await anyio.Event().wait()

anyio.run(main)
"""


def test_a_second_signal_exits_even_when_cleanup_ignores_cancellation(spawn: Spawner) -> None:
    child = spawn("stuck-cleanup", sys.executable, "-c", STUCK_CLEANUP)
    wait_for(lambda: "ready" in child.stdout(), "the signal watcher", details=child.describe)
    child.proc.send_signal(signal.SIGINT)
    wait_for(lambda: "cleaning up" in child.stdout(), "the first signal's cleanup", details=child.describe)

    exits_at_once_with_130(child, signal.SIGINT)
