"""The SessionControlService servicer: list, get, stop, watch, start and ask.

Every handler is thin: it checks who may touch the session (`Principal.may_manage`),
reads the registry or a session's journal, and maps `AgentRuntimeError`s to their
status in one place (`_refuse`). Watchers and StartSession callers read the journal
at their own pace; nothing here can slow a session down.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any, NoReturn, TypeVar

import grpc
import structlog

from dispatcher.auth import AccessPolicy, Principal
from dispatcher.cluster.peers import PeerGroup, first_status, forward_metadata, is_forwarded
from dispatcher.config import DispatcherConfig
from dispatcher.core.journal import EVENT_KINDS, Journal
from dispatcher.core.snapshots import outcome_to_wire
from dispatcher.sessions.registry import SessionHandle, SessionRegistry
from dispatcher.sessions.runner import SessionRunner
from dispatcher.stream.service import AgentInteractionService, valid_session_id
from shared import wire
from shared.errors import (
    AccessDenied,
    AgentRuntimeError,
    BadRequest,
    FellBehind,
    NoFreeCommander,
    NotFound,
    OutOfRange,
    SessionConflict,
    ShuttingDown,
)
from shared.model import StopCode, StopInfo, now_ms

__all__ = ["SessionControlService", "follow_journal"]

log = structlog.get_logger("dispatcher.control.service")

_ASK_KINDS = frozenset({wire.ctl.EVENT_KIND_CONTENT, wire.ctl.EVENT_KIND_TOOL_CALL})
_DEFAULT_PAGE = 100
_MEMBER_TIMEOUT_S = 30.0
_MAX_PAGE = 1000
Context = grpc.aio.ServicerContext[Any, Any]


class SessionControlService(wire.SessionControlServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        config: DispatcherConfig,
        registry: SessionRegistry,
        sessions: AgentInteractionService,
        access: AccessPolicy,
        is_draining: Callable[[], bool],
        peers: PeerGroup | None = None,
    ) -> None:
        self._config = config
        self._registry = registry
        self._sessions = sessions
        self._access = access
        self._is_draining = is_draining
        self._peers = peers

    # -- inspect ---------------------------------------------------------------------

    async def ListSessions(  # noqa: N802 - the proto's names
        self, request: wire.ctl.ListSessionsRequest, context: Context
    ) -> wire.ctl.ListSessionsResponse:
        principal = self._access.principal(context)
        try:
            after = _decode_page_token(request.page_token)
        except BadRequest as exc:
            await _refuse(context, exc, "", "ListSessions")
        infos = [handle.info() for handle in self._registry.open_sessions()]
        infos += [ended.info for ended in self._registry.ended_sessions() if ended.info is not None]
        infos += await self._list_members(request, context)
        wanted = _session_filter(request, now_ms())
        rows = sorted(
            (info for info in infos if principal.may_manage(info.started_by) and wanted(info)),
            key=lambda info: (info.started_at_ms, info.session_id),
        )
        if after is not None:
            rows = [info for info in rows if (info.started_at_ms, info.session_id) > after]
        size = min(request.page_size or _DEFAULT_PAGE, _MAX_PAGE)
        page, rest = rows[:size], rows[size:]
        token = _encode_page_token(page[-1]) if rest else ""
        return wire.ctl.ListSessionsResponse(sessions=page, next_page_token=token)

    async def GetSession(  # noqa: N802
        self, request: wire.ctl.GetSessionRequest, context: Context
    ) -> wire.ctl.GetSessionResponse:
        principal = self._access.principal(context)
        try:
            handle = self._open_session(request.session_id, principal)
            if handle is not None:
                return wire.ctl.GetSessionResponse(
                    session=handle.info(), running_tool_calls=handle.running_tool_calls()
                )
            ended = self._ended_session(request.session_id, principal)
            return wire.ctl.GetSessionResponse(session=ended.info)
        except NotFound as exc:
            found = await self._ask_members(
                context, lambda stub, md, timeout: stub.GetSession(request, metadata=md, timeout=timeout)
            )
            if found is not None:
                return found  # type: ignore[no-any-return]
            await _refuse(context, exc, request.session_id, "GetSession")
        except AgentRuntimeError as exc:
            await _refuse(context, exc, request.session_id, "GetSession")

    # -- stop ------------------------------------------------------------------------

    async def StopSession(  # noqa: N802
        self, request: wire.ctl.StopSessionRequest, context: Context
    ) -> wire.ctl.StopSessionResponse:
        principal = self._access.principal(context)
        session_id = request.session_id
        try:
            if not request.reason.strip():
                raise BadRequest("reason is required: say why the session is stopped")
            handle = self._open_session(session_id, principal)
            if handle is None:
                return _already_ended(session_id, self._ended_session(session_id, principal).info)
            stop = StopInfo(
                code=StopCode(request.code) if request.code else StopCode.OPERATOR,
                reason=request.reason,
                cause=request.cause,
                path=(principal.hop,),
            )
        except NotFound as exc:
            found = await self._ask_members(
                context, lambda stub, md, timeout: stub.StopSession(request, metadata=md, timeout=timeout)
            )
            if found is not None:
                return found  # type: ignore[no-any-return]
            await _refuse(context, exc, session_id, "StopSession")
        except (AgentRuntimeError, ValueError) as exc:
            await _refuse(context, exc, session_id, "StopSession")
        if handle.settled.is_set():
            return _already_ended(session_id, handle.info())
        handle.request_stop(stop)
        delivered = handle.pending_stop
        log.info("session.stop_requested", session_id=session_id, by=principal.hop, code=stop.code.name,
                 delivered=delivered is not None and delivered.stop_id == stop.stop_id)  # fmt: skip
        await handle.settled.wait()
        outcome = handle.outcome
        if delivered is None or outcome is None or outcome.stop is None:
            return _already_ended(session_id, handle.info())  # it was ending anyway: nothing was sent
        return wire.ctl.StopSessionResponse(
            session_id=session_id,
            result=wire.ctl.STOP_RESULT_CONFIRMED if outcome.stop_confirmed else wire.ctl.STOP_RESULT_NOT_CONFIRMED,
            stop=wire.stop_to_wire(outcome.stop),
            stop_to_confirm_us=round(outcome.stop_to_confirm_ms * 1000) if outcome.stop_to_confirm_ms else 0,
            outcome=outcome_to_wire(outcome),
        )

    # -- watch -----------------------------------------------------------------------

    async def WatchSession(  # noqa: N802
        self, request: wire.ctl.WatchSessionRequest, context: Context
    ) -> AsyncIterator[wire.ctl.WatchSessionResponse]:
        principal = self._access.principal(context)
        session_id = request.session_id
        try:
            try:
                journal = self._journal(session_id, principal)
            except NotFound:
                holder = await self._holder_of(session_id, context)
                if holder is None:
                    raise
                async for response in _relay(holder.WatchSession(request, metadata=forward_metadata(context)), context):
                    yield response
                return
            from_seq = request.from_seq or journal.first_seq
            _check_resume_point(journal, from_seq)
            async for event in follow_journal(journal, from_seq, set(request.kinds)):
                yield wire.ctl.WatchSessionResponse(event=event)
        except AgentRuntimeError as exc:
            await _refuse(context, exc, session_id, "WatchSession")

    # -- start -----------------------------------------------------------------------

    async def StartSession(  # noqa: N802
        self, request: wire.ctl.StartSessionRequest, context: Context
    ) -> AsyncIterator[wire.ctl.StartSessionResponse]:
        principal = self._access.principal(context)
        session_id = request.session_id or str(uuid.uuid4())
        tie: CallerTie | None = None
        try:
            if self._sessions.pool.free_count == 0:
                relayed = await self._start_on_member(request, context)
                if relayed is not None:
                    async for response in _relay(relayed, context):
                        yield response
                    return
            runner, tie = await self._start(request, session_id, principal, context)
            async for event in follow_journal(runner.journal, 1, set(request.kinds)):
                yield wire.ctl.StartSessionResponse(event=event)
        except FellBehind as exc:
            if tie is not None:
                tie.release()  # the session goes on; the caller can pick it up with WatchSession
            await _refuse(context, exc, session_id, "StartSession")
        except AgentRuntimeError as exc:
            await _refuse(context, exc, session_id, "StartSession")

    async def Ask(self, request: wire.ctl.AskRequest, context: Context) -> wire.ctl.AskResponse:  # noqa: N802
        principal = self._access.principal(context)
        session_id = request.session_id or str(uuid.uuid4())
        answer: list[str] = []
        tool_calls = 0
        if self._sessions.pool.free_count == 0:
            answered = await self._ask_on_member(request, context)
            if answered is not None:
                return answered  # type: ignore[no-any-return]
        try:
            runner, _tie = await self._start(request, session_id, principal, context)
            async for event in follow_journal(runner.journal, 1, _ASK_KINDS):
                if event.HasField("content"):
                    answer.append(event.content.text)
                else:
                    tool_calls += 1
        except AgentRuntimeError as exc:
            await _refuse(context, exc, session_id, "Ask")
        await runner.done.wait()
        outcome = runner.outcome
        return wire.ctl.AskResponse(
            session_id=session_id,
            answer="".join(answer),
            outcome=outcome_to_wire(outcome) if outcome is not None else None,
            tool_calls=tool_calls,
        )

    async def _start(
        self,
        request: wire.ctl.StartSessionRequest | wire.ctl.AskRequest,
        session_id: str,
        principal: Principal,
        context: Context,
    ) -> tuple[SessionRunner, CallerTie]:
        """Find a free pool commander, hand it the session, and tie the session to this call."""
        if not (request.input_text or request.input_json):
            raise BadRequest("input_text or input_json is required")
        if request.input_json:
            try:
                parsed = json.loads(request.input_json)
            except ValueError as exc:
                raise BadRequest(f"input_json is not valid JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise BadRequest("input_json must be a JSON object")
        if not valid_session_id(session_id):
            raise BadRequest("session_id must be 1-128 printable ASCII characters without spaces")
        if self._registry.get_open(session_id) is not None:
            raise SessionConflict(f"session id {session_id!r} is already in use by another open stream")
        if self._is_draining():
            raise ShuttingDown("dispatcher is shutting down and starts no new sessions; retry on another instance")
        pool = self._config.pool
        wait_ms = min(request.wait_for_commander_ms or pool.wait_for_commander_ms, pool.max_wait_for_commander_ms)
        slot = await self._sessions.pool.take(wait_ms / 1000)
        if slot is None:
            raise NoFreeCommander(f"no free commander within {wait_ms} ms; start more `commander serve` or retry")
        deadline = _deadline(context, request.timeout_ms)
        assignment = wire.pb.Assignment(
            session_id=session_id,
            input_text=request.input_text,
            input_json=request.input_json,
            metadata=dict(request.metadata),
            started_by=principal.hop,
            deadline_ms=now_ms() + round(deadline * 1000) if deadline is not None else 0,
        )
        try:
            runner = self._sessions.assign(slot, assignment, principal.hop)
        except AgentRuntimeError:
            self._sessions.pool.add(slot)  # the commander did nothing yet: it stays free
            raise
        if deadline is not None:
            runner.set_caller_deadline(time.monotonic() + deadline, principal.hop)
        tie = CallerTie(runner, principal, context)
        context.add_done_callback(tie.on_call_done)  # type: ignore[arg-type]
        log.info("session.started", session_id=session_id, by=principal.hop, commander=slot.commander)
        return runner, tie

    # -- the other members of a worker group (dispatcher/peers.py) -------------------

    def _members(self, context: Context) -> list[wire.SessionControlServiceStub]:
        """The other members to ask; none for a call that was itself forwarded (no loops)."""
        if self._peers is None or is_forwarded(context):
            return []
        return self._peers.stubs()

    async def _ask_members(self, context: Context, call: Callable[[Any, Any, float], Any]) -> Any:
        """The first member's answer; None when every member says NOT_FOUND. Another error
        from a member (PERMISSION_DENIED...) ends this call with that status."""
        errors = []
        for stub in self._members(context):
            try:
                return await call(stub, forward_metadata(context), _member_timeout(context))
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNAVAILABLE:  # a member gone since it advertised
                    log.warning("peers.unreachable", detail=exc.details())
                    continue
                errors.append(exc)
        error = first_status(errors)
        if error is not None and error.code() is not grpc.StatusCode.NOT_FOUND:
            await context.abort(error.code(), error.details() or "")
        return None

    async def _holder_of(self, session_id: str, context: Context) -> wire.SessionControlServiceStub | None:
        """The member that holds `session_id`, found by asking each (GetSession)."""
        request = wire.ctl.GetSessionRequest(session_id=session_id)
        for stub in self._members(context):
            try:
                await stub.GetSession(request, metadata=forward_metadata(context), timeout=_member_timeout(context))
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    continue
                await context.abort(exc.code(), exc.details() or "")
            return stub
        return None

    async def _list_members(self, request: wire.ctl.ListSessionsRequest, context: Context) -> list[Any]:
        """Every session the other members list for this caller (all their pages)."""
        infos: list[Any] = []
        for stub in self._members(context):
            query = wire.ctl.ListSessionsRequest()
            query.CopyFrom(request)
            query.page_size, query.page_token = _MAX_PAGE, ""
            try:
                while True:
                    page = await stub.ListSessions(
                        query, metadata=forward_metadata(context), timeout=_member_timeout(context)
                    )
                    infos += page.sessions
                    if not page.next_page_token:
                        break
                    query.page_token = page.next_page_token
            except grpc.aio.AioRpcError as exc:
                log.warning("peers.list_failed", code=exc.code().name, detail=exc.details())
        return infos

    async def _start_on_member(self, request: wire.ctl.StartSessionRequest, context: Context) -> Any:
        """A StartSession call on a member that has a free commander right now, or None."""
        quick = _without_waiting(request)
        for stub in self._members(context):
            call = stub.StartSession(quick, metadata=forward_metadata(context), timeout=context.time_remaining())
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNAVAILABLE:
                    continue
                await context.abort(exc.code(), exc.details() or "")
            return _Replayed(first, call)
        return None

    async def _ask_on_member(self, request: wire.ctl.AskRequest, context: Context) -> Any:
        quick = _without_waiting(request)
        for stub in self._members(context):
            try:
                return await stub.Ask(quick, metadata=forward_metadata(context), timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNAVAILABLE:
                    continue
                await context.abort(exc.code(), exc.details() or "")
        return None

    # -- lookups ---------------------------------------------------------------------

    def _open_session(self, session_id: str, principal: Principal) -> SessionHandle | None:
        handle = self._registry.get_open(session_id)
        if handle is not None and not principal.may_manage(handle.started_by):
            raise AccessDenied(f"{principal.hop} may only manage sessions it started")
        return handle

    def _ended_session(self, session_id: str, principal: Principal) -> Any:
        ended = self._registry.get_ended(session_id)
        if ended is None or ended.info is None:
            raise NotFound(f"no session {session_id!r} on this dispatcher (open or recently ended)")
        if not principal.may_manage(ended.started_by):
            raise AccessDenied(f"{principal.hop} may only manage sessions it started")
        return ended

    def _journal(self, session_id: str, principal: Principal) -> Journal:
        handle = self._open_session(session_id, principal)
        if handle is not None:
            return handle.journal
        self._ended_session(session_id, principal)
        journal = self._registry.ended_journal(session_id)
        if journal is None:
            raise OutOfRange(f"session {session_id!r} ended and its events are no longer kept")
        return journal


async def follow_journal(
    journal: Journal, from_seq: int, kinds: Collection[int]
) -> AsyncIterator[wire.ctl.SessionEvent]:
    """Every event from `from_seq` on (of `kinds`, if any), live until the journal closes.

    Raises FellBehind when the journal dropped an event before this reader got to it.
    """
    next_seq = from_seq
    while True:
        if next_seq < journal.first_seq:
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


async def _relay(call: Any, context: Context) -> AsyncIterator[Any]:
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


def _check_resume_point(journal: Journal, from_seq: int) -> None:
    if from_seq < journal.first_seq:
        raise OutOfRange(
            f"events before seq {journal.first_seq} of session {journal.session_id!r} are no longer kept "
            f"(asked from {from_seq}); resume from {journal.first_seq} or later"
        )
    if from_seq > journal.next_seq:
        raise OutOfRange(
            f"from_seq {from_seq} is beyond the next event of session {journal.session_id!r} (next: {journal.next_seq})"
        )


class CallerTie:
    """Ties a started session to its caller's call: when the call ends before the session
    (cancelled, deadline passed, connection lost), the session is stopped, the caller first
    in the stop's path."""

    def __init__(self, runner: SessionRunner, principal: Principal, context: Context) -> None:
        self._runner = runner
        self._principal = principal
        self._context = context
        self._released = False

    def release(self) -> None:
        """We end the call ourselves and the session goes on (the caller fell behind)."""
        self._released = True

    def on_call_done(self, _call: Any) -> None:
        if self._released or self._runner.settled.is_set():
            return
        remaining = self._context.time_remaining()
        if remaining is not None and remaining <= 0:
            stop = StopInfo(StopCode.TIMEOUT, "the caller's deadline passed", path=(self._principal.hop,))
        else:
            stop = StopInfo(StopCode.USER_CANCEL, "the caller cancelled", path=(self._principal.hop,))
        log.info("session.caller_left", session_id=self._runner.session_id, code=stop.code.name)
        self._runner.request_stop(stop)


def _deadline(context: Context, timeout_ms: int) -> float | None:
    """Seconds until the session must end: the call's deadline or `timeout_ms`, whichever is sooner."""
    candidates = [timeout_ms / 1000] if timeout_ms else []
    remaining = context.time_remaining()
    if remaining is not None:
        candidates.append(max(0.0, remaining))
    return min(candidates) if candidates else None


def _already_ended(session_id: str, info: wire.ctl.SessionInfo) -> wire.ctl.StopSessionResponse:
    response = wire.ctl.StopSessionResponse(session_id=session_id, result=wire.ctl.STOP_RESULT_ALREADY_ENDED)
    if info.HasField("outcome"):
        response.outcome.CopyFrom(info.outcome)
        if info.outcome.HasField("stop"):
            response.stop.CopyFrom(info.outcome.stop)
    return response


def _session_filter(request: wire.ctl.ListSessionsRequest, now: int) -> Callable[[wire.ctl.SessionInfo], bool]:
    states = set(request.states)

    def wanted(info: wire.ctl.SessionInfo) -> bool:
        age_s = (now - info.started_at_ms) / 1000
        return (
            (not states or info.state in states)
            and (not request.commander or info.commander == request.commander)
            and (not request.min_age_s or age_s >= request.min_age_s)
            and (not request.max_age_s or age_s <= request.max_age_s)
        )

    return wanted


def _encode_page_token(info: wire.ctl.SessionInfo) -> str:
    return base64.urlsafe_b64encode(f"{info.started_at_ms}:{info.session_id}".encode()).decode()


def _decode_page_token(token: str) -> tuple[int, str] | None:
    if not token:
        return None
    try:
        started, session_id = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        return int(started), session_id
    except ValueError:
        raise BadRequest("page_token is not one this dispatcher issued; start again with an empty token") from None


async def _refuse(context: Context, exc: Exception, session_id: str, method: str) -> NoReturn:
    """Log once with the session id, then end the call with the error's status."""
    code = exc.status_code if isinstance(exc, AgentRuntimeError) else grpc.StatusCode.INVALID_ARGUMENT
    log.warning("control.refused", method=method, session_id=session_id, code=code.name, detail=str(exc))
    await context.abort(code, str(exc))
    raise AssertionError("unreachable")  # abort() always raises
