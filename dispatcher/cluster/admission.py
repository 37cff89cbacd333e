"""New ChatStream sessions pass the membership first: refused UNAVAILABLE while the replicas'
shared store is down, and published to it (batched) once opened.

A wrapper of the `StreamSessions` the ChatStream handler is given (dispatcher/app.py), so the
stream servicer and the manager know nothing of replicas. Pool streams only wait for a
session and are let in; a session handed to one goes through the control plane, which asks
the membership itself (dispatcher/control/service.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from dispatcher.cluster.membership import Membership
from dispatcher.sessions.manager import StreamSessions
from dispatcher.sessions.outbox import Outbox
from dispatcher.sessions.pool import PoolSlot
from dispatcher.sessions.runner import SessionRunner
from shared import wire
from shared.errors import StoreUnavailable

__all__ = ["AdmittingSessions"]


class AdmittingSessions:
    """`StreamSessions`, with the membership's word on every new session."""

    def __init__(self, sessions: StreamSessions, membership: Membership) -> None:
        self._sessions = sessions
        self._membership = membership

    @property
    def is_draining(self) -> bool:
        return self._sessions.is_draining

    @property
    def hop(self) -> str:
        return self._sessions.hop

    def open(
        self,
        session_id: str,
        requests: AsyncIterator[wire.pb.UpstreamPacket],
        *,
        peer: str,
        commander: str = "",
        trace_parent: Mapping[str, str] | None = None,
    ) -> SessionRunner:
        refusal = self._membership.refusal()
        if refusal is not None:
            raise StoreUnavailable(refusal)
        runner = self._sessions.open(session_id, requests, peer=peer, commander=commander, trace_parent=trace_parent)
        self._membership.opened(session_id)
        return runner

    def start(self, runner: SessionRunner, first: wire.pb.UpstreamPacket) -> None:
        self._sessions.start(runner, first)

    def resume(
        self,
        session_id: str,
        requests: AsyncIterator[wire.pb.UpstreamPacket],
        hello: wire.pb.Hello,
        *,
        peer: str,
        commander: str = "",
    ) -> tuple[SessionRunner, Outbox]:
        # A session this replica holds goes on, the store up or down (it is not a new session).
        return self._sessions.resume(session_id, requests, hello, peer=peer, commander=commander)

    def park(self, slot: PoolSlot) -> None:
        self._sessions.park(slot)

    def unpark(self, slot: PoolSlot) -> None:
        self._sessions.unpark(slot)
