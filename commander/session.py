"""Runs one agent session over one ChatStream call and says how it ended: the IO shell.

Every decision is the session core's (`commander.core.CommanderSession`); this module opens
the call (`commander.transport.Link`), feeds the core what happens, carries out its actions
and runs the agent in a cancel scope. Sequence: send Hello; on a pool stream wait for the
Assignment; wait (bounded) for the handshake to settle; run the agent; send the final packet
the core decides on and half-close; wait (bounded) for the dispatcher's status.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext

import anyio
import grpc
import structlog
from anyio.abc import TaskGroup
from opentelemetry import trace

from commander import actions, core
from commander.actions import PendingAtStop, SessionResult  # re-exported: the public API names them here
from commander.coalesce import Coalescer
from commander.config import CommanderConfig, ConnectionConfig
from commander.context import AgentContext
from commander.events import Observer
from commander.tracing import SessionSpan, session_tracer
from commander.transport import Link, ResumePolicy
from shared import wire

__all__ = ["Agent", "PendingAtStop", "SessionResult", "run_session"]

log = structlog.get_logger("commander.session")

Agent = Callable[[AgentContext, str], Awaitable[None]]
"""An agent: any async callable taking the context and the input text."""

CANCEL_REASON = "cancelled by the commander"


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
    if conn.token:
        metadata = (*metadata, ("authorization", f"Bearer {conn.token}"))
    tracer = session_tracer()  # None: tracing off, nothing below does any span work
    span = None if await_assignment else SessionSpan.begin(tracer, session_id or "")
    if span is not None:  # the dispatcher's session span becomes our child
        metadata = (*metadata, *span.metadata())
    machine = core.CommanderSession(
        session_id="" if await_assignment else (session_id or str(uuid.uuid4())),
        prompt=prompt,
        agent_name=config.agent.name,
        agent_version=config.agent.version,
        await_assignment=await_assignment,
        now=time.perf_counter(),
        tools=config.agent.tools,
        resume=conn.resume_timeout_s > 0,
    )
    shell = _Shell(machine, channel, conn, observer or Observer(), metadata, tracer, span)
    with structlog.contextvars.bound_contextvars(session_id=machine.session_id):
        try:
            await shell.run(agent, cancel)
        except BaseException:  # our caller cancelled us: the span still ends, saying so
            if shell.span is not None:
                shell.span.abandon("run_session was cancelled")
            raise
    result = machine.result(now=time.perf_counter(), packets_sent=shell.link.last_seq)
    if shell.span is not None:
        shell.span.end(result)
    return result


class _Shell:
    """Carries out one CommanderSession's actions over one Link; the agent runs in its own scope."""

    def __init__(
        self,
        machine: core.CommanderSession,
        channel: grpc.aio.Channel,
        connection: ConnectionConfig,
        observer: Observer,
        metadata: Sequence[tuple[str, str]],
        tracer: trace.Tracer | None = None,
        span: SessionSpan | None = None,
    ) -> None:
        self._machine = machine
        self._tracer = tracer
        self.span = span  # a pool stream's is begun when its Assignment comes
        self._connection = connection
        self._observer = observer
        # Created up front: a CancelAgent may come before the agent starts (then it never does).
        self._agent_scope = anyio.CancelScope()
        self._phase = machine.phase
        self._changed = anyio.Event()  # set when the core's phase moves on
        self.link = Link(
            channel,
            session_id=machine.session_id,
            outbox_size=connection.outbox_size,
            on_packet=self._on_packet,
            on_end=self._on_end,
            metadata=metadata,
        )
        self._ctx = AgentContext(machine, send=self.link.send, observer=observer)

    async def run(self, agent: Agent, cancel: anyio.Event | None) -> None:
        machine, link = self._machine, self.link
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(link.run)  # shielded: only abort() or cancel() end it early
                try:
                    await self._converse(agent, cancel, tg)
                except BaseException:
                    # Our caller cancelled us (or a bug of ours): say so in-band, bounded, so that
                    # the dispatcher does not hold the session for a resume that will never come;
                    # then take the RPC down.
                    await link.abort(CANCEL_REASON, tell=machine.phase is core.Phase.RUNNING)
                    raise
                if not link.ended.is_set():
                    link.cancel()
                tg.cancel_scope.cancel()  # the cancel watcher, if any
        finally:
            link.close_upstream()  # idempotent; also when the final packet could not be queued in time

    async def _converse(self, agent: Agent, cancel: anyio.Event | None, tg: TaskGroup) -> None:
        """The session over the open link: Hello, assignment, handshake, the agent, the end."""
        machine, link, conn = self._machine, self.link, self._connection
        if cancel is not None:
            tg.start_soon(self._cancel_on, cancel)
        await self._perform(machine.start())
        await self._until(lambda: machine.phase is not core.Phase.AWAITING_ASSIGNMENT)  # a pool waits unbounded
        if machine.assignment is not None:  # bound here: this task's logs are the session's
            structlog.contextvars.bind_contextvars(session_id=machine.session_id)
            log.info("session.assigned", started_by=machine.assignment.started_by)
            self.span = SessionSpan.begin(self._tracer, machine.session_id, dict(machine.assignment.trace_context))
        with anyio.move_on_after(conn.handshake_timeout_s):
            await self._until(lambda: machine.phase is not core.Phase.HANDSHAKE)
        if machine.phase is core.Phase.HANDSHAKE:
            log.info("session.compat_mode", reason="no Welcome within the handshake timeout")
            self._apply_all(machine.on_handshake_timeout())
        if machine.phase is core.Phase.RUNNING:
            if machine.resumable:
                link.enable_resume(
                    ResumePolicy(
                        timeout_s=conn.resume_timeout_s,
                        buffer_packets=conn.resume_buffer_packets,
                        hello=machine.resume_hello,
                        processed=lambda: machine.last_downstream_seq,
                    )
                )
            if conn.coalesce and machine.welcome is not None:
                # Only a peer that answered Hello treats deltas as a text stream; an
                # original-contract server may count chunks, so it gets them as produced.
                link.coalesce_with(Coalescer(max_bytes=conn.coalesce_max_bytes, max_packets=conn.coalesce_max_packets))
            await self._finish(await self._run_agent(agent))

    async def _run_agent(self, agent: Agent) -> Sequence[actions.Action]:
        machine = self._machine
        if not machine.start_agent():  # a stop, a cancel or the end came first
            return machine.on_agent_returned(time.perf_counter())
        failure: Exception | None = None
        with self._agent_scope, self.span.current() if self.span is not None else nullcontext():
            try:
                await agent(self._ctx, machine.prompt)
            except Exception as exc:  # the agent's own failure: reported upstream
                failure = exc
        if failure is not None:
            log.error("agent.failed", error=repr(failure))
            return machine.on_agent_failed(failure, time.perf_counter())
        return machine.on_agent_returned(time.perf_counter())

    async def _finish(self, final: Sequence[actions.Action]) -> None:
        """The final packet and the half-close, then the dispatcher's status: all within end_timeout_s
        (a dispatcher that stops reading leaves a full outbox, and the final packet waits for room)."""
        timeout_s = self._connection.end_timeout_s
        if self.link.resumable:  # a break at the end is resumed too
            timeout_s += self._connection.resume_timeout_s
        with anyio.move_on_after(timeout_s):
            await self._perform(final)
            await self.link.ended.wait()
        if not self.link.ended.is_set():
            log.warning("session.end_timeout", timeout_s=timeout_s)
            self._apply_all(self._machine.on_end_timeout())

    async def _cancel_on(self, event: anyio.Event) -> None:
        await event.wait()
        machine = self._machine
        waiting_in_pool = machine.phase is core.Phase.AWAITING_ASSIGNMENT
        self._apply_all(machine.on_cancel_requested(CANCEL_REASON))
        if machine.cancel_reason is not None and not waiting_in_pool:  # an idle pool stream just leaves
            # This task started before any assignment: bind the id the session has now.
            with structlog.contextvars.bound_contextvars(session_id=machine.session_id):
                log.info("session.cancelling", reason=machine.cancel_reason)

    # -- the core's side: events in, actions carried out ------------------------------------

    def _on_packet(self, packet: wire.pb.DownstreamPacket) -> None:
        self._apply_all(self._machine.on_downstream(packet, time.perf_counter()))

    def _on_end(self) -> None:
        end = self.link.end
        assert end is not None  # set by the reader before it calls on_end
        self._apply_all(
            self._machine.on_stream_end(end.code.name, end.details, end.trailers, self.link.initial_metadata)
        )

    async def _perform(self, todo: Sequence[actions.Action]) -> None:
        for action in todo:
            if isinstance(action, actions.Send):
                await self.link.send(action.packet)
            elif isinstance(action, actions.DiscardQueued):
                await self._perform(self._machine.on_queue_discarded(self.link.discard_queued()))
            elif isinstance(action, actions.CloseUpstream):
                self.link.close_upstream()
            else:
                self._apply(action)

    def _apply_all(self, effects: Sequence[actions.Effect]) -> None:
        for effect in effects:
            self._apply(effect)
        if self._machine.phase is not self._phase:  # wake whoever waits for one (`_until`)
            self._phase = self._machine.phase
            self._changed.set()
            self._changed = anyio.Event()

    def _apply(self, effect: actions.Effect) -> None:
        if isinstance(effect, actions.Notify):
            self._observer(effect.event)
        elif isinstance(effect, actions.Deliver):
            self._ctx.deliver(effect.call_id, effect.result)
        elif isinstance(effect, actions.CancelAgent):
            if effect.stop is not None:
                self._ctx.stopped.set()
            self._agent_scope.cancel()
        elif isinstance(effect, actions.Assigned):
            self.link.session_id = effect.assignment.session_id
        elif isinstance(effect, actions.CancelCall):
            log.debug("session.call_cancelled", reason=effect.reason)
            self.link.cancel()
        elif isinstance(effect, actions.Report):
            log.warning(effect.event, code=effect.code, seq=effect.seq, detail=effect.message)

    async def _until(self, reached: Callable[[], bool]) -> None:
        while not reached():
            await self._changed.wait()
