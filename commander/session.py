"""Runs one agent session over one ChatStream call and says how it ended.

Sequence: open the call, send Hello, wait for Welcome (none within the handshake
timeout means an original-contract dispatcher: compatibility mode), run the agent in a
cancel scope, then finish (is_finish), fail (ErrorSignal) or, after a stop, discard
what was not sent, confirm (StopConfirm) and half-close; finally wait for the
dispatcher's status.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import grpc
import structlog

from commander.coalesce import Coalescer
from commander.config import CommanderConfig
from commander.context import AgentContext
from commander.events import HandshakeDone, Observer, StopReceived, ToolResultReceived
from commander.transport import Link, StreamEnd
from shared import wire
from shared.errors import describe_exception
from shared.model import SessionState, StopCode, StopInfo

__all__ = ["Agent", "PendingAtStop", "SessionResult", "run_session"]

log = structlog.get_logger("commander.session")

Agent = Callable[[AgentContext, str], Awaitable[None]]
"""An agent: any async callable taking the context and the input text."""


@dataclass(frozen=True, slots=True)
class PendingAtStop:
    call_id: str
    tool_name: str
    fate: str  # ABANDONED or RESULT_IGNORED


@dataclass(frozen=True, slots=True)
class SessionResult:
    """How a session ended, from the commander's side."""

    session_id: str
    state: SessionState
    reason: str
    status_code: str = "OK"
    status_details: str = ""
    compat_mode: bool = False
    dispatcher_id: str = ""
    stop: StopInfo | None = None
    stop_to_halt_ms: float | None = None  # stop received -> agent unwound
    stop_to_confirm_ms: float | None = None  # dispatcher-measured: stop sent -> confirm received
    pending_at_stop: tuple[PendingAtStop, ...] = ()
    discarded_packets: int = 0
    packets_sent: int = 0
    last_acked_seq: int = 0
    tool_calls: int = 0
    duration_s: float = 0.0  # call opened -> stream ended
    errors: tuple[str, ...] = ()  # non-fatal ErrorSignals the dispatcher sent
    trailers: dict[str, str] = field(default_factory=dict)
    assigned: wire.pb.Assignment | None = None  # pool streams: the session handed to us

    @property
    def ok(self) -> bool:
        return self.state is SessionState.FINISHED


class _Run:
    """Mutable state of one run, touched by the reader task and the session task."""

    def __init__(self, ctx: AgentContext, observer: Observer) -> None:
        self.ctx = ctx
        self.observer = observer
        self.handshake = anyio.Event()
        self.welcome: wire.pb.Welcome | None = None
        self.compat_mode = False
        self.agent_scope = anyio.CancelScope()
        self.stop_received_at: float | None = None
        self.pending_at_stop: tuple[PendingAtStop, ...] = ()
        self.errors: list[str] = []
        self.acked_seq = 0
        self.cancel_reason: str | None = None
        # Pool streams: the assignment (or the stream's end) wakes the session up.
        self.assignment: wire.pb.Assignment | None = None
        self.woken = anyio.Event()

    def on_packet(self, packet: wire.pb.DownstreamPacket) -> None:
        kind = packet.WhichOneof("signal")
        if kind == "assignment" and self.assignment is None and not self.handshake.is_set():
            self.assignment = packet.assignment
            self.ctx.session_id = packet.assignment.session_id
            self.woken.set()
            return
        if not self.handshake.is_set():
            if kind == "welcome":
                self.welcome = packet.welcome
                self.ctx.limits = packet.welcome.limits
                self.handshake.set()
                return
            self._enter_compat_mode()
        if kind == "ack":
            self.acked_seq = packet.ack.seq
        elif kind == "tool_result":
            result = packet.tool_result
            pending = self.ctx.resolve(result)
            self.observer(
                ToolResultReceived(
                    call_id=pending.call_id if pending else result.call_id,
                    tool_name=result.tool_name,
                    result_json=result.result_json,
                    error_code=wire.tool_error_code_name(result.error.code) if result.HasField("error") else "",
                    error_message=result.error.message,
                    execution_time_us=result.execution_time_us,
                )
            )
        elif kind == "stop":
            self._on_stop(wire.stop_from_wire(packet.stop))
        elif kind == "error":
            self.errors.append(f"{packet.error.code}: {packet.error.message}")
            log.warning(
                "dispatcher.error_packet", code=packet.error.code, seq=packet.error.seq, detail=packet.error.message
            )

    def on_end(self) -> None:
        self.woken.set()
        if not self.handshake.is_set():
            self._enter_compat_mode()
        # The stream is over: an agent still running has nobody to talk to.
        self.agent_scope.cancel()

    def _enter_compat_mode(self) -> None:
        self.compat_mode = True
        self.ctx.compat_mode = True
        self.handshake.set()

    def _on_stop(self, stop: StopInfo) -> None:
        if self.ctx.stop is not None:
            return  # the first stop wins
        self.stop_received_at = time.perf_counter()
        self.ctx.mark_stopped(stop)
        self.observer(StopReceived(stop))
        self.agent_scope.cancel()


async def run_session(
    agent: Agent,
    prompt: str,
    *,
    channel: grpc.aio.Channel,
    config: CommanderConfig | None = None,
    session_id: str | None = None,
    observer: Observer | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    cancel: anyio.Event | None = None,
    await_assignment: bool = False,
) -> SessionResult:
    """Run `agent` on `prompt` as one session over `channel`; never raises for a session outcome.

    Setting `cancel` ends the session from this side: the agent is cancelled, the dispatcher
    is told in-band (ErrorSignal CANCELLED, so it records why) and the stream half-closes.

    With `await_assignment` the stream joins the dispatcher's commander pool instead: it
    waits (without limit) for an Assignment, whose input replaces `prompt` and whose
    session id replaces `session_id`. Check `SessionResult.assigned`.
    """
    config = config or CommanderConfig()
    conn = config.connection
    session_id = "" if await_assignment else (session_id or str(uuid.uuid4()))
    observer = observer or Observer()
    if conn.token:
        metadata = (*metadata, ("authorization", f"Bearer {conn.token}"))
    run: _Run | None = None
    link = Link(
        channel,
        session_id=session_id,
        outbox_size=conn.outbox_size,
        on_packet=lambda packet: run.on_packet(packet),  # type: ignore[union-attr]
        on_end=lambda: run.on_end(),  # type: ignore[union-attr]
        metadata=metadata,
    )
    ctx = AgentContext(session_id=session_id, send=link.send, observer=observer)
    run = _Run(ctx, observer)
    agent_error: BaseException | None = None
    started_at = time.perf_counter()
    halted_at: float | None = None
    discarded = 0

    with structlog.contextvars.bound_contextvars(session_id=session_id):
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(link.run)
                if cancel is not None:
                    tg.start_soon(_cancel_on, cancel, run)
                hello = wire.pb.Hello(
                    session_id=session_id,
                    agent_name=config.agent.name,
                    agent_version=config.agent.version,
                    features=list(wire.FEATURES),
                    awaits_assignment=await_assignment,
                )
                await link.send(wire.pb.UpstreamPacket(hello=hello))
                if await_assignment:
                    await run.woken.wait()
                    if run.assignment is None:
                        link.cancel()  # leaving the pool: cancelled here, or the stream already ended
                    else:
                        session_id = link.session_id = run.assignment.session_id
                        prompt = run.assignment.input_text or run.assignment.input_json
                        structlog.contextvars.bind_contextvars(session_id=session_id)
                        log.info("session.assigned", started_by=run.assignment.started_by)
                with anyio.move_on_after(conn.handshake_timeout_s):
                    await run.handshake.wait()
                if not run.handshake.is_set():
                    run._enter_compat_mode()
                    log.info("session.compat_mode", reason="no Welcome within the handshake timeout")
                refused = link.ended.is_set() and run.welcome is None
                if refused:
                    run.compat_mode = False  # refused before any answer: nothing says what it speaks
                if conn.coalesce and run.welcome is not None:
                    # Only a peer that answered Hello treats deltas as a text stream; an
                    # original-contract server may count chunks, so it gets them as produced.
                    link.coalesce_with(
                        Coalescer(max_bytes=conn.coalesce_max_bytes, max_packets=conn.coalesce_max_packets)
                    )
                if not refused:
                    observer(
                        HandshakeDone(session_id, run.welcome.dispatcher_id if run.welcome else "", run.compat_mode)
                    )
                    with run.agent_scope:
                        try:
                            await agent(ctx, prompt)
                        except Exception as exc:  # the agent's own failure: reported upstream
                            agent_error = exc
                    if run.stop_received_at is not None:  # else the agent had returned before any stop
                        halted_at = time.perf_counter()
                    if not link.ended.is_set():
                        if ctx.stop is not None:
                            discarded = link.discard_queued()
                            run.pending_at_stop = _pending_fates(ctx)
                            if not run.compat_mode:
                                await link.send(_confirm(ctx.stop, run, discarded, halted_at or time.perf_counter()))
                        elif run.cancel_reason is not None:
                            await link.send(
                                wire.pb.UpstreamPacket(
                                    error=wire.pb.ErrorSignal(code="CANCELLED", message=run.cancel_reason)
                                )
                            )
                        elif agent_error is not None:
                            log.error("agent.failed", error=repr(agent_error))
                            await link.send(
                                wire.pb.UpstreamPacket(
                                    error=wire.pb.ErrorSignal(code="AGENT_ERROR", message=describe_exception(agent_error))
                                )
                            )
                        else:
                            await link.send(wire.pb.UpstreamPacket(content=wire.pb.ContentChunk(is_finish=True)))
                link.close_upstream()
                with anyio.move_on_after(conn.end_timeout_s):
                    await link.ended.wait()
                if not link.ended.is_set():
                    log.warning("session.end_timeout", timeout_s=conn.end_timeout_s)
                    link.cancel()
                tg.cancel_scope.cancel()  # the cancel watcher, if any
        except BaseException:
            link.cancel()  # our caller cancelled us: take the RPC down with us
            link.close_upstream()
            raise
    result = _result(session_id, run, link, agent_error, halted_at, discarded)
    return dataclasses.replace(result, duration_s=time.perf_counter() - started_at, assigned=run.assignment)


async def _cancel_on(event: anyio.Event, run: _Run) -> None:
    await event.wait()
    run.woken.set()  # a pool stream still waiting for work leaves the pool
    if run.ctx.stop is None:
        run.cancel_reason = "cancelled by the commander"
        run.agent_scope.cancel()


def _confirm(stop: StopInfo, run: _Run, discarded: int, halted_at: float) -> wire.pb.UpstreamPacket:
    assert run.stop_received_at is not None
    confirm = wire.pb.StopConfirm(
        stop_id=stop.stop_id,
        halt_us=int((halted_at - run.stop_received_at) * 1_000_000),
        discarded_packets=discarded,
        pending_tool_calls=[
            wire.pb.PendingToolCall(call_id=p.call_id, tool_name=p.tool_name, fate=wire.tool_call_fate_to_wire(p.fate))
            for p in run.pending_at_stop
        ],
    )
    return wire.pb.UpstreamPacket(stop_confirm=confirm)


def _pending_fates(ctx: AgentContext) -> tuple[PendingAtStop, ...]:
    return tuple(
        PendingAtStop(p.call_id, p.tool_name, "RESULT_IGNORED" if p.result_after_stop else "ABANDONED")
        for p in ctx.pending_calls()
    )


def _result(
    session_id: str,
    run: _Run,
    link: Link,
    agent_error: BaseException | None,
    halted_at: float | None,
    discarded: int,
) -> SessionResult:
    end = link.end or StreamEnd(grpc.StatusCode.UNKNOWN, "stream did not end")
    trailers = end.trailers
    stop = run.ctx.stop
    if stop is None and trailers.get(wire.MetadataKey.STOP_CODE):
        stop = _stop_from_trailers(trailers)  # the stream ended with a stop we never read
    stop_to_halt_ms = (
        (halted_at - run.stop_received_at) * 1000
        if halted_at is not None and run.stop_received_at is not None
        else None
    )
    stop_to_confirm = trailers.get(wire.MetadataKey.STOP_TO_CONFIRM_MS)
    common = dict(
        session_id=session_id,
        status_code=end.code.name,
        status_details=end.details,
        compat_mode=run.compat_mode,
        dispatcher_id=run.welcome.dispatcher_id
        if run.welcome
        else link.initial_metadata.get(wire.MetadataKey.DISPATCHER_ID, ""),
        packets_sent=link.last_seq,
        last_acked_seq=run.acked_seq,
        tool_calls=run.ctx.tool_calls,
        errors=tuple(run.errors),
        trailers=dict(trailers),
    )
    if stop is not None:
        state = SessionState.EXPIRED if stop.code is StopCode.IDLE_TIMEOUT else SessionState.STOPPED
        return SessionResult(
            state=state,
            reason=stop.describe(),
            stop=stop,
            stop_to_halt_ms=stop_to_halt_ms,
            stop_to_confirm_ms=float(stop_to_confirm) if stop_to_confirm else None,
            pending_at_stop=run.pending_at_stop,
            discarded_packets=discarded,
            **common,  # type: ignore[arg-type]
        )
    if run.cancel_reason is not None:
        return SessionResult(state=SessionState.CANCELLED, reason=run.cancel_reason, **common)  # type: ignore[arg-type]
    if agent_error is not None and end.code is grpc.StatusCode.OK:
        return SessionResult(state=SessionState.FAILED, reason=f"agent failed: {describe_exception(agent_error)}", **common)  # type: ignore[arg-type]
    if end.code is grpc.StatusCode.OK:
        return SessionResult(state=SessionState.FINISHED, reason="finished", **common)  # type: ignore[arg-type]
    state = SessionState.CANCELLED if end.code is grpc.StatusCode.CANCELLED else SessionState.FAILED
    return SessionResult(state=state, reason=f"{end.code.name}: {end.details}", **common)  # type: ignore[arg-type]


def _stop_from_trailers(trailers: dict[str, str]) -> StopInfo:
    try:
        code = StopCode[trailers.get(wire.MetadataKey.STOP_CODE, "UNSPECIFIED")]
    except KeyError:
        code = StopCode.UNSPECIFIED
    path = trailers.get(wire.MetadataKey.STOP_PATH, "")
    return StopInfo(
        code=code,
        reason=trailers.get(wire.MetadataKey.STOP_REASON, ""),
        cause=trailers.get(wire.MetadataKey.STOP_CAUSE, ""),
        path=tuple(p for p in path.split(",") if p),
        stop_id=trailers.get(wire.MetadataKey.STOP_ID, ""),
    )
