"""The SessionControlService servicer: list, get, stop, watch, start, ask and decide tool calls.

Every handler is thin: it checks who may touch the session (`Principal.may_manage`), reads
the session directory or a session's journal, and raises a domain error when it refuses.
Each passes the one error boundary (`@guarded`): the status comes from the table, anything
unexpected is INTERNAL with a reference. Watchers and StartSession callers read the journal
at their own pace; nothing here can slow a session down. This module knows sessions only
through `SessionDirectory` and `SessionHandle`: no servicer, no runner.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog

from dispatcher.auth import AccessPolicy, Principal
from dispatcher.boundary import guarded, guarded_stream
from dispatcher.cluster.membership import Membership
from dispatcher.config import DispatcherConfig
from dispatcher.control.caller import CallerTie, caller_deadline_s
from dispatcher.control.listing import already_ended, decode_page_token, encode_page_token, session_filter
from dispatcher.control.members import Members, relay
from dispatcher.control.via import caller_path
from dispatcher.control.watch import check_resume_point, follow_journal
from dispatcher.core.journal import Journal
from dispatcher.core.snapshots import outcome_to_wire
from dispatcher.metrics.stats import RuntimeStats
from dispatcher.sessions.directory import SessionDirectory
from dispatcher.sessions.registry import SessionHandle
from shared import wire
from shared.errors import AccessDenied, BadRequest, FellBehind, NotFound, OutOfRange, StoreUnavailable
from shared.jsontext import parse_json_object
from shared.model import StopCode, StopInfo, now_ms, valid_session_id
from shared.tracing import carrier_from_metadata

__all__ = ["SessionControlService"]

log = structlog.get_logger("dispatcher.control")

_ASK_KINDS = frozenset({wire.ctl.EVENT_KIND_CONTENT, wire.ctl.EVENT_KIND_TOOL_CALL})
_DEFAULT_PAGE = 100
_MAX_PAGE = 1000
# input_json is the user's input for the agent: far smaller than a message may be.
_MAX_INPUT_JSON_CHARS = 1024 * 1024
Context = grpc.aio.ServicerContext[Any, Any]


class SessionControlService(wire.SessionControlServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        config: DispatcherConfig,
        sessions: SessionDirectory,
        access: AccessPolicy,
        peers: Membership | None = None,
        stats: RuntimeStats | None = None,
    ) -> None:
        self._config = config
        self._stats = stats  # watchers following a journal, and those cut off (metrics)
        self._sessions = sessions
        self._access = access
        self._members = Members(peers, hop=f"dispatcher:{config.server.instance}")

    # -- inspect ---------------------------------------------------------------------

    @guarded
    async def ListSessions(  # noqa: N802 - the proto's names
        self, request: wire.ctl.ListSessionsRequest, context: Context
    ) -> wire.ctl.ListSessionsResponse:
        principal = self._access.principal(context)
        after = decode_page_token(request.page_token)
        infos = [handle.info() for handle in self._sessions.open_sessions()]
        infos += [ended.info for ended in self._sessions.ended_sessions() if ended.info is not None]
        infos += await self._members.list_sessions(request, context)
        infos += await self._members.recorded_lost(context)  # sessions of lost replicas
        infos = list({info.session_id: info for info in reversed(infos)}.values())  # the first of each wins
        wanted = session_filter(request, now_ms())
        rows = sorted(
            (info for info in infos if principal.may_manage(info.started_by) and wanted(info)),
            key=lambda info: (info.started_at_ms, info.session_id),
        )
        if after is not None:
            rows = [info for info in rows if (info.started_at_ms, info.session_id) > after]
        size = min(request.page_size or _DEFAULT_PAGE, _MAX_PAGE)
        page, rest = rows[:size], rows[size:]
        token = encode_page_token(page[-1]) if rest else ""
        return wire.ctl.ListSessionsResponse(sessions=page, next_page_token=token)

    @guarded
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
            return wire.ctl.GetSessionResponse(session=self._ended_session(request.session_id, principal))
        except NotFound as missing:
            try:
                return await self._members.forward("GetSession", request, context, missing)  # type: ignore[no-any-return]
            except NotFound:
                return wire.ctl.GetSessionResponse(session=await self._recorded(request.session_id, principal, context))

    # -- stop ------------------------------------------------------------------------

    @guarded
    async def StopSession(  # noqa: N802
        self, request: wire.ctl.StopSessionRequest, context: Context
    ) -> wire.ctl.StopSessionResponse:
        principal = self._access.principal(context)
        session_id = request.session_id
        if not request.reason.strip():
            raise BadRequest("reason is required: say why the session is stopped")
        try:
            code = StopCode(request.code) if request.code else StopCode.OPERATOR
        except ValueError:
            raise BadRequest(f"unknown stop code {request.code}") from None
        try:
            handle = self._open_session(session_id, principal)
            if handle is None:
                return already_ended(session_id, self._ended_session(session_id, principal))
        except NotFound as missing:
            try:
                return await self._members.forward("StopSession", request, context, missing)  # type: ignore[no-any-return]
            except NotFound:
                return already_ended(session_id, await self._recorded(session_id, principal, context))
        if handle.settled.is_set():
            return already_ended(session_id, handle.info())
        path = caller_path(principal, context)
        stop = StopInfo(code=code, reason=request.reason, cause=request.cause, path=path)
        handle.request_stop(stop)
        delivered = handle.pending_stop
        log.info("session.stop_requested", session_id=session_id, by=principal.hop, code=stop.code.name,
                 delivered=delivered is not None and delivered.stop_id == stop.stop_id)  # fmt: skip
        await handle.settled.wait()
        outcome = handle.outcome
        if delivered is None or outcome is None or outcome.stop is None:
            return already_ended(session_id, handle.info())  # it was ending anyway: nothing was sent
        return wire.ctl.StopSessionResponse(
            session_id=session_id,
            result=wire.ctl.STOP_RESULT_CONFIRMED if outcome.stop_confirmed else wire.ctl.STOP_RESULT_NOT_CONFIRMED,
            stop=wire.stop_to_wire(outcome.stop),
            stop_to_confirm_us=round(outcome.stop_to_confirm_ms * 1000) if outcome.stop_to_confirm_ms else 0,
            outcome=outcome_to_wire(outcome),
        )

    # -- approvals -------------------------------------------------------------------

    @guarded
    async def DecideToolCall(  # noqa: N802
        self, request: wire.ctl.DecideToolCallRequest, context: Context
    ) -> wire.ctl.DecideToolCallResponse:
        principal = self._access.principal(context)
        session_id = request.session_id
        if not request.call_id:
            raise BadRequest("call_id is required: the call_id of the tool call awaiting approval")
        if not request.approve and not request.reason.strip():
            raise BadRequest("reason is required to deny a call: the model reads it in the tool error")
        try:
            handle = self._open_session(session_id, principal)
            if handle is None:
                self._ended_session(session_id, principal)  # NotFound or AccessDenied when it must
        except NotFound as missing:
            return await self._members.forward("DecideToolCall", request, context, missing)  # type: ignore[no-any-return]
        if handle is None or handle.settled.is_set():  # ended, or ending: its calls are cancelled
            return wire.ctl.DecideToolCallResponse(session_id=session_id, result=wire.ctl.DECIDE_RESULT_NOT_AWAITING)
        return handle.decide_tool_call(
            request.call_id, approve=request.approve, reason=request.reason, decided_by=principal.hop
        )

    # -- watch -----------------------------------------------------------------------

    @guarded_stream
    async def WatchSession(  # noqa: N802
        self, request: wire.ctl.WatchSessionRequest, context: Context
    ) -> AsyncIterator[wire.ctl.WatchSessionResponse]:
        principal = self._access.principal(context)
        session_id = request.session_id
        try:
            journal = self._journal(session_id, principal)
        except NotFound:
            holder = await self._members.holder_of(session_id, context)
            if holder is None:
                await self._recorded(session_id, principal, context)  # NotFound when no one knows it
                stored = self._members.stored_events(session_id, request.from_seq, set(request.kinds), context)
                if stored is None:
                    raise OutOfRange(
                        f"session {session_id!r} ended when its replica was lost; its events are not kept"
                    ) from None
                async for event in stored:  # its journal as the shared store kept it, up to the loss
                    yield wire.ctl.WatchSessionResponse(event=event)
                return
            call = holder.WatchSession(request, metadata=self._members.metadata(context))
            async for response in relay(call, context):
                yield response
            return
        from_seq = request.from_seq or journal.first_seq
        check_resume_point(journal, from_seq)
        async for event in follow_journal(journal, from_seq, set(request.kinds), self._stats):
            yield wire.ctl.WatchSessionResponse(event=event)

    # -- start -----------------------------------------------------------------------

    @guarded_stream
    async def StartSession(  # noqa: N802
        self, request: wire.ctl.StartSessionRequest, context: Context
    ) -> AsyncIterator[wire.ctl.StartSessionResponse]:
        if self._sessions.free_commanders == 0:
            relayed = await self._members.start_session(request, context)
            if relayed is not None:
                async for response in relay(relayed, context):
                    yield response
                return
        session, tie = await self._start(request, self._access.principal(context), context)
        try:
            async for event in follow_journal(session.journal, 1, set(request.kinds), self._stats):
                yield wire.ctl.StartSessionResponse(event=event)
        except FellBehind:
            tie.release()  # the session goes on; the caller can pick it up with WatchSession
            raise

    @guarded
    async def Ask(self, request: wire.ctl.AskRequest, context: Context) -> wire.ctl.AskResponse:  # noqa: N802
        if self._sessions.free_commanders == 0:
            answered = await self._members.ask(request, context)
            if answered is not None:
                return answered  # type: ignore[no-any-return]
        session, _tie = await self._start(request, self._access.principal(context), context)
        answer: list[str] = []
        tool_calls = 0
        async for event in follow_journal(session.journal, 1, _ASK_KINDS, self._stats):
            if event.HasField("content"):
                answer.append(event.content.text)
            else:
                tool_calls += 1
        await session.done.wait()
        outcome = session.outcome
        return wire.ctl.AskResponse(
            session_id=session.session_id,
            answer="".join(answer),
            outcome=outcome_to_wire(outcome) if outcome is not None else None,
            tool_calls=tool_calls,
        )

    async def _start(
        self, request: wire.ctl.StartSessionRequest | wire.ctl.AskRequest, principal: Principal, context: Context
    ) -> tuple[SessionHandle, CallerTie]:
        """Check the request, hand the session to a free pool commander, tie it to this call."""
        refusal = self._members.refusal()
        if refusal is not None:  # the replicas' store is down: no one else could find the session
            raise StoreUnavailable(refusal)
        session_id = request.session_id or str(uuid.uuid4())
        path = caller_path(principal, context)  # a malformed x-via refuses the call before a commander is taken
        if not (request.input_text or request.input_json):
            raise BadRequest("input_text or input_json is required")
        if len(request.input_json) > _MAX_INPUT_JSON_CHARS:
            raise BadRequest(f"input_json is {len(request.input_json)} characters; at most {_MAX_INPUT_JSON_CHARS}")
        if request.input_json:
            parse_json_object(request.input_json, "input_json")  # a JsonTextError is INVALID_ARGUMENT
        if not valid_session_id(session_id):
            raise BadRequest("session_id must be 1-128 printable ASCII characters without spaces")
        pool = self._config.pool
        wait_ms = min(request.wait_for_commander_ms or pool.wait_for_commander_ms, pool.max_wait_for_commander_ms)
        deadline = caller_deadline_s(context, request.timeout_ms)
        assignment = wire.pb.Assignment(
            session_id=session_id,
            input_text=request.input_text,
            input_json=request.input_json,
            metadata=dict(request.metadata),
            started_by=principal.hop,
            deadline_ms=now_ms() + round(deadline * 1000) if deadline is not None else 0,
            # The backend's trace context: the session span's parent (then replaced by that span's).
            trace_context=carrier_from_metadata(context.invocation_metadata()),
        )
        tools: frozenset[str] | None = None
        if request.tools:
            unknown = self._sessions.catalog.unknown(request.tools)
            if unknown:
                raise BadRequest(f"tools this dispatcher does not serve: {', '.join(unknown)}")
            tools = frozenset(request.tools)
        session = await self._sessions.start_on_pool(assignment, wait_ms / 1000, tools=tools)
        self._members.opened(session_id)
        if deadline is not None:
            session.set_caller_deadline(time.monotonic() + deadline, principal.hop)
        tie = CallerTie(session, principal, context, path)
        context.add_done_callback(tie.on_call_done)  # type: ignore[arg-type]
        log.info("session.started", session_id=session_id, by=principal.hop)
        return session, tie

    # -- tools -----------------------------------------------------------------------

    @guarded
    async def ListTools(  # noqa: N802
        self, request: wire.ctl.ListToolsRequest, context: Context
    ) -> wire.ctl.ListToolsResponse:
        self._access.principal(context)
        return wire.ctl.ListToolsResponse(tools=self._sessions.catalog.specs())

    # -- lookups ---------------------------------------------------------------------

    def _open_session(self, session_id: str, principal: Principal) -> SessionHandle | None:
        handle = self._sessions.get_open(session_id)
        if handle is not None and not principal.may_manage(handle.started_by):
            raise AccessDenied(f"{principal.hop} may only manage sessions it started")
        return handle

    def _ended_session(self, session_id: str, principal: Principal) -> wire.ctl.SessionInfo:
        """How an ended session ended, as the control plane shows it."""
        ended = self._sessions.get_ended(session_id)
        if ended is None or ended.info is None:
            raise NotFound(f"no session {session_id!r} on this dispatcher (open or recently ended)")
        if not principal.may_manage(ended.started_by):
            raise AccessDenied(f"{principal.hop} may only manage sessions it started")
        return ended.info

    async def _recorded(self, session_id: str, principal: Principal, context: Context) -> wire.ctl.SessionInfo:
        """A session the replicas' store recorded as ended (its replica lost); NotFound if none."""
        info = await self._members.recorded(session_id, context)
        if info is None:
            raise NotFound(f"no session {session_id!r} on this dispatcher (open or recently ended)")
        if not principal.may_manage(info.started_by):
            raise AccessDenied(f"{principal.hop} may only manage sessions it started")
        return info

    def _journal(self, session_id: str, principal: Principal) -> Journal:
        handle = self._open_session(session_id, principal)
        if handle is not None:
            return handle.journal
        self._ended_session(session_id, principal)
        journal = self._sessions.ended_journal(session_id)
        if journal is None:
            raise OutOfRange(f"session {session_id!r} ended and its events are no longer kept")
        return journal
