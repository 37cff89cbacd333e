"""SessionControlService against a real in-process dispatcher, real channels, real sessions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import grpc
import pytest

from commander.models import ScriptedAgent
from commander.session import SessionResult, run_session
from dispatcher.app import Dispatcher
from shared import wire
from shared.model import SessionState, StopCode, StopInfo
from tests.conftest import (
    WAIT_S,
    Gate,
    RawSession,
    commander_config,
    gated_tools,
    running_dispatcher,
    test_config,
    wait_until,
)

pytestmark = pytest.mark.anyio


def control(channel: grpc.aio.Channel) -> Any:
    return wire.SessionControlServiceStub(channel)


async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """Read a server stream to its end; its final status."""
    try:
        while await asyncio.wait_for(call.read(), WAIT_S) is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return await call.code(), await call.details()


@asynccontextmanager
async def pool_commanders(
    d: Dispatcher, n: int, *, tokens_per_s: float = 0, answer_words: int = 60
) -> AsyncIterator[list[SessionResult]]:
    """`n` pool streams (as `commander serve` opens them); their results, once assigned and ended."""
    results: list[SessionResult] = []
    assert d.address is not None
    address = d.address
    async with grpc.aio.insecure_channel(address) as channel, anyio.create_task_group() as tg:
        cancel = anyio.Event()

        async def one() -> None:
            results.append(
                await run_session(
                    ScriptedAgent(tokens_per_s=tokens_per_s, answer_words=answer_words),
                    "",
                    channel=channel,
                    config=commander_config(address),
                    cancel=cancel,
                    await_assignment=True,
                )
            )

        for _ in range(n):
            tg.start_soon(one)
        await wait_until(lambda: d.sessions.pool.free_count == n, f"{n} pool streams registered")
        try:
            yield results
        finally:
            cancel.set()


# -- list / get ---------------------------------------------------------------------


async def test_list_and_get_show_a_running_session_with_its_tool_call() -> None:
    gate = Gate()
    async with running_dispatcher(tools=gated_tools(gate)) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = RawSession(ch)
        await raw.hello("listed")
        await raw.content(2, "hello ")
        await raw.tool_call(3, "gate_tool", '{"n": 1}', call_id="c1")
        await gate.started.wait()
        listed = await control(ch).ListSessions(wire.ctl.ListSessionsRequest())
        assert [s.session_id for s in listed.sessions] == ["listed"]
        info = listed.sessions[0]
        assert info.state == wire.ctl.SESSION_STATE_AWAITING_TOOL
        assert info.commander == "test" and info.commander_peer.startswith("ipv4:127.0.0.1:")
        assert dict(info.packets_in) == {"hello": 1, "content": 1, "tool_call": 1}
        assert info.tool_calls_running == 1 and info.dispatcher_id == "dispatcher:test"
        got = await control(ch).GetSession(wire.ctl.GetSessionRequest(session_id="listed"))
        assert [(c.call_id, c.tool_name) for c in got.running_tool_calls] == [("c1", "gate_tool")]
        gate.release.set()
        await raw.recv_kind("tool_result")
        await raw.content(4, "done", is_finish=True)
        await raw.call.done_writing()
        await raw.status()
        ended = await control(ch).GetSession(wire.ctl.GetSessionRequest(session_id="listed"))
        assert ended.session.state == wire.ctl.SESSION_STATE_FINISHED
        assert ended.session.outcome.state == wire.ctl.SESSION_STATE_FINISHED
        assert ended.session.tool_calls_done == 1 and ended.session.packets_out["tool_result"] == 1


async def test_list_filters_by_state_and_pages_without_gaps() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch:
        open_ones = [RawSession(ch) for _ in range(5)]
        for number, raw in enumerate(open_ones):
            await raw.hello(f"s{number}")
        finished = RawSession(ch)
        await finished.hello("done")
        await finished.content(2, "x", is_finish=True)
        await finished.call.done_writing()
        await finished.status()
        seen: list[str] = []
        token = ""
        while True:
            page = await control(ch).ListSessions(wire.ctl.ListSessionsRequest(page_size=2, page_token=token))
            assert len(page.sessions) <= 2
            seen += [s.session_id for s in page.sessions]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == ["done", "s0", "s1", "s2", "s3", "s4"] and len(seen) == len(set(seen))
        only_ended = await control(ch).ListSessions(
            wire.ctl.ListSessionsRequest(states=[wire.ctl.SESSION_STATE_FINISHED])
        )
        assert [s.session_id for s in only_ended.sessions] == ["done"]
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await control(ch).ListSessions(wire.ctl.ListSessionsRequest(page_token="not-ours"))
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        for raw in open_ones:
            raw.call.cancel()


async def test_unknown_session_is_not_found_everywhere() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch:
        stub = control(ch)
        for call in (
            stub.GetSession(wire.ctl.GetSessionRequest(session_id="nope")),
            stub.StopSession(wire.ctl.StopSessionRequest(session_id="nope", reason="x")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await call
            assert missing.value.code() is grpc.StatusCode.NOT_FOUND
            assert "nope" in (missing.value.details() or "")
        code, details = await status_of(stub.WatchSession(wire.ctl.WatchSessionRequest(session_id="nope")))
        assert code is grpc.StatusCode.NOT_FOUND and "nope" in details


# -- stop ---------------------------------------------------------------------------


async def test_operator_stop_is_confirmed_with_the_path_on_both_ends() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch:
        async with anyio.create_task_group() as tg:
            result: list[SessionResult] = []

            async def commander() -> None:
                result.append(
                    await run_session(
                        ScriptedAgent(tokens_per_s=200, answer_words=10_000),
                        "tell me a long story",
                        channel=ch,
                        config=commander_config(d.address or ""),
                        session_id="victim",
                    )
                )

            tg.start_soon(commander)
            await wait_until(
                lambda: (h := d.sessions.registry.get_open("victim")) is not None and h.journal.last_seq > 8,
                "the commander is streaming its answer",
            )
            response = await control(ch).StopSession(
                wire.ctl.StopSessionRequest(session_id="victim", reason="incident 42", cause="ticket=INC-42")
            )
        assert response.result == wire.ctl.STOP_RESULT_CONFIRMED
        assert response.stop_to_confirm_us > 0
        assert list(response.stop.path) == ["operator:anonymous", "dispatcher:test"]
        assert response.stop.code == wire.pb.STOP_CODE_OPERATOR and response.stop.cause == "ticket=INC-42"
        assert response.outcome.state == wire.ctl.SESSION_STATE_STOPPED and response.outcome.stop_confirmed
        commander_side = result[0]
        assert commander_side.state is SessionState.STOPPED
        assert commander_side.stop is not None and commander_side.stop.code is StopCode.OPERATOR
        assert commander_side.stop.path == ("operator:anonymous", "dispatcher:test")
        again = await control(ch).StopSession(wire.ctl.StopSessionRequest(session_id="victim", reason="twice"))
        assert again.result == wire.ctl.STOP_RESULT_ALREADY_ENDED
        assert again.outcome.stop.stop_id == response.stop.stop_id


async def test_stop_not_confirmed_when_the_commander_ignores_it() -> None:
    config = test_config(session={"stop_grace_ms": 100})
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = RawSession(ch)
        await raw.hello("deaf")
        response = await control(ch).StopSession(
            wire.ctl.StopSessionRequest(session_id="deaf", reason="budget", code=wire.pb.STOP_CODE_BUDGET_EXCEEDED)
        )
        assert response.result == wire.ctl.STOP_RESULT_NOT_CONFIRMED
        assert "grace period" in response.outcome.reason and response.stop_to_confirm_us == 0
        assert response.stop.code == wire.pb.STOP_CODE_BUDGET_EXCEEDED
        code, _details, trailers = await raw.status()
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and trailers["x-stop-confirmed"] == "false"


async def test_stop_without_a_reason_is_invalid() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = RawSession(ch)
        await raw.hello("kept")
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await control(ch).StopSession(wire.ctl.StopSessionRequest(session_id="kept", reason="  "))
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "reason" in (bad.value.details() or "")
        assert d.sessions.registry.get_open("kept") is not None  # untouched
        raw.call.cancel()


# -- watch --------------------------------------------------------------------------


async def _events(call: Any) -> list[wire.ctl.SessionEvent]:
    """Every event of a server stream that must end OK."""
    events = []
    while (response := await asyncio.wait_for(call.read(), WAIT_S)) is not grpc.aio.EOF:
        events.append(response.event)
    return events


async def test_watch_late_and_resumed_sees_every_event_exactly_once() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = RawSession(ch)
        await raw.hello("watched")
        for seq in range(2, 12):
            await raw.content(seq, f"t{seq} ")
        await wait_until(
            lambda: d.sessions.registry.get_open("watched").journal.last_seq >= 11, "10 contents journaled"
        )  # type: ignore[union-attr]
        stub = control(ch)
        # A watcher joining late reads 5 events, then drops its connection.
        first_call = stub.WatchSession(wire.ctl.WatchSessionRequest(session_id="watched"))
        first = [(await asyncio.wait_for(first_call.read(), WAIT_S)).event for _ in range(5)]
        first_call.cancel()
        for seq in range(12, 20):
            await raw.content(seq, f"t{seq} ")
        await raw.content(20, "end", is_finish=True)
        await raw.call.done_writing()
        await raw.status()
        # It reconnects from the last seq it saw + 1; the session has ended meanwhile.
        rest = await _events(
            stub.WatchSession(wire.ctl.WatchSessionRequest(session_id="watched", from_seq=first[-1].seq + 1))
        )
        seqs = [e.seq for e in first + rest]
        assert seqs == list(range(1, len(seqs) + 1)), "gaps or duplicates across the reconnect"
        texts = [e.content.text for e in first + rest if e.HasField("content")]
        assert texts == [f"t{seq} " for seq in range(2, 20)] + ["end"]
        assert rest[-1].state_change.state == wire.ctl.SESSION_STATE_FINISHED
        only_content = await _events(
            stub.WatchSession(wire.ctl.WatchSessionRequest(session_id="watched", kinds=[wire.ctl.EVENT_KIND_CONTENT]))
        )
        assert len(only_content) == 19 and all(e.HasField("content") for e in only_content)


async def test_watch_from_a_dropped_seq_is_out_of_range() -> None:
    config = test_config(session={"journal_max_events": 5})
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = RawSession(ch)
        await raw.hello("short")
        for seq in range(2, 12):
            await raw.content(seq, "x")
        await wait_until(lambda: d.sessions.registry.get_open("short").journal.last_seq >= 11, "contents journaled")  # type: ignore[union-attr]
        code, details = await status_of(
            control(ch).WatchSession(wire.ctl.WatchSessionRequest(session_id="short", from_seq=2))
        )
        assert code is grpc.StatusCode.OUT_OF_RANGE and "no longer kept" in details and "resume from 7" in details
        code, details = await status_of(
            control(ch).WatchSession(wire.ctl.WatchSessionRequest(session_id="short", from_seq=99))
        )
        assert code is grpc.StatusCode.OUT_OF_RANGE and "beyond the next event" in details
        raw.call.cancel()


async def test_a_slow_watcher_is_cut_off_and_never_slows_the_commander() -> None:
    config = test_config(session={"journal_max_events": 64})
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = RawSession(ch)
        await raw.hello("fast")
        # The watcher's own connection, with a small receive window and no BDP growth, so
        # that not reading soon stops grpc from taking more off the server.
        small_window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]
        watch_channel = grpc.aio.insecure_channel(d.address or "", options=small_window)
        watcher = control(watch_channel).WatchSession(wire.ctl.WatchSessionRequest(session_id="fast"))
        first = await asyncio.wait_for(watcher.read(), WAIT_S)  # then it stops reading
        assert first.event.seq == 1
        chunk = "x" * 2048  # 2000 x 2 KiB: far more than any HTTP/2 window buffers
        for seq in range(2, 2002):
            await raw.content(seq, chunk)
        await raw.content(2002, "", is_finish=True)
        await raw.call.done_writing()
        code, _details, _trailers = await raw.status()
        assert code is grpc.StatusCode.OK  # the commander finished at full speed, unhindered
        code, details = await status_of(watcher)
        await watch_channel.close()
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fell behind" in details and "resume with from_seq=" in details


# -- start / ask (pool) -------------------------------------------------------------


async def test_start_session_streams_a_pool_commanders_answer() -> None:
    async with running_dispatcher() as d, pool_commanders(d, 2) as results, grpc.aio.insecure_channel(d.address) as ch:
        stub = control(ch)
        events = await _events(
            stub.StartSession(wire.ctl.StartSessionRequest(input_text="what is 6*7?", session_id="s-1"))
        )
        assert events[0].state_change.state == wire.ctl.SESSION_STATE_OPEN and events[0].session_id == "s-1"
        assert any(e.tool_result.result_json and '"value":42' in e.tool_result.result_json for e in events)
        assert events[-1].state_change.state == wire.ctl.SESSION_STATE_FINISHED
        await wait_until(lambda: len(results) == 1, "the commander reported its session")
        assert results[0].assigned is not None and results[0].session_id == "s-1"
        assert results[0].state is SessionState.FINISHED
        info = (await stub.GetSession(wire.ctl.GetSessionRequest(session_id="s-1"))).session
        assert info.started_by == "operator:anonymous" and info.commander == "scripted-agent"
        await wait_until(lambda: d.sessions.pool.free_count == 1, "one stream left idle in the pool")


async def test_two_concurrent_starts_run_on_two_commanders() -> None:
    async with (
        running_dispatcher() as d,
        pool_commanders(d, 2, tokens_per_s=400) as results,
        grpc.aio.insecure_channel(d.address) as ch,
    ):
        stub = control(ch)
        answers: dict[str, list[wire.ctl.SessionEvent]] = {}

        async def start(name: str) -> None:
            answers[name] = await _events(
                stub.StartSession(wire.ctl.StartSessionRequest(input_text=f"hi {name}", session_id=name))
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(start, "a")
            tg.start_soon(start, "b")
            await wait_until(lambda: d.sessions.registry.open_count == 2, "both sessions open at once")
        assert all(events[-1].state_change.state == wire.ctl.SESSION_STATE_FINISHED for events in answers.values())
        await wait_until(lambda: len(results) == 2, "both commanders reported")
        assert {r.session_id for r in results} == {"a", "b"}


async def test_caller_cancel_stops_the_commander_with_user_cancel() -> None:
    async with (
        running_dispatcher() as d,
        pool_commanders(d, 1, tokens_per_s=200, answer_words=10_000) as results,
        grpc.aio.insecure_channel(d.address) as ch,
    ):
        call = control(ch).StartSession(wire.ctl.StartSessionRequest(input_text="long story", session_id="cx"))
        while not (await asyncio.wait_for(call.read(), WAIT_S)).event.HasField("content"):
            pass
        call.cancel()
        await wait_until(lambda: len(results) == 1, "the commander's session ended")
        result = results[0]
        assert result.state is SessionState.STOPPED and result.stop is not None
        assert result.stop.code is StopCode.USER_CANCEL
        assert result.stop.path == ("operator:anonymous", "dispatcher:test")
        ended = d.sessions.registry.get_ended("cx")
        assert ended is not None and ended.outcome.stop_confirmed


async def test_caller_deadline_stops_the_session_with_timeout() -> None:
    async with (
        running_dispatcher() as d,
        pool_commanders(d, 1, tokens_per_s=100, answer_words=10_000) as results,
        grpc.aio.insecure_channel(d.address) as ch,
    ):
        code, _ = await status_of(
            control(ch).StartSession(wire.ctl.StartSessionRequest(input_text="long", session_id="late", timeout_ms=300))
        )
        assert code is grpc.StatusCode.OK  # the session ended (stopped) within the call
        await wait_until(lambda: len(results) == 1, "the commander's session ended")
        assert results[0].stop is not None and results[0].stop.code is StopCode.TIMEOUT
        assert results[0].stop.path[0] == "operator:anonymous"


async def test_no_free_commander_is_unavailable_after_the_wait() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch:
        code, details = await status_of(
            control(ch).StartSession(wire.ctl.StartSessionRequest(input_text="hi", wait_for_commander_ms=50))
        )
        assert code is grpc.StatusCode.UNAVAILABLE and "no free commander within 50 ms" in details
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await control(ch).Ask(wire.ctl.AskRequest(input_json="[1]"))
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "JSON object" in (bad.value.details() or "")


async def test_ask_returns_the_whole_answer() -> None:
    async with (
        running_dispatcher() as d,
        pool_commanders(d, 1, answer_words=12),
        grpc.aio.insecure_channel(d.address) as ch,
    ):
        answer = await control(ch).Ask(wire.ctl.AskRequest(input_text="what is 2+2?"))
        assert answer.outcome.state == wire.ctl.SESSION_STATE_FINISHED
        assert "4" in answer.answer and answer.tool_calls == 1 and answer.session_id


async def test_a_stop_for_a_stream_that_just_ended_is_harmless() -> None:
    """Regression: the handler had closed the outbox (RPC over) but the runner had not finished
    yet; a stop then (shutdown drain, operator) raised BrokenResourceError and broke the drain."""
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = RawSession(ch)
        await raw.hello("ending")
        handle = d.sessions.registry.get_open("ending")
        assert handle is not None
        handle.outbox.close()  # what the ChatStream handler's `finally` does when the RPC ends
        handle.request_stop(StopInfo(StopCode.OPERATOR, "too late", path=("operator:test",)))
        handle.request_stop(StopInfo(StopCode.SHUTDOWN, "draining", path=("shutdown:test",)))
        raw.call.cancel()
        await wait_until(lambda: d.sessions.registry.get_ended("ending") is not None, "the session ended")


async def test_bad_start_and_stop_requests_get_invalid_argument_or_already_exists() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch:
        stub = control(ch)
        raw = RawSession(ch)
        await raw.hello("taken")
        cases = [
            (wire.ctl.StartSessionRequest(), grpc.StatusCode.INVALID_ARGUMENT, "input_text or input_json is required"),
            (wire.ctl.StartSessionRequest(input_text="hi", session_id="has space"), grpc.StatusCode.INVALID_ARGUMENT,
             "session_id must be"),
            (wire.ctl.StartSessionRequest(input_json="{not json"), grpc.StatusCode.INVALID_ARGUMENT,
             "input_json is not valid JSON"),
            (wire.ctl.StartSessionRequest(input_text="hi", session_id="taken"), grpc.StatusCode.ALREADY_EXISTS,
             "already in use"),
        ]  # fmt: skip
        for request, code, words in cases:
            got, details = await status_of(stub.StartSession(request))
            assert (got, words in details) == (code, True), (request, got, details)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.StopSession(wire.ctl.StopSessionRequest(session_id="taken", reason="x", code=99))  # type: ignore[arg-type]
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert d.sessions.registry.get_open("taken") is not None  # untouched by every refusal
        raw.call.cancel()


async def test_a_member_that_went_away_is_skipped(tmp_path: Any) -> None:
    """A worker that died left its address behind: lookups skip it and answer for themselves."""
    (tmp_path / "ghost.addr").write_text("127.0.0.1:1\n")  # nothing listens there
    config = test_config(server={"peer_dir": str(tmp_path)})
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await control(ch).GetSession(wire.ctl.GetSessionRequest(session_id="nowhere"))
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        listed = await control(ch).ListSessions(wire.ctl.ListSessionsRequest())
        assert list(listed.sessions) == []


async def test_ask_with_json_nested_past_any_limit_is_invalid_argument_not_unknown() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch:
        for nested in ("[" * 200_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await control(ch).Ask(wire.ctl.AskRequest(input_json=nested))
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value
            assert refused.value.details() == "input_json is nested too deeply"


async def test_a_bug_in_a_control_handler_is_internal_with_a_reference_never_unknown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Any, session_id: str) -> Any:
        raise ZeroDivisionError("a bug of ours")

    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch:
        monkeypatch.setattr(type(d.sessions), "get_open", broken)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await control(ch).GetSession(wire.ctl.GetSessionRequest(session_id="any"))
        monkeypatch.undo()
        assert failed.value.code() is grpc.StatusCode.INTERNAL
        details = failed.value.details() or ""
        assert details.startswith("internal error (ref ") and "ZeroDivisionError" not in details, details
        listed = await control(ch).ListSessions(wire.ctl.ListSessionsRequest())  # the service goes on
        assert list(listed.sessions) == []
