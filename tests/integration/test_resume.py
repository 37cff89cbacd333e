"""Resume after a disconnect, dispatcher side, at the packet level: DETACHED sessions, the
resumed Welcome, re-sent downstream packets, exactly-once tool calls, the window's end, and
every refusal. (The commander's side, through a fault proxy: test_resume_commander.py.)"""

from __future__ import annotations

from typing import Any

import anyio
import grpc
import pytest

from shared import wire
from shared.model import SessionState, StopCode, StopInfo
from tests.conftest import Gate, RawSession, gated_tools, running_dispatcher, test_config, wait_until

pytestmark = pytest.mark.anyio

RESUME = [*wire.FEATURES, "resume"]


def hello(session_id: str, *, resume: wire.pb.Resume | None = None, features: list[str] = RESUME) -> Any:
    packet = wire.pb.UpstreamPacket(hello=wire.pb.Hello(session_id=session_id, agent_name="test", features=features))
    if resume is not None:
        packet.hello.resume.CopyFrom(resume)
    else:
        packet.seq = 1
    return packet


async def open_session(channel: grpc.aio.Channel, session_id: str) -> tuple[RawSession, wire.pb.Welcome]:
    raw = RawSession(channel)
    await raw.send(hello(session_id))
    first = await raw.recv()
    assert first.HasField("welcome") and first.seq == 1
    return raw, first.welcome


async def resume(
    channel: grpc.aio.Channel, session_id: str, last_downstream_seq: int, last_upstream_seq: int = 0
) -> tuple[RawSession, wire.pb.DownstreamPacket]:
    raw = RawSession(channel)
    await raw.send(hello(session_id, resume=wire.pb.Resume(
        last_downstream_seq=last_downstream_seq, last_upstream_seq=last_upstream_seq
    )))  # fmt: skip
    return raw, await raw.recv()


def journal_kinds(dispatcher: Any, session_id: str) -> list[tuple[str, Any]]:
    registry = dispatcher.sessions.registry
    handle = registry.get_open(session_id)
    journal = handle.journal if handle is not None else registry.ended_journal(session_id)
    events = [journal.event(seq) for seq in range(journal.first_seq, journal.next_seq)]
    return [(event.WhichOneof("event"), getattr(event, event.WhichOneof("event"))) for event in events]


async def detached(dispatcher: Any, session_id: str) -> Any:
    registry = dispatcher.sessions.registry
    await wait_until(
        lambda: (h := registry.get_open(session_id)) is not None and h.info().state == wire.ctl.SESSION_STATE_DETACHED,
        "the session DETACHED",
    )
    return registry.get_open(session_id)


async def test_a_stream_lost_mid_answer_is_detached_then_resumed_with_every_event_once() -> None:
    async with running_dispatcher() as dispatcher, grpc.aio.insecure_channel(dispatcher.address) as channel:
        raw, welcome = await open_session(channel, "lost-mid-answer")
        assert "resume" in welcome.features and welcome.resume_window_s == 30
        for seq in range(2, 6):
            await raw.content(seq, f"c{seq} ")
        await wait_until(lambda: dispatcher.sessions.get_open("lost-mid-answer").machine.last_seq == 5, "all read")
        raw.call.cancel()  # the stream dies without a half-close
        handle = await detached(dispatcher, "lost-mid-answer")
        assert handle.info().detached_at_ms > 0

        again, first = await resume(channel, "lost-mid-answer", last_downstream_seq=1, last_upstream_seq=6)
        assert first.HasField("welcome") and first.welcome.resumed
        assert first.welcome.last_upstream_seq == 5 and first.seq == 2  # numbered after the first Welcome
        await again.content(4, "c4 ")  # re-sent though held: dropped, never journaled twice
        await again.content(6, "c6 ")
        await again.content(7, "", is_finish=True)
        await again.call.done_writing()
        code, _, trailers = await again.status()
        assert (code, trailers[wire.MetadataKey.SESSION_STATE]) == (grpc.StatusCode.OK, "FINISHED")
        ended = dispatcher.sessions.get_ended("lost-mid-answer")
        assert ended.info.resumes == 1

        events = journal_kinds(dispatcher, "lost-mid-answer")
    content = "".join(event.text for kind, event in events if kind == "content")
    assert content == "c2 c3 c4 c5 c6 "
    states = [event.state for kind, event in events if kind == "state_change"]
    assert states == [
        wire.ctl.SESSION_STATE_OPEN,
        wire.ctl.SESSION_STATE_DETACHED,
        wire.ctl.SESSION_STATE_ACTIVE,
        wire.ctl.SESSION_STATE_FINISHED,
    ]


async def test_a_result_decided_while_detached_is_delivered_on_resume_and_a_call_id_runs_once() -> None:
    gate = Gate()
    async with running_dispatcher(tools=gated_tools(gate)) as dispatcher:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            raw, _ = await open_session(channel, "result-while-detached")
            await raw.tool_call(2, "gate_tool", "{}", call_id="c1")
            with anyio.fail_after(5):
                await gate.started.wait()
            raw.call.cancel()
            handle = await detached(dispatcher, "result-while-detached")
            gate.release.set()  # the call goes on while detached and finishes
            await wait_until(lambda: handle.machine.tools.done_count == 1, "the call done")

            again, first = await resume(channel, "result-while-detached", last_downstream_seq=1)
            assert first.welcome.resumed and first.welcome.last_upstream_seq == 2
            result = await again.recv_kind("tool_result")
            assert result.tool_result.call_id == "c1" and '"released":true' in result.tool_result.result_json
            # The commander asks again for the same call id (a new packet): the recorded result,
            # not a second run.
            await again.tool_call(3, "gate_tool", "{}", call_id="c1")
            repeated = await again.recv_kind("tool_result")
            assert repeated.tool_result.result_json == result.tool_result.result_json
            assert repeated.seq > result.seq
            await again.content(4, "", is_finish=True)
            await again.call.done_writing()
            code, _, _ = await again.status()
            assert code is grpc.StatusCode.OK
        events = journal_kinds(dispatcher, "result-while-detached")
    assert gate.calls == 1
    assert [kind for kind, _ in events].count("tool_call") == 1
    assert [kind for kind, _ in events].count("tool_result") == 2  # the result, and the repeat's answer
    assert not [kind for kind, _ in events if kind == "tool_result_dropped"]


async def test_a_stop_issued_while_detached_is_delivered_on_resume() -> None:
    async with running_dispatcher() as dispatcher, grpc.aio.insecure_channel(dispatcher.address) as channel:
        raw, _ = await open_session(channel, "stopped-while-detached")
        await raw.content(2, "hello ")
        raw.call.cancel()
        handle = await detached(dispatcher, "stopped-while-detached")
        handle.request_stop(StopInfo(StopCode.OPERATOR, "operator stop", path=("operator:test",)))
        assert handle.info().state == wire.ctl.SESSION_STATE_DETACHED  # still waiting for its commander

        again, first = await resume(channel, "stopped-while-detached", last_downstream_seq=1)
        assert first.welcome.resumed
        stop = await again.recv_kind("stop")
        assert stop.stop.code == wire.pb.STOP_CODE_OPERATOR
        await again.send(wire.pb.UpstreamPacket(seq=3, stop_confirm=wire.pb.StopConfirm(stop_id=stop.stop.stop_id)))
        await again.call.done_writing()
        _, _, trailers = await again.status()
        ended = dispatcher.sessions.get_ended("stopped-while-detached")
    assert trailers[wire.MetadataKey.STOP_CONFIRMED] == "true"
    assert ended.outcome.state is SessionState.STOPPED and ended.outcome.stop_confirmed


async def test_no_resume_within_the_window_ends_cancelled_with_the_reason_and_cancels_its_tools() -> None:
    gate = Gate()
    config = test_config(session={"resume_window_s": 0.3})
    async with running_dispatcher(config, tools=gated_tools(gate)) as dispatcher:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel:
            raw, welcome = await open_session(channel, "never-resumed")
            assert welcome.resume_window_s == 1  # whole seconds, rounded up
            await raw.tool_call(2, "gate_tool", "{}", call_id="c1")
            with anyio.fail_after(5):
                await gate.started.wait()
            raw.call.cancel()
            await wait_until(lambda: dispatcher.sessions.get_ended("never-resumed") is not None, "ended")
            with anyio.fail_after(5):
                await gate.cancelled.wait()
        ended = dispatcher.sessions.get_ended("never-resumed")
        events = journal_kinds(dispatcher, "never-resumed")
    assert ended.outcome.state is SessionState.CANCELLED and ended.outcome.ended_by == "peer"
    assert "peer lost, not resumed within 0.3s" in ended.outcome.reason
    assert [event.error.code for kind, event in events if kind == "tool_result_dropped"] == [
        wire.pb.TOOL_ERROR_CODE_CANCELLED
    ]


async def test_a_resume_takes_over_a_stream_that_still_looks_alive() -> None:
    async with running_dispatcher() as dispatcher, grpc.aio.insecure_channel(dispatcher.address) as channel:
        old, _ = await open_session(channel, "taken-over")
        await old.content(2, "a ")
        await wait_until(lambda: dispatcher.sessions.get_open("taken-over").machine.last_seq == 2, "read")
        again, first = await resume(channel, "taken-over", last_downstream_seq=1)  # the old one never broke
        assert first.welcome.resumed and first.welcome.last_upstream_seq == 2
        code, details, _ = await old.status()
        assert code is grpc.StatusCode.ABORTED and "resumed on another stream" in details
        await again.content(3, "b", is_finish=True)
        await again.call.done_writing()
        code, _, _ = await again.status()
        events = journal_kinds(dispatcher, "taken-over")
    assert code is grpc.StatusCode.OK
    assert "".join(event.text for kind, event in events if kind == "content") == "a b"


async def test_every_resume_that_cannot_be_served_has_a_status_and_a_reason() -> None:
    async with running_dispatcher() as dispatcher, grpc.aio.insecure_channel(dispatcher.address) as channel:
        unknown, _ = await resume(channel, "never-existed", last_downstream_seq=0)
        code, details, _ = await unknown.status()
        assert code is grpc.StatusCode.NOT_FOUND and "not held by this dispatcher" in details

        finished, _ = await open_session(channel, "finished-one")
        await finished.content(2, "x", is_finish=True)
        await finished.call.done_writing()
        await finished.status()
        after_end, _ = await resume(channel, "finished-one", last_downstream_seq=1)
        code, details, _ = await after_end.status()
        assert code is grpc.StatusCode.FAILED_PRECONDITION and "has ended FINISHED" in details

        plain = RawSession(channel)  # a Hello without the feature: not resumable
        await plain.send(hello("not-resumable", features=list(wire.FEATURES)))
        welcome = await plain.recv()
        assert welcome.welcome.resume_window_s == 0
        second, _ = await resume(channel, "not-resumable", last_downstream_seq=1)
        code, details, _ = await second.status()
        assert code is grpc.StatusCode.FAILED_PRECONDITION and 'not opened with the "resume" feature' in details
        plain.call.cancel()
        await wait_until(lambda: dispatcher.sessions.get_ended("not-resumable") is not None, "ended at once")
        assert dispatcher.sessions.get_ended("not-resumable").outcome.state is SessionState.CANCELLED


async def test_a_seed_era_stream_is_never_held() -> None:
    async with running_dispatcher() as dispatcher, grpc.aio.insecure_channel(dispatcher.address) as channel:
        raw = RawSession(channel, metadata=[(wire.MetadataKey.SESSION_ID, "seed-era")])
        await raw.send(wire.pb.UpstreamPacket(content=wire.pb.ContentChunk(text="old client")))
        await wait_until(lambda: dispatcher.sessions.get_open("seed-era") is not None, "open")
        raw.call.cancel()
        await wait_until(lambda: dispatcher.sessions.get_ended("seed-era") is not None, "ended at once")
        ended = dispatcher.sessions.get_ended("seed-era")
    assert ended.outcome.state is SessionState.CANCELLED and "not resumed" not in ended.outcome.reason


async def test_a_resume_needing_packets_no_longer_kept_is_refused() -> None:
    config = test_config(session={"replay_max_packets": 1})
    async with running_dispatcher(config) as dispatcher, grpc.aio.insecure_channel(dispatcher.address) as channel:
        raw, _ = await open_session(channel, "replay-overflow")
        await raw.tool_call(2, "echo", '{"text": "one"}', call_id="e1")
        await raw.recv_kind("tool_result")
        await raw.tool_call(3, "echo", '{"text": "two"}', call_id="e2")
        await raw.recv_kind("tool_result")
        raw.call.cancel()
        await detached(dispatcher, "replay-overflow")
        refused, _ = await resume(channel, "replay-overflow", last_downstream_seq=1)  # it never saw "one"
        code, details, _ = await refused.status()
        assert code is grpc.StatusCode.FAILED_PRECONDITION and "no longer holds the downstream packets" in details
        again, first = await resume(channel, "replay-overflow", last_downstream_seq=2)  # it saw "one"
        assert first.welcome.resumed
        result = await again.recv_kind("tool_result")
        assert result.tool_result.call_id == "e2"
        again.call.cancel()


async def test_a_stop_already_sent_keeps_its_grace_when_the_stream_then_breaks() -> None:
    async with running_dispatcher() as dispatcher, grpc.aio.insecure_channel(dispatcher.address) as channel:
        raw, _ = await open_session(channel, "stopped-then-lost")
        handle = dispatcher.sessions.get_open("stopped-then-lost")
        handle.request_stop(StopInfo(StopCode.OPERATOR, "operator stop", path=("operator:test",)))
        await raw.recv_kind("stop")  # it went out on this stream...
        raw.call.cancel()  # ...and the stream broke before any confirm
        await wait_until(lambda: dispatcher.sessions.get_ended("stopped-then-lost") is not None, "ended by the grace")
        ended = dispatcher.sessions.get_ended("stopped-then-lost")
    assert ended.outcome.state is SessionState.STOPPED and not ended.outcome.stop_confirmed
    assert "grace" in ended.outcome.reason


async def test_with_a_durable_store_an_ack_covers_only_what_is_committed(tmp_path: Any) -> None:
    import sqlite3

    from dispatcher.core.journal import Journal

    path = tmp_path / "acks.db"
    config = test_config(store={"url": f"sqlite:///{path}", "commit_interval_ms": 50})
    async with running_dispatcher(config) as dispatcher, grpc.aio.insecure_channel(dispatcher.address) as channel:
        raw, _ = await open_session(channel, "durable-acks")
        for seq in range(2, 12):
            await raw.content(seq, f"c{seq} ")
        await raw.tool_call(12, "echo", '{"text": "x"}', call_id="e1")  # an ack is due at once after a call
        while not (ack := await raw.recv()).HasField("ack"):  # the result may come first: the ack waits
            assert ack.HasField("tool_result")
        # The moment the ack is read, the store already holds every event it covers.
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT packed FROM events WHERE session_id = ?", ("durable-acks",)).fetchall()
            checkpoint = db.execute("SELECT checkpoint_seq FROM sessions WHERE id = ?", ("durable-acks",)).fetchone()
        stored = {Journal.packet_seq_of(row[0]) for row in rows}
        assert ack.ack.seq == 12 and set(range(2, 13)) <= stored
        assert checkpoint == (12,)
        raw.call.cancel()


async def test_a_stream_lost_twice_in_a_row_is_detached_once() -> None:
    """The RPC's done-callback and the writer's end both report the loss, often before the session
    task runs again: the second report must not cancel it a second time (it would end the session)."""
    async with running_dispatcher() as dispatcher, grpc.aio.insecure_channel(dispatcher.address) as channel:
        raw, _ = await open_session(channel, "lost-twice")
        await raw.content(2, "a ")
        handle = dispatcher.sessions.get_open("lost-twice")
        await wait_until(lambda: handle.machine.last_seq == 2, "read")
        handle.rpc_ended()  # both at once, with no await between them
        handle.writer_gone(None)
        await wait_until(lambda: handle._idle is not None, "the session task waiting for a stream")
        assert dispatcher.sessions.get_open("lost-twice") is handle
        assert handle.info().state == wire.ctl.SESSION_STATE_DETACHED
        again, first = await resume(channel, "lost-twice", last_downstream_seq=1)
        assert first.welcome.resumed
        await again.content(3, "b", is_finish=True)
        await again.call.done_writing()
        code, _, _ = await again.status()
        raw.call.cancel()
    assert code is grpc.StatusCode.OK


async def test_a_stream_lost_after_the_finish_keeps_the_finished_outcome() -> None:
    async with running_dispatcher() as dispatcher, grpc.aio.insecure_channel(dispatcher.address) as channel:
        raw, _ = await open_session(channel, "finished-then-lost")
        await raw.content(2, "done", is_finish=True)  # FINISHED, lingering for the half-close...
        await wait_until(lambda: dispatcher.sessions.get_open("finished-then-lost").machine.outcome is not None, "done")
        raw.call.cancel()  # ...which never comes: the stream dies instead
        await wait_until(lambda: dispatcher.sessions.get_ended("finished-then-lost") is not None, "ended")
        ended = dispatcher.sessions.get_ended("finished-then-lost")
        events = journal_kinds(dispatcher, "finished-then-lost")
    assert ended.outcome.state is SessionState.FINISHED
    states = [event.state for kind, event in events if kind == "state_change"]
    assert wire.ctl.SESSION_STATE_DETACHED not in states
