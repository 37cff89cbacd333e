"""The per-session event journal: bounded, dense seqs, readers wake on append and close."""

from __future__ import annotations

import anyio
import pytest

from dispatcher.control.service import follow_journal
from dispatcher.core.journal import Journal
from shared import wire
from shared.errors import FellBehind


def content(text: str) -> wire.pb.ContentChunk:
    return wire.pb.ContentChunk(text=text)


def test_seqs_are_dense_and_the_oldest_go_first_by_count() -> None:
    journal = Journal("s", max_events=3, max_bytes=1 << 20)
    assert (journal.first_seq, journal.last_seq, journal.next_seq) == (1, 0, 1)
    for n in range(5):
        journal.append("content", content(f"t{n}"), packet_seq=n + 10)
    assert (journal.first_seq, journal.last_seq) == (3, 5)
    assert journal.entry(2) is None and journal.entry(6) is None
    event = journal.event(5)
    assert event is not None
    assert (event.seq, event.packet_seq, event.content.text, event.session_id) == (5, 14, "t4", "s")


def test_the_byte_budget_drops_old_events_but_keeps_the_newest() -> None:
    journal = Journal("s", max_events=100, max_bytes=50)
    journal.append("content", content("a" * 20))
    journal.append("content", content("b" * 20))
    journal.append("content", content("c" * 200))  # alone over budget: still kept
    assert (journal.first_seq, journal.last_seq) == (3, 3)


def test_nothing_is_appended_after_close() -> None:
    journal = Journal("s", max_events=10, max_bytes=1000)
    journal.append("content", content("x"))
    journal.close()
    journal.append("content", content("y"))
    assert journal.last_seq == 1 and journal.closed


@pytest.mark.anyio
async def test_a_follower_gets_live_events_then_ends_at_close() -> None:
    journal = Journal("s", max_events=10, max_bytes=1000)
    seen: list[int] = []

    async def follow() -> None:
        async for event in follow_journal(journal, 1, ()):
            seen.append(event.seq)

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        for n in range(3):
            await anyio.wait_all_tasks_blocked()
            journal.append("content", content(str(n)))
        await anyio.wait_all_tasks_blocked()
        journal.close()
    assert seen == [1, 2, 3]


@pytest.mark.anyio
async def test_a_follower_filters_kinds_and_detects_falling_behind() -> None:
    journal = Journal("s", max_events=2, max_bytes=1000)
    journal.append("thought", wire.pb.ThoughtChain(delta="hm"))
    journal.append("content", content("a"))
    kinds = {wire.ctl.EVENT_KIND_CONTENT}
    reader = follow_journal(journal, 1, kinds)
    first = await anext(reader)
    assert first.seq == 2 and first.HasField("content")
    for n in range(3):
        journal.append("content", content(str(n)))  # seqs 3..5; 3 is dropped before it is read
    with pytest.raises(FellBehind, match="resume with from_seq=4"):
        await anext(reader)
