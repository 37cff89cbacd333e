"""The kill -9 test's victim: writes one session's events to an SQLite store as fast as the
store takes them, checkpointing every ten, and prints each checkpoint once it is durable.

    python -m tests.e2e.store_writer PATH
"""

from __future__ import annotations

import asyncio
import sys

from dispatcher.core.journal import Journal
from dispatcher.store.sqlite import SqliteStore
from shared import wire

SESSION_ID = "victim"


def text(seq: int) -> str:
    return f"event {seq}"


async def main(path: str) -> None:
    store = SqliteStore(path, commit_interval_ms=2)
    await store.open()
    store.on_durable(lambda session_id, seq: print(f"durable {seq}", flush=True))
    journal = Journal(SESSION_ID, max_events=1_000_000, max_bytes=1 << 30)
    store.session_opened(SESSION_ID, opened=b"", hello=b"", journal=journal)
    seq = 0
    while True:  # until killed
        for _ in range(10):
            seq += 1
            journal.append("content", wire.pb.ContentChunk(text=text(seq)), seq)
        store.checkpoint(SESSION_ID, seq, b"")
        await asyncio.sleep(0.001)  # sleep-ok: the writer's pace, not a synchronisation


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
