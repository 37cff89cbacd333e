"""The store that keeps nothing beyond the process: the registry's memory is all there is."""

from __future__ import annotations

from collections.abc import Callable

from dispatcher.core.journal import Journal
from dispatcher.store.base import Recovered

__all__ = ["MemoryStore"]


class MemoryStore:
    """`memory://`: every write is a no-op, acks go out at once (nothing to wait for)."""

    durable = False
    url = "memory://"

    async def open(self) -> Recovered:
        return Recovered()

    def session_opened(self, session_id: str, *, opened: bytes, hello: bytes, journal: Journal) -> None:
        return None

    def checkpoint(self, session_id: str, upstream_seq: int, info: bytes) -> None:
        return None

    def tool_result(self, session_id: str, call_id: str, packet: bytes) -> None:
        return None

    def session_ended(self, session_id: str, info: bytes) -> None:
        return None

    def on_durable(self, callback: Callable[[str, int], None]) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
