"""A dispatcher on an SQLite store, started again on the same file: ended sessions come back
listable and watchable, and a session that was live when the process died is recorded as
ended by that crash, through the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from dispatcher.app import Dispatcher
from dispatcher.core.journal import Journal
from dispatcher.core.snapshots import state_change
from dispatcher.store import StoreOpenError
from dispatcher.store.recovery import CRASHED_REASON
from dispatcher.store.sqlite import SqliteStore
from shared import wire
from shared.model import SessionState
from tests.conftest import run_scripted, running_dispatcher, test_config

pytestmark = pytest.mark.anyio


def control(channel: grpc.aio.Channel) -> Any:
    return wire.SessionControlServiceStub(channel)


async def watch_all(channel: grpc.aio.Channel, session_id: str) -> list[wire.ctl.SessionEvent]:
    call = control(channel).WatchSession(wire.ctl.WatchSessionRequest(session_id=session_id, from_seq=1))
    return [response.event async for response in call]


async def leave_a_live_session(path: Path) -> Journal:
    """What a dispatcher killed mid-session leaves: the session opened, events, a checkpoint, no end."""
    store = SqliteStore(str(path))
    await store.open()
    journal = Journal("was-live", max_events=4096, max_bytes=1 << 20)
    opened = wire.ctl.SessionInfo(session_id="was-live", commander="agent-7", started_at_ms=1_000, started_by="")
    store.session_opened("was-live", opened=opened.SerializeToString(), hello=b"", journal=journal)
    journal.append("state_change", state_change(SessionState.OPEN, "stream opened"))
    journal.append("content", wire.pb.ContentChunk(text="half an answer"), 2)
    opened.packets_in["content"] = 1
    store.checkpoint("was-live", 2, opened.SerializeToString())
    await store.flush()
    await store.aclose()
    return journal


async def test_a_session_live_at_the_crash_is_recorded_cancelled_and_its_journal_kept(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    before = await leave_a_live_session(path)
    config = test_config(store={"url": f"sqlite:///{path}"})
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as channel:
        got = await control(channel).GetSession(wire.ctl.GetSessionRequest(session_id="was-live"))
        info = got.session
        assert info.state == wire.ctl.SESSION_STATE_CANCELLED and info.commander == "agent-7"
        assert (info.outcome.reason, info.outcome.ended_by) == (CRASHED_REASON, "dispatcher:test")
        assert info.outcome.status == "CANCELLED" and dict(info.packets_in) == {"content": 1}
        events = await watch_all(channel, "was-live")
        assert [e.seq for e in events] == [1, 2, 3] and info.last_event_seq == 3
        assert [(e.at_ms, e.content.text) for e in events[:2]] == [(before.event(s).at_ms, before.event(s).content.text)  # type: ignore[union-attr]
                                                                   for s in (1, 2)]  # fmt: skip
        assert events[2].state_change.state == wire.ctl.SESSION_STATE_CANCELLED
        assert events[2].state_change.outcome.reason == CRASHED_REASON
        listed = await control(channel).ListSessions(wire.ctl.ListSessionsRequest())
        assert [s.session_id for s in listed.sessions] == ["was-live"]
        # A session run now is recorded at its end (SessionManager._ended).
        result = await run_scripted(d.address, "What is 2 + 2?")
        assert result.state is SessionState.FINISHED
    # The crash was recorded through the store: a third start finds both ended, none live.
    store = SqliteStore(str(path))
    recovered = await store.open()
    await store.aclose()
    assert recovered.live == []
    assert [s.session_id for s in recovered.ended[:1]] == ["was-live"] and len(recovered.ended) == 2
    assert wire.ctl.SessionInfo.FromString(recovered.ended[0].info).outcome.reason == CRASHED_REASON
    assert len(recovered.ended[0].events) == 3
    finished = wire.ctl.SessionInfo.FromString(recovered.ended[1].info)
    assert finished.outcome.state == wire.ctl.SESSION_STATE_FINISHED
    assert [e.seq for e in recovered.ended[1].events] == list(range(1, finished.last_event_seq + 1))


async def test_a_store_that_cannot_open_fails_the_start(tmp_path: Path) -> None:
    path = tmp_path / "not-a-db"
    path.write_bytes(b"\x00garbage" * 1000)
    dispatcher = Dispatcher(test_config(store={"url": f"sqlite:///{path}"}))
    with pytest.raises(StoreOpenError, match="is not a usable database"):
        await dispatcher.serve()
