"""Membership: the other dispatchers a control call may be forwarded to, as one interface.

Two implementations:

- `PeerGroup` (dispatcher/cluster/peers.py): one host, a directory every member of a
  `--workers` group writes its private control address to. It knows addresses only, so a
  call about a session it does not hold asks every member.
- `RedisReplicas` (dispatcher/cluster/redis_replicas.py): replicas on any number of machines
  sharing a Redis (`--store redis://...`). It also knows which replica holds each session
  (a directory of leases), which has free pool commanders, and which replicas were lost.

The control plane (dispatcher/control/members.py) asks only through this Protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Protocol

from shared import wire

__all__ = ["Membership"]


class Membership(Protocol):
    async def join(self, address: str) -> None:
        """Advertise the control address the others dial to reach this process."""
        ...

    async def run(self) -> None:
        """Keep the membership alive (leases, directory) until cancelled; the app owns this task.
        Returns at once when there is nothing to keep."""
        ...

    def refusal(self) -> str | None:
        """Why new sessions must be refused now (the shared store is down), or None."""
        ...

    def opened(self, session_id: str) -> None:
        """A session was just opened here: publish it soon (batched with the others)."""
        ...

    async def others(self) -> list[wire.SessionControlServiceStub]:
        """Every other live member (ListSessions asks them all)."""
        ...

    async def holders(self, session_id: str) -> list[wire.SessionControlServiceStub]:
        """The members that may hold `session_id`, to ask in turn: the one that does when it is
        known, else every member."""
        ...

    async def placements(self) -> list[wire.SessionControlServiceStub]:
        """Members to offer a new pool session to, most free commanders first."""
        ...

    async def recorded(self, session_id: str) -> wire.ctl.SessionInfo | None:
        """An ended session the shared store recorded and no live member can answer for (its
        replica was lost), or None."""
        ...

    async def recorded_lost(self) -> list[wire.ctl.SessionInfo]:
        """Every such session still kept (ListSessions shows them)."""
        ...

    def stored_events(
        self, session_id: str, from_seq: int, kinds: Collection[int]
    ) -> AsyncIterator[wire.ctl.SessionEvent] | None:
        """The journal of a session no live member holds, as the shared store kept it (from
        `from_seq`, of `kinds`), or None when the store keeps no journals."""
        ...

    async def close(self) -> None:
        """Withdraw and close the channels (bounded by the caller)."""
        ...
