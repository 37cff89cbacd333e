"""Load shedding end to end: an overloaded dispatcher refuses new sessions clearly and keeps the
running ones. The overload is declared through the guard's own seam (`LoopLag.observe`), so the
test does not depend on how busy this machine is."""

from __future__ import annotations

import grpc

from dispatcher.sessions.overload import OVER_SAMPLES
from shared import wire
from tests.conftest import RawSession, running_dispatcher


async def test_an_overloaded_dispatcher_refuses_new_sessions_and_keeps_running_ones() -> None:
    async with running_dispatcher() as dispatcher:
        lag = dispatcher.sessions.loop_lag
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            running = RawSession(channel)
            await running.hello("running-1")
            for _ in range(OVER_SAMPLES):
                lag.observe(lag.limit_s + 1.5)

            refused = RawSession(channel)
            await refused.send(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id="late-1")))
            code, details, _ = await refused.status()
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "overloaded" in details and "retry later" in details, details

            # The running session is untouched: its tool call is answered, it finishes OK.
            await running.tool_call(2, "echo", '{"q": 1}', call_id="c1")
            result = await running.recv_kind("tool_result")
            assert result.tool_result.call_id == "c1" and not result.tool_result.HasField("error")
            await running.content(3, "", is_finish=True)
            await running.call.done_writing()
            code, _, _ = await running.status()
            assert code is grpc.StatusCode.OK

            lag.observe(0.0)  # recovered: new sessions are taken again
            again = RawSession(channel)
            welcome = await again.hello("late-2")
            assert welcome.session_id == "late-2"
            await again.call.done_writing()
            await again.status()


async def test_an_overloaded_dispatcher_refuses_pool_starts() -> None:
    async with running_dispatcher() as dispatcher:
        lag = dispatcher.sessions.loop_lag
        for _ in range(OVER_SAMPLES):
            lag.observe(lag.limit_s + 1.0)
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            control = wire.SessionControlServiceStub(channel)
            try:
                await control.Ask(wire.ctl.AskRequest(input_text="hi"))
            except grpc.aio.AioRpcError as error:
                assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error
                assert "overloaded" in (error.details() or "")
            else:
                raise AssertionError("Ask on an overloaded dispatcher was not refused")
