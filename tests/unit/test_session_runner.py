"""A session built by the SessionManager and driven without grpc or a servicer: upstream is an
async iterator the test feeds, the writer is a task the test can pause or kill.

What the wire carries (`written`) is compared with what the journal says was delivered: they
must always agree, whichever way a stop races the results queued in front of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import anyio
import pytest

from dispatcher.config import DispatcherConfig
from dispatcher.core.session import Session
from dispatcher.sessions.manager import SessionManager
from dispatcher.sessions.runner import SessionRunner
from dispatcher.tools import default_registry
from shared import wire
from shared.model import SessionState, StopCode, StopInfo
from tests.conftest import stubborn_tools

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

Up = wire.pb.UpstreamPacket


def config(**session: Any) -> DispatcherConfig:
    base = DispatcherConfig.for_tests()
    return replace(base, session=replace(base.session, **session))


class DrivenSession:
    """One session, its upstream fed by `send`, its downstream written by a task of ours."""

    def __init__(self, manager: SessionManager, session_id: str) -> None:
        self.manager = manager
        self._upstream: asyncio.Queue[Up | None] = asyncio.Queue()
        self.runner: SessionRunner = manager.open(session_id, self._requests(), peer="test")
        self.written: list[wire.pb.DownstreamPacket] = []
        self.reading = asyncio.Event()  # cleared: the "client" stops reading (the write blocks)
        self.reading.set()
        self._writer: asyncio.Task[None] | None = None

    async def _requests(self) -> AsyncIterator[Up]:
        while (packet := await self._upstream.get()) is not None:
            yield packet

    def start(self, first: Up) -> None:
        self.manager.start(self.runner, first)
        self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        """What the ChatStream handler does, with a pause to play a client that does not read."""
        in_flight = None
        try:
            while (packet := await self.runner.outbox.get()) is not None:
                in_flight = packet
                await self.reading.wait()
                self.written.append(packet)
                in_flight = None
                self.runner.written(packet)
        finally:
            self.runner.writer_gone(in_flight)

    def send(self, packet: Up) -> None:
        self._upstream.put_nowait(packet)

    def end_upstream(self) -> None:
        self._upstream.put_nowait(None)

    async def kill(self) -> None:
        """grpc killing the call: the handler is cancelled, then the RPC's done-callback runs."""
        assert self._writer is not None
        self._writer.cancel()
        await asyncio.wait([self._writer])
        self.runner.rpc_ended()

    async def ended(self) -> None:
        with anyio.fail_after(10):
            await self.runner.done.wait()
        if self._writer is not None:
            with anyio.fail_after(10):
                await asyncio.wait([self._writer])

    def wire_of(self, kind: str) -> list[Any]:
        return [getattr(p, kind) for p in self.written if p.WhichOneof("signal") == kind]

    def journal_of(self, kind: str) -> list[Any]:
        journal = self.runner.journal
        found = []
        for seq in range(journal.first_seq, journal.next_seq):
            event = journal.event(seq)
            if event is not None and event.WhichOneof("event") == kind:
                found.append(getattr(event, kind))
        return found


def hello(seq: int = 1) -> Up:
    return Up(seq=seq, hello=wire.pb.Hello(agent_name="test"))


def content(seq: int, text: str = "x") -> Up:
    return Up(seq=seq, content=wire.pb.ContentChunk(text=text))


def echo(seq: int, call_id: str) -> Up:
    return Up(seq=seq, tool_call=wire.pb.ToolCallRequest(tool_name="echo", arguments_json="{}", call_id=call_id))


async def until(predicate: Any) -> None:
    """Let the session's tasks run until `predicate()` holds (a bounded poll, no clock)."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the session never got there")


async def test_a_session_runs_from_the_manager_alone_and_finishes() -> None:
    manager = SessionManager(config(), default_registry())
    session = DrivenSession(manager, "plain")
    session.start(hello())
    session.send(echo(2, "c1"))
    session.send(Up(seq=3, content=wire.pb.ContentChunk(text="done", is_finish=True)))
    session.end_upstream()
    await session.ended()
    outcome = session.runner.outcome
    assert outcome is not None and outcome.state is SessionState.FINISHED, outcome
    assert [r.call_id for r in session.wire_of("tool_result")] == ["c1"]
    assert session.wire_of("tool_result") == session.journal_of("tool_result")
    assert manager.registry.open_count == 0 and manager.get_ended("plain") is not None


async def test_a_half_close_is_told_from_a_killed_call_by_the_write_of_the_final_ack() -> None:
    manager = SessionManager(config(), default_registry())
    clean, killed = DrivenSession(manager, "clean"), DrivenSession(manager, "killed")
    for session in (clean, killed):
        session.start(hello())
        session.send(content(2))
    await until(lambda: clean.runner.machine.last_seq == 2 and killed.runner.machine.last_seq == 2)
    clean.end_upstream()  # the commander half-closed: the ack gets written
    killed.reading.clear()  # grpc killed this one: its ack never gets written ...
    killed.end_upstream()
    await until(lambda: len(killed.runner.outbox) == 0)  # ... the writer holds it, blocked
    await killed.kill()
    await clean.ended()
    await killed.ended()
    assert clean.runner.outcome is not None and clean.runner.outcome.state is SessionState.FINISHED
    assert [a.seq for a in clean.wire_of("ack")][-1] == 2
    assert killed.runner.outcome is not None and killed.runner.outcome.state is SessionState.CANCELLED
    assert killed.runner.outcome.reason != "commander half-closed without finishing"


@pytest.mark.parametrize("queued", [2, 6], ids=["outbox-not-full", "outbox-full"])
async def test_a_stop_goes_ahead_of_queued_results_and_the_journal_matches_the_wire(queued: int) -> None:
    manager = SessionManager(config(outbox_size=4), default_registry())
    session = DrivenSession(manager, f"race-{queued}")
    session.start(hello())
    await until(lambda: bool(session.wire_of("welcome")))
    session.reading.clear()  # the client stops reading while results queue up
    for n in range(queued):
        session.send(echo(2 + n, f"c{n}"))
    expected_queued = min(queued, 4)  # the outbox holds 4; a full one stops the session reading
    await until(lambda: session.runner.machine.tools.done_count >= expected_queued)
    session.runner.request_stop(StopInfo(StopCode.OPERATOR, "operator stop", path=("operator:test",)))
    session.reading.set()
    await until(lambda: bool(session.wire_of("stop")))
    kinds = [p.WhichOneof("signal") for p in session.written]
    after_stop = kinds[kinds.index("stop") + 1 :]
    assert set(after_stop) <= {"ack"}, kinds  # after the stop, only acks
    stop = session.wire_of("stop")[0]
    session.send(Up(seq=2 + queued, stop_confirm=wire.pb.StopConfirm(stop_id=stop.stop_id)))
    session.end_upstream()
    await session.ended()
    delivered = [r.call_id for r in session.wire_of("tool_result")]
    assert delivered == [r.call_id for r in session.journal_of("tool_result")]  # watch == wire
    dropped = {r.call_id for r in session.journal_of("tool_result_dropped")}
    assert not dropped & set(delivered)
    assert dropped | set(delivered) >= {f"c{n}" for n in range(expected_queued)}
    assert session.runner.outcome is not None and session.runner.outcome.stop_confirmed


async def test_a_tool_that_swallows_cancellation_cannot_keep_its_session_open() -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    manager = SessionManager(config(tool_cancel_grace_ms=50), stubborn_tools(entered, release))
    session = DrivenSession(manager, "stubborn")
    session.start(hello())
    session.send(Up(seq=2, tool_call=wire.pb.ToolCallRequest(tool_name="stubborn", call_id="s1")))
    with anyio.fail_after(5):
        await entered.wait()
    session.runner.request_stop(StopInfo(StopCode.OPERATOR, "operator stop", path=("operator:test",)))
    stop = await _first_stop(session)
    session.send(Up(seq=3, stop_confirm=wire.pb.StopConfirm(stop_id=stop.stop_id)))
    session.end_upstream()
    await session.ended()  # within the grace, although the tool never ends
    assert manager.registry.open_count == 0  # its --server-max-sessions slot is free again
    (dropped,) = session.journal_of("tool_result_dropped")
    assert dropped.call_id == "s1" and dropped.error.code == wire.pb.TOOL_ERROR_CODE_CANCELLED
    assert "abandoned" in dropped.error.message
    assert len(manager.abandoned) == 1  # accounted for, for shutdown
    assert await manager.aclose(0.05) == ["tool:stubborn:s1"]  # and shutdown gives up on it, bounded
    release.set()  # the test leaves nothing running behind it
    await until(lambda: not manager.abandoned)


async def _first_stop(session: DrivenSession) -> wire.pb.StopSignal:
    await until(lambda: bool(session.wire_of("stop")))
    stop: wire.pb.StopSignal = session.wire_of("stop")[0]
    return stop


async def test_a_bug_in_the_session_fails_it_internal_with_a_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Session, *args: Any) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(Session, "_on_thought", broken)
    manager = SessionManager(config(), default_registry())
    bystander, victim = DrivenSession(manager, "bystander"), DrivenSession(manager, "victim")
    bystander.start(hello())
    victim.start(hello())
    victim.send(Up(seq=2, thought=wire.pb.ThoughtChain(step_name="s", delta="d")))
    await victim.ended()
    outcome = victim.runner.outcome
    assert outcome is not None and outcome.state is SessionState.FAILED and outcome.status == "INTERNAL"
    assert outcome.reason.startswith("internal error (ref ") and "a bug of ours" not in outcome.reason
    bystander.send(Up(seq=2, content=wire.pb.ContentChunk(text="fine", is_finish=True)))
    bystander.end_upstream()
    await bystander.ended()
    assert bystander.runner.outcome is not None and bystander.runner.outcome.state is SessionState.FINISHED
