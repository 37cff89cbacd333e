"""Reading a session's journal from a sequence number: what WatchSession, StartSession and
Ask stream. A reader follows at its own pace; the session never waits for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection

from dispatcher.core.journal import EVENT_KINDS, Journal
from dispatcher.metrics.stats import RuntimeStats
from shared import wire
from shared.errors import FellBehind, OutOfRange

__all__ = ["check_resume_point", "follow_journal"]


async def follow_journal(
    journal: Journal, from_seq: int, kinds: Collection[int], stats: RuntimeStats | None = None
) -> AsyncIterator[wire.ctl.SessionEvent]:
    """Every event from `from_seq` on (of `kinds`, if any), live until the journal closes.

    Raises FellBehind when the journal dropped an event before this reader got to it.
    `stats` counts this watcher while it follows, and its cut-off.
    """
    if stats is not None:
        stats.watchers += 1
    try:
        next_seq = from_seq
        while True:
            if next_seq < journal.first_seq:
                if stats is not None:
                    stats.watchers_cut_off += 1
                raise FellBehind(
                    f"watcher fell behind: event {next_seq} of session {journal.session_id!r} was dropped from its "
                    f"journal (oldest kept: {journal.first_seq}); resume with from_seq={journal.first_seq}"
                )
            if next_seq < journal.next_seq:
                entry = journal.entry(next_seq)
                if entry is not None and (not kinds or EVENT_KINDS[entry.kind] in kinds):
                    event = journal.event(next_seq)
                    assert event is not None
                    next_seq += 1
                    yield event
                else:
                    next_seq += 1
                continue
            if journal.closed:
                return
            await journal.wait_past(next_seq)
    finally:
        if stats is not None:
            stats.watchers -= 1


def check_resume_point(journal: Journal, from_seq: int) -> None:
    if from_seq < journal.first_seq:
        raise OutOfRange(
            f"events before seq {journal.first_seq} of session {journal.session_id!r} are no longer kept "
            f"(asked from {from_seq}); resume from {journal.first_seq} or later"
        )
    if from_seq > journal.next_seq:
        raise OutOfRange(
            f"from_seq {from_seq} is beyond the next event of session {journal.session_id!r} (next: {journal.next_seq})"
        )
