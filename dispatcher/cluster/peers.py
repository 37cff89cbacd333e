"""The other dispatchers of a group, and control calls forwarded to them.

A session lives in the one process whose connection carries it; with `--workers N` (or
several dispatchers behind a balancer) an operator's call can land anywhere. Membership
is a directory: every member writes `<instance>.addr` holding a private address it serves
the control API on, and removes it when it stops. A control call for a session this
process does not hold is forwarded to the members, marked `x-dispatcher-forwarded` so it
is never forwarded twice, with the caller's own credentials (each member checks them
again): its bearer token, or under mutual TLS the identities of its client certificate,
which a member believes only from a peer presenting the group's own certificate
(dispatcher/peer_cert.py). With TLS the members dial each other with TLS too. Across
machines the same interface (`Membership`, dispatcher/cluster/membership.py) reads a shared
Redis instead (dispatcher/cluster/redis_replicas.py); nothing else changes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import grpc
import structlog

from dispatcher.auth import AUTHORIZATION
from dispatcher.control.via import FORWARDED_BY
from dispatcher.peer_cert import FORWARDED_PEER, caller_identities
from shared import wire
from shared.tracing import carrier_from_metadata

__all__ = ["FORWARDED", "PeerGroup", "forward_metadata", "is_forwarded"]

log = structlog.get_logger("dispatcher.cluster.peers")

FORWARDED = "x-dispatcher-forwarded"
_FORWARDED_KEYS = frozenset({AUTHORIZATION, "x-via"})
_SUFFIX = ".addr"


def is_forwarded(context: Any) -> bool:
    return any(key == FORWARDED for key, _ in context.invocation_metadata() or ())


def forward_metadata(context: Any, hop: str = "") -> tuple[tuple[str, str], ...]:
    """The caller's credentials and `x-via` hops (dispatcher/control/via.py) plus the forwarded
    mark: its bearer token, else (mutual TLS) its certificate's identities. Without a client
    certificate there are none to read. `hop`: this member, for the paths of the stops the
    call causes there (after the caller's own hop: `operator:x -> dispatcher:a -> dispatcher:c`)."""
    metadata = context.invocation_metadata() or ()
    kept = tuple((k, v) for k, v in metadata if k in _FORWARDED_KEYS and isinstance(v, str))
    if not any(k == AUTHORIZATION for k, _ in kept):
        identities = caller_identities(context, None)
        if identities:
            kept = (*kept, (FORWARDED_PEER, ",".join(identities)))
    if hop:
        kept = (*kept, (FORWARDED_BY, hop))
    # The caller's trace context too: a session started on a member is still part of its trace.
    return (*kept, *carrier_from_metadata(metadata).items(), (FORWARDED, "1"))


class PeerGroup:
    """This process's membership in a group, and channels to the other members."""

    def __init__(
        self,
        directory: str,
        instance: str,
        *,
        dial: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
    ) -> None:
        self._dir = Path(directory)
        self._own = self._dir / f"{_safe(instance)}{_SUFFIX}"
        self._dial = dial  # plaintext, or TLS with this member's certificate (dispatcher/app.py)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def advertise(self, address: str) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        staging = self._own.with_suffix(".tmp")
        staging.write_text(address + "\n")
        os.replace(staging, self._own)  # readers never see a half-written file

    def withdraw(self) -> None:
        self._own.unlink(missing_ok=True)

    def addresses(self) -> list[str]:
        """The other members' control addresses, as advertised now."""
        found = []
        for path in sorted(self._dir.glob(f"*{_SUFFIX}")):
            if path == self._own:
                continue
            try:
                address = path.read_text().strip()
            except OSError:  # withdrawn while we looked
                continue
            if address:
                found.append(address)
        return found

    def stubs(self) -> list[wire.SessionControlServiceStub]:
        return [wire.SessionControlServiceStub(self._channel(address)) for address in self.addresses()]

    # -- Membership (dispatcher/cluster/membership.py): a directory knows addresses only --

    async def join(self, address: str) -> None:
        self.advertise(address)

    async def run(self) -> None:
        return None  # a file needs no lease

    def refusal(self) -> str | None:
        return None

    def opened(self, session_id: str) -> None:
        return None

    async def others(self) -> list[wire.SessionControlServiceStub]:
        return self.stubs()

    async def holders(self, session_id: str) -> list[wire.SessionControlServiceStub]:
        return self.stubs()  # which member holds it is not written down: ask each

    async def placements(self) -> list[wire.SessionControlServiceStub]:
        return self.stubs()

    async def recorded(self, session_id: str) -> wire.ctl.SessionInfo | None:
        return None

    async def recorded_lost(self) -> list[wire.ctl.SessionInfo]:
        return []

    def stored_events(
        self, session_id: str, from_seq: int, kinds: Collection[int]
    ) -> AsyncIterator[wire.ctl.SessionEvent] | None:
        return None  # journals live in their worker only

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._dial(address)
        return channel

    async def close(self) -> None:
        self.withdraw()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def _safe(instance: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in instance)


def not_found(error: grpc.aio.AioRpcError) -> bool:
    return error.code() is grpc.StatusCode.NOT_FOUND


def first_status(errors: Iterable[grpc.aio.AioRpcError]) -> grpc.aio.AioRpcError | None:
    """The most telling error from the members: anything but NOT_FOUND wins."""
    chosen = None
    for error in errors:
        if chosen is None or not_found(chosen):
            chosen = error
    return chosen
