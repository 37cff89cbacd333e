"""The process-level cancellation paths, on `dispatcher serve` subprocesses: a second signal
during a drain, and shutdown with a tool call running (the in-process paths are in
tests/integration/test_cancellation.py)."""

from __future__ import annotations

import signal
import time

import grpc
import pytest

from shared import wire
from tests.conftest import RawSession, running_calls
from tests.e2e.conftest import DispatcherFactory

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SECOND_SIGNAL_BOUND_S = 1.0  # the promise: a second SIGINT/SIGTERM exits within a second


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_second_signal_during_a_drain_with_an_unconfirmed_session_exits_at_once(
    start_dispatcher: DispatcherFactory, signum: signal.Signals
) -> None:
    # Long graces: without the second signal the drain would wait 30 s for the session.
    dispatcher = start_dispatcher("--shutdown-grace-s", "30", "--session-stop-grace-ms", "30000")
    async with grpc.aio.insecure_channel(dispatcher.address) as channel:
        held = RawSession(channel)
        await held.hello("never-confirms")
        await held.tool_call(2, "sleep", '{"seconds": 600}', call_id="long")  # a tool call in flight too
        dispatcher.send_signal(signum)
        stop = await held.recv_kind("stop")  # the drain began; this session will never confirm
        assert stop.stop.code == wire.pb.STOP_CODE_SHUTDOWN
        dispatcher.wait_for_event("dispatcher.draining")
        sent_at = time.monotonic()
        dispatcher.send_signal(signum)
        code = dispatcher.wait_exit(timeout=10)
        took_s = time.monotonic() - sent_at
    assert took_s < SECOND_SIGNAL_BOUND_S, f"exited {took_s:.3f} s after the second signal\n{dispatcher.describe()}"
    assert code == 1, dispatcher.describe()  # forced: not a clean drain
    assert dispatcher.events("dispatcher.forced_exit", signal=signum.name)
    assert dispatcher.events("dispatcher.stopped"), dispatcher.describe()


async def test_shutdown_with_a_tool_call_running_ends_after_the_grace_and_records_the_session(
    start_dispatcher: DispatcherFactory,
) -> None:
    """The drain's grace, then bounded steps: the unconfirmed session is recorded, its call is
    cancelled with a reason, and the process exits 0. (A tool that ignores cancellation is
    covered in-process, tests/integration/test_cancellation.py.)"""
    dispatcher = start_dispatcher("--shutdown-grace-s", "0.5", "--session-tool-cancel-grace-ms", "100")
    async with grpc.aio.insecure_channel(dispatcher.address) as channel:
        held = RawSession(channel)
        await held.hello("tool-running")
        await held.tool_call(2, "sleep", '{"seconds": 600}', call_id="long")
        assert await running_calls(channel, "tool-running") == ["long"]
        dispatcher.send_signal(signal.SIGTERM)
        await held.recv_kind("stop")
        code = dispatcher.wait_exit(timeout=10)
    assert code == 0, dispatcher.describe()
    (ended,) = dispatcher.events("session.ended", session_id="tool-running")
    assert ended["stop_code"] == "SHUTDOWN" and ended["stop_confirmed"] is False
    assert dispatcher.events("tool.cancelled", session_id="tool-running", call_id="long"), dispatcher.log_text()
