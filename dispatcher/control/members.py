"""The other members of a group, asked on behalf of a control call: a session this process
does not hold may be held by another. Who they are, and which holds a session, is the
`Membership`'s to say (dispatcher/cluster/membership.py): a `--workers` group's directory
(ask each member) or the replicas' Redis (ask the one the session directory names).

A forwarded call carries the caller's own credentials, the forwarded mark and this member's
hop (so a stop's path names both dispatchers), so it is checked again there and never
forwarded twice. A member's refusal other than NOT_FOUND ends the caller's call with that status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from typing import Any, TypeVar

import grpc
import structlog

from dispatcher.cluster.membership import Membership
from dispatcher.cluster.peers import first_status, forward_metadata, is_forwarded
from shared import wire

__all__ = ["Members", "relay"]

log = structlog.get_logger("dispatcher.control")

_MEMBER_TIMEOUT_S = 30.0
_MAX_PAGE = 1000
Context = grpc.aio.ServicerContext[Any, Any]


class Members:
    def __init__(self, peers: Membership | None, hop: str = "") -> None:
        self._peers = peers
        self._hop = hop  # this member in the paths of the stops it forwards

    def metadata(self, context: Context) -> tuple[tuple[str, str], ...]:
        return forward_metadata(context, self._hop)

    async def stubs(self, context: Context, session_id: str | None = None) -> list[wire.SessionControlServiceStub]:
        """The other members to ask (about `session_id`: those that may hold it); none for a
        call that was itself forwarded (no loops)."""
        if self._peers is None or is_forwarded(context):
            return []
        if session_id is None:
            return await self._peers.others()
        return await self._peers.holders(session_id)

    async def recorded(self, session_id: str, context: Context) -> wire.ctl.SessionInfo | None:
        """A session the shared store recorded as ended and no member answers for."""
        if self._peers is None or is_forwarded(context):
            return None
        return await self._peers.recorded(session_id)

    async def recorded_lost(self, context: Context) -> list[wire.ctl.SessionInfo]:
        if self._peers is None or is_forwarded(context):
            return []
        return await self._peers.recorded_lost()

    def stored_events(
        self, session_id: str, from_seq: int, kinds: Collection[int], context: Context
    ) -> AsyncIterator[wire.ctl.SessionEvent] | None:
        if self._peers is None or is_forwarded(context):
            return None
        return self._peers.stored_events(session_id, from_seq, kinds)

    def refusal(self) -> str | None:
        """Why new sessions are refused now (the replicas' store is down), or None."""
        return None if self._peers is None else self._peers.refusal()

    def opened(self, session_id: str) -> None:
        if self._peers is not None:
            self._peers.opened(session_id)

    async def forward(self, method: str, request: Any, context: Context, missing: Exception) -> Any:
        """The answer of the member that holds the session; raises `missing` when none does."""

        def call(stub: Any, metadata: Any, timeout: float) -> Any:
            return getattr(stub, method)(request, metadata=metadata, timeout=timeout)

        found = await self.first_answer(context, call, request.session_id)
        if found is None:
            raise missing
        return found

    async def first_answer(
        self, context: Context, call: Callable[[Any, Any, float], Any], session_id: str | None = None
    ) -> Any:
        """The first member's answer; None when every member says NOT_FOUND. Another error
        from a member (PERMISSION_DENIED...) ends this call with that status."""
        errors = []
        for stub in await self.stubs(context, session_id):
            try:
                return await call(stub, self.metadata(context), _member_timeout(context))
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNAVAILABLE:  # a member gone since it advertised
                    log.warning("peers.unreachable", detail=exc.details())
                    continue
                errors.append(exc)
        error = first_status(errors)
        if error is not None and error.code() is not grpc.StatusCode.NOT_FOUND:
            await context.abort(error.code(), error.details() or "")
        return None

    async def holder_of(self, session_id: str, context: Context) -> wire.SessionControlServiceStub | None:
        """The member that holds `session_id`, found by asking each (GetSession)."""
        request = wire.ctl.GetSessionRequest(session_id=session_id)
        for stub in await self.stubs(context, session_id):
            try:
                await stub.GetSession(request, metadata=self.metadata(context), timeout=_member_timeout(context))
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    continue
                await context.abort(exc.code(), exc.details() or "")
            return stub
        return None

    async def list_sessions(self, request: wire.ctl.ListSessionsRequest, context: Context) -> list[Any]:
        """Every session the other members list for this caller (all their pages)."""
        infos: list[Any] = []
        for stub in await self.stubs(context):
            query = wire.ctl.ListSessionsRequest()
            query.CopyFrom(request)
            query.page_size, query.page_token = _MAX_PAGE, ""
            try:
                while True:
                    page = await stub.ListSessions(
                        query, metadata=self.metadata(context), timeout=_member_timeout(context)
                    )
                    infos += page.sessions
                    if not page.next_page_token:
                        break
                    query.page_token = page.next_page_token
            except grpc.aio.AioRpcError as exc:
                log.warning("peers.list_failed", code=exc.code().name, detail=exc.details())
        return infos

    async def start_session(self, request: wire.ctl.StartSessionRequest, context: Context) -> Any:
        """A StartSession call on a member that has a free commander right now, or None."""
        quick = _without_waiting(request)
        for stub in await self._placements(context):
            call = stub.StartSession(quick, metadata=self.metadata(context), timeout=context.time_remaining())
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNAVAILABLE:
                    continue
                await context.abort(exc.code(), exc.details() or "")
            return _Replayed(first, call)
        return None

    async def ask(self, request: wire.ctl.AskRequest, context: Context) -> Any:
        quick = _without_waiting(request)
        for stub in await self._placements(context):
            try:
                return await stub.Ask(quick, metadata=self.metadata(context), timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNAVAILABLE:
                    continue
                await context.abort(exc.code(), exc.details() or "")
        return None

    async def _placements(self, context: Context) -> list[wire.SessionControlServiceStub]:
        if self._peers is None or is_forwarded(context):
            return []
        return await self._peers.placements()


class _Replayed:
    """A server-streaming call whose first message was already read."""

    def __init__(self, first: Any, call: Any) -> None:
        self._first = first
        self._call = call

    async def read(self) -> Any:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._call.read()

    def cancel(self) -> None:
        self._call.cancel()


async def relay(call: Any, context: Context) -> AsyncIterator[Any]:
    """Pass a member's server stream through, status included; our caller leaving cancels it."""
    try:
        while True:
            try:
                response = await call.read()
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
            if response is grpc.aio.EOF:
                return
            yield response
    finally:
        call.cancel()


_StartRequest = TypeVar("_StartRequest", wire.ctl.StartSessionRequest, wire.ctl.AskRequest)


def _without_waiting(request: _StartRequest) -> _StartRequest:
    """The same request for a member, answered at once unless a commander is free there now."""
    quick = type(request)()
    quick.CopyFrom(request)
    quick.wait_for_commander_ms = 1
    return quick


def _member_timeout(context: Context) -> float:
    remaining = context.time_remaining()
    return _MEMBER_TIMEOUT_S if remaining is None else max(0.001, min(remaining, _MEMBER_TIMEOUT_S))
