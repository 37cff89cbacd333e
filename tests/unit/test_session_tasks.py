"""SessionTasks: the dispatcher's session tasks are cancelled and awaited at shutdown, and none
starts after it."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from dispatcher.sessions.tasks import SessionTasks

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


async def test_aclose_cancels_every_running_task_and_waits_for_its_cleanup() -> None:
    tasks = SessionTasks()
    started = anyio.Event()
    cleaned: list[int] = []

    async def session(n: int) -> None:
        try:
            started.set()
            await asyncio.Event().wait()  # until cancelled
        finally:
            await anyio.lowlevel.checkpoint()  # cleanup that itself awaits still completes
            cleaned.append(n)

    for n in range(3):
        tasks.start(session(n), name=f"session:{n}")
    await started.wait()
    assert len(tasks) == 3
    assert await tasks.aclose(grace_s=5.0) == []
    assert sorted(cleaned) == [0, 1, 2] and len(tasks) == 0


async def test_a_finished_task_leaves_the_set() -> None:
    tasks = SessionTasks()
    done = anyio.Event()

    async def session() -> None:
        done.set()

    tasks.start(session(), name="session:quick")
    await done.wait()
    for _ in range(100):  # its done-callback runs on a later loop turn
        if not len(tasks):
            break
        await anyio.lowlevel.checkpoint()
    assert len(tasks) == 0, "a finished session task is still counted"


async def test_no_task_starts_after_aclose() -> None:
    tasks = SessionTasks()
    assert await tasks.aclose(grace_s=5.0) == []
    ran: list[str] = []

    async def session() -> None:
        ran.append("ran")

    work = session()
    with pytest.raises(RuntimeError, match="has shut down"):
        tasks.start(work, name="session:late")
    assert work.cr_frame is None and not ran  # closed, so never run and no "never awaited" warning


async def test_aclose_gives_up_on_a_task_that_ignores_cancellation_after_its_grace() -> None:
    tasks = SessionTasks()
    started = anyio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallows every cancellation: the bug aclose must survive

    tasks.start(stubborn(), name="session:stubborn")
    await started.wait()
    assert await tasks.aclose(grace_s=0.05) == ["session:stubborn"]
    release.set()  # let it end, so the test leaves nothing behind
    for _ in range(100):
        if not len(tasks):
            break
        await anyio.lowlevel.checkpoint()
    assert len(tasks) == 0
