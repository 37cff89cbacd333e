"""Runs one session: pumps upstream packets into the state machine and carries out its actions.

One session = one task (the upstream pump), started and owned by the `SessionManager`, plus
one task per running async tool call (`ToolTasks`). The ChatStream handler is the stream's
only writer: it drains the session's `Outbox`, which orders packets by the delivery class the
machine gave each. Wake-ups come from the process's shared `Timers`.

Cancellation discipline (asyncio throughout, written down in docs/architecture.md):
- The session task ends itself when the machine says EndStream from another task (a timer,
  a tool, a control call, the RPC's done-callback) by cancelling itself, and takes that
  cancellation back with `Task.uncancel()`; any other cancellation (shutdown) is re-raised
  after cleanup.
- Cleanup is bounded: tool calls get `tool_cancel_grace_s` to end once cancelled, then are
  abandoned with a recorded reason. The outcome is recorded after that, in `finally`, even
  when shutdown cancels the task mid-cleanup.
- Nothing here awaits grpc's write: the handler does; this task only reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import grpc
import structlog
from google.protobuf.message import DecodeError

from dispatcher.boundary import new_reference
from dispatcher.core.actions import Action, CancelTools, Delivery, EndStream, Report, Send, SessionOutcome, StartTool
from dispatcher.core.journal import Journal
from dispatcher.core.session import Session
from dispatcher.core.snapshots import session_info
from dispatcher.metrics.stats import RuntimeStats
from dispatcher.sessions.approvals import Approvals, Decided, Decision, decide_response, run_once_approved
from dispatcher.sessions.latch import Latch
from dispatcher.sessions.outbox import Outbox, OutboxClosed
from dispatcher.sessions.registry import EndedSession
from dispatcher.sessions.replay import Replay
from dispatcher.sessions.timers import Timers
from dispatcher.sessions.tool_tasks import ToolTasks
from dispatcher.store import MemoryStore, SessionStore
from dispatcher.tools import PreparedCall, ToolErrorCode, ToolExecutor, ToolOutcome
from dispatcher.tracing import SessionTrace
from shared import tracing, wire
from shared.errors import NotFound, ResumeRefused, SessionEnded
from shared.model import StopInfo

__all__ = ["RunnerSettings", "SessionRunner", "tool_result_to_wire"]

log = structlog.get_logger("dispatcher.session")
_clock = time.monotonic


def tool_result_to_wire(outcome: ToolOutcome) -> wire.pb.ToolCallResult:
    result = wire.pb.ToolCallResult(
        tool_name=outcome.tool_name,
        call_id=outcome.call_id,
        result_json=outcome.result_json,
        execution_time_us=outcome.execution_time_us,
    )
    if outcome.error_code is not None:
        result.error.code = wire.tool_error_code_to_wire(outcome.error_code.name)
        result.error.message = outcome.error_message
    return result


class RunnerSettings:
    """What every runner of one dispatcher shares (built once by the manager)."""

    __slots__ = (
        "abandoned", "approval_timeout_s", "executor", "max_tool_calls", "on_ended", "outbox_size", "replay_max_bytes",
        "replay_max_packets", "stats", "store", "timers", "tool_cancel_grace_s", "tracer",
    )  # fmt: skip

    def __init__(
        self,
        *,
        executor: ToolExecutor,
        approval_timeout_s: float = 300.0,
        timers: Timers,
        outbox_size: int,
        max_tool_calls: int,
        tool_cancel_grace_s: float,
        on_ended: Callable[[EndedSession], None],
        abandoned: set[asyncio.Task[None]],
        stats: RuntimeStats | None = None,
        replay_max_packets: int = 1024,
        replay_max_bytes: int = 16 * 1024 * 1024,
        store: SessionStore | None = None,
    ) -> None:
        self.executor = executor
        self.store: SessionStore = store or MemoryStore()
        self.replay_max_packets = replay_max_packets
        self.replay_max_bytes = replay_max_bytes
        self.stats = stats or RuntimeStats()
        self.approval_timeout_s = approval_timeout_s
        self.timers = timers
        self.outbox_size = outbox_size
        self.max_tool_calls = max_tool_calls
        self.tool_cancel_grace_s = tool_cancel_grace_s
        self.on_ended = on_ended
        self.abandoned = abandoned
        self.tracer = tracing.tracer("southwest.dispatcher")  # None = tracing off: no span work at all


class SessionRunner:
    """The IO around one `Session` state machine."""

    # `__weakref__`: the process's Timers hold runners weakly.
    __slots__ = (
        "__weakref__", "_approvals", "_armed", "_cleaning_up", "_durable", "_durable_seq", "_ending_self",
        "_gone_reason", "_idle", "_interrupted", "_reading", "_requests", "_settings", "_switching", "_task", "_tools",
        "assignment", "commander", "done", "machine", "outbox", "outcome", "packets_out", "peer", "replay",
        "session_id", "settled", "started_by", "trace", "unsent",
    )  # fmt: skip

    def __init__(
        self,
        *,
        machine: Session,
        requests: AsyncIterator[wire.pb.UpstreamPacket] | None,
        settings: RunnerSettings,
        peer: str,
        commander: str = "",
        started_by: str = "",
        assignment: wire.pb.Assignment | None = None,
        trace_parent: Mapping[str, str] | None = None,
    ) -> None:
        self.session_id = machine.session_id
        self.machine = machine
        self.outcome: SessionOutcome | None = None
        self.peer = peer
        self.commander = commander  # who runs it: token name, else Hello.agent_name
        self.started_by = started_by  # "<kind>:<name>" when started through the control API
        self.assignment = assignment
        self.packets_out: dict[str, int] = {}  # by DownstreamPacket signal name, as written
        self.unsent = 0  # downstream packets decided but never written (a stop went first, the stream ended)
        self.outbox = Outbox(settings.outbox_size)  # the current stream's (a resume brings a new one)
        # Downstream numbering, and what a resumable session keeps for a resume (replay.py).
        self.replay = Replay(keeps=False, max_packets=settings.replay_max_packets, max_bytes=settings.replay_max_bytes)
        # The session's span (tracing on): child of the backend's context (in the Assignment) or
        # of the commander's (ChatStream metadata); the Assignment then carries ours onward.
        parent = dict(assignment.trace_context) if assignment is not None and assignment.trace_context else None
        self.trace = SessionTrace.begin(
            settings.tracer, self.session_id, parent or trace_parent, commander=commander, started_by=started_by
        )
        if assignment is not None:  # a pool stream: the assignment goes down before anything else
            if self.trace is not None:
                assignment.trace_context.clear()
                assignment.trace_context.update(self.trace.carrier())
            first_down = wire.pb.DownstreamPacket(assignment=assignment)
            self.replay.number(first_down)
            self.outbox.put_nowait(first_down)
        self._requests: AsyncIterator[wire.pb.UpstreamPacket] | None = requests
        self._settings = settings
        self._tools: ToolTasks | None = None  # built on first use: most sessions never call a tool
        self._approvals: Approvals | None = None  # likewise: built by the first call that needs approval
        self._task: asyncio.Task[None] | None = None
        self._ending_self = False  # this runner cancelled its own task to end the session
        self._cleaning_up = False
        self._armed = math.inf  # the deadline armed with the timers (mirrors it: read per packet)
        self._gone_reason: str | None = None
        self._reading = False  # the session task awaits the stream's next packet (safe to interrupt)
        self._switching = False  # it was interrupted because its stream was lost or replaced
        self._idle: asyncio.Future[None] | None = None  # it waits for a stream (detached) or for the end
        # A durable store: acks cover only what it has committed (`durable`, from its callback).
        self._durable_seq = 0
        self._durable: asyncio.Event | None = None
        # Adopted after a restart: answers for the calls that died with the earlier process.
        self._interrupted: list[wire.pb.ToolCallResult] = []
        self.settled = Latch()  # the outcome is decided (EndStream): the stream can end
        self.done = Latch()  # the outcome is recorded and every task of the session has ended

    # -- called from other tasks ------------------------------------------------------

    def request_stop(self, stop: StopInfo) -> None:
        """Deliver a stop from outside the packet stream (shutdown, operator). Never blocks."""
        self._apply_nowait(self.machine.request_stop(stop, _clock()))
        self._rearm_timer()

    def set_caller_deadline(self, deadline: float, caller_hop: str) -> None:
        """Stop the session with TIMEOUT at `deadline` (monotonic seconds), on behalf of its caller."""
        self.machine.set_caller_deadline(deadline, caller_hop, _clock())
        self._rearm_timer()

    def decide_tool_call(
        self, call_id: str, *, approve: bool, reason: str, decided_by: str
    ) -> wire.ctl.DecideToolCallResponse:
        """Approve or deny a call waiting for approval (never waits); NotFound for a call id
        this session never had."""
        approvals = self._approvals
        decided, decision = Decided.UNKNOWN, None
        if approvals is not None:
            if approvals.is_waiting(call_id) and call_id not in self.machine.tools.started:
                decided = Decided.NOT_AWAITING  # a stop forgot it: its cancellation is on its way
            else:
                decided, decision = approvals.decide(call_id, Decision(approve, reason, decided_by))
        if decided is Decided.UNKNOWN:
            if not self.machine.tools.is_duplicate(call_id):
                raise NotFound(f"session {self.session_id!r} has no tool call {call_id!r}")
            decided = Decided.NOT_AWAITING  # it needs no approval, or it has ended
        if decided is Decided.DECIDED:
            log.info("tool.decided", call_id=call_id, approved=approve, by=decided_by)
        return decide_response(self.session_id, call_id, decided, decision)

    def peer_gone(self, reason: str) -> None:
        """The RPC ended under us (client cancel, connection lost): end the session now."""
        if self.settled.is_set() or self._gone_reason is not None:
            return
        self._gone_reason = reason
        self._end_task()

    def rpc_ended(self, _context: object = None, *, outbox: Outbox | None = None) -> None:
        """The RPC's done-callback: whatever ended it, nothing more can be written on it.
        `outbox`: the one of the stream that ended (the current stream's by default); a stream
        already replaced by a resume changes nothing."""
        if outbox is not None and outbox is not self.outbox:
            return
        self._writer_gone(None)
        self.stream_lost("the commander cancelled or disconnected")

    def stream_lost(self, reason: str) -> None:
        """The current stream is gone without a half-close. A resumable session is DETACHED
        until its commander resumes it (or the window passes); any other ends now."""
        if self.settled.is_set() or self._gone_reason is not None:
            return
        if self.machine.is_detached:
            return  # told already (the RPC's done-callback and the writer both say so)
        if self.machine.on_detached(reason, _clock()):
            if self._requests is not None:
                log.info("session.detached", reason=reason, window_s=self.machine.resume_window_s)
            self._requests = None  # the pump leaves the dead stream (at once if it awaits a packet)
            self._interrupt_read()
            self._rearm_timer()
            return
        self.peer_gone(reason)

    def attach(self, requests: AsyncIterator[wire.pb.UpstreamPacket], resume: wire.pb.Resume, *, peer: str) -> Outbox:
        """A new stream resumes this session (Hello.resume): its outbox, which starts with the
        Welcome and the packets the commander missed. Raises a domain error when it cannot."""
        machine = self.machine
        if self.settled.is_set() or machine.is_ended:
            raise SessionEnded(f"session {self.session_id!r} has ended; it cannot be resumed")
        if not machine.resumable:
            raise ResumeRefused(
                f'session {self.session_id!r} was not opened with the "resume" feature; it cannot be resumed'
            )
        self.replay.skip_to(resume.last_downstream_seq)
        missed = self.replay.after(resume.last_downstream_seq)
        if missed is None:
            raise ResumeRefused(
                f"session {self.session_id!r} no longer holds the downstream packets after seq "
                f"{resume.last_downstream_seq} (its replay buffer kept packets after {self.replay.lost_through}); "
                "it cannot be resumed"
            )
        old = self.outbox
        if self._requests is not None:  # its old stream still looked alive: this one takes over
            log.info("session.taken_over", old_peer=self.peer, peer=peer)
            self._requests = None
            self._interrupt_read()
        old.close()  # its handler ends (ABORTED: resumed elsewhere); what it held is in the replay
        welcome = machine.on_resume(resume, _clock())
        self.replay.number(welcome)
        for result in self._interrupted:  # adopted after a restart: those calls died with it
            answer = wire.pb.DownstreamPacket(tool_result=result)
            self.replay.number(answer)
            missed.append(answer)
        self._interrupted = []
        outbox = self.outbox = Outbox(self._settings.outbox_size)
        stop = next((p for p in missed if p.HasField("stop")), None) if machine.pending_stop else None
        if stop is not None:  # the stop overtakes whatever is queued, as it always does (after the Welcome)
            unwritten = self.replay.never_written()
            self._dropped(tuple(p for p in missed if p is not stop and p in unwritten))
            outbox.preload([welcome, stop])
            outbox.seal()
        else:
            outbox.preload([welcome, *missed])
        self.peer = peer
        self._requests = requests
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)
        self._rearm_timer()
        log.info(
            "session.resumed",
            peer=peer,
            resumes=machine.resumes,
            resent=len(missed),
            last_downstream_seq=resume.last_downstream_seq,
            last_upstream_seq=machine.last_seq,
        )
        return outbox

    def timer_fired(self, now: float) -> None:
        """Called by the process's `Timers` at the armed deadline (never waits)."""
        if self._armed == -math.inf:
            return  # ended meanwhile
        self._armed = math.inf
        wake = self.machine.wake_at
        if wake is not None and now >= wake:
            self._apply_nowait(self.machine.on_timer(now))
        self._rearm_timer()

    # -- the stream's writer reports here -------------------------------------------------

    def written(self, packet: wire.pb.DownstreamPacket, outbox: Outbox | None = None) -> None:
        """The handler wrote `packet` (from `outbox`, the current stream's by default): only now
        is a tool result delivered (and journaled, once: a re-sent one is not journaled again)."""
        (outbox or self.outbox).written()
        kind = packet.WhichOneof("signal") or "none"
        if self.done.is_set():  # already folded into the metrics (the last Ack, the stop)
            self._settings.stats.packet_written_after_end(kind)
        self.packets_out[kind] = self.packets_out.get(kind, 0) + 1
        if self.replay.first_write(packet.seq) and kind == "tool_result":
            self.machine.journal.append("tool_result", packet.tool_result)

    def writer_gone(self, in_flight: wire.pb.DownstreamPacket | None, outbox: Outbox | None = None) -> None:
        """The handler stopped writing (the stream ends): what it never wrote is dropped, or
        kept for a resume. A replaced stream's handler changes nothing."""
        if outbox is not None and outbox is not self.outbox:
            return
        self._writer_gone(in_flight)
        if not self.settled.is_set():
            self.stream_lost("the stream ended: the commander cancelled or disconnected")

    @property
    def is_detached(self) -> bool:
        return self.machine.is_detached

    # -- the session task ------------------------------------------------------------

    def adopted(
        self, interrupted: list[wire.pb.ToolCallResult], kept: list[wire.pb.DownstreamPacket], written: set[int]
    ) -> None:
        """This runner holds a session an earlier process held (a store's live record), DETACHED:
        `kept` its stored tool results (numbered then; `written`: the seqs its journal shows were
        written), `interrupted` the answers for calls that died with that process."""
        self.replay.keeps = True
        self.replay.restore(kept, written=written)
        self._interrupted = interrupted

    async def run(self, first: wire.pb.UpstreamPacket | None) -> None:
        # The session task runs in its own copy of the context: binding here tags every log
        # line of this task and of the tool tasks it starts, with nothing to unbind.
        structlog.contextvars.bind_contextvars(session_id=self.session_id)
        log.info("session.opened", peer=self.peer)
        task = self._task = asyncio.current_task()
        assert task is not None
        try:
            try:
                if self._gone_reason is None:
                    if first is not None:  # None: adopted after a restart, detached (`adopted`)
                        await self._apply(self.machine.on_packet(first, _clock()))
                        self.replay.keeps = self.machine.resumable
                        self._record_opened(first)
                    self._rearm_timer()
                    await self._serve()
            except asyncio.CancelledError:
                if not (self._ending_self and task.uncancel() == 0):
                    raise  # shutdown: clean up below, then let it through
        except Exception:
            reference = new_reference()
            log.exception("session.crashed", ref=reference)
            self._apply_nowait(self.machine.on_crash(reference))
        finally:
            self._cleaning_up = True
            try:
                if self._tools is not None:
                    await self._tools.end_all(self._end_reason(), self._settings.tool_cancel_grace_s)
            finally:  # even if shutdown cancels us right here, the outcome is recorded
                self._finish()

    async def _serve(self) -> None:
        """Read each stream the session gets until it ends: the first, then each resumed one."""
        machine = self.machine
        while not machine.is_ended and self._gone_reason is None:
            requests = self._requests
            if requests is not None:
                await self._pump_upstream(requests)
                if self._requests is requests:
                    self._requests = None  # its upstream is over (half-closed)
            else:
                # Detached (attach() resolves this), or upstream is done: a timer, a tool result
                # or the peer going away ends the session and cancels this wait (`_end_task`).
                self._idle = asyncio.get_running_loop().create_future()
                try:
                    await self._idle
                finally:
                    self._idle = None

    def _record_opened(self, first: wire.pb.UpstreamPacket) -> None:
        hello = first.hello.SerializeToString() if first.WhichOneof("payload") == "hello" else b""
        self._settings.store.session_opened(
            self.session_id, opened=self.info().SerializeToString(), hello=hello, journal=self.machine.journal
        )

    def durable(self, upstream_seq: int) -> None:
        """The store has committed everything up to this upstream seq: the ack may go out."""
        if upstream_seq <= self._durable_seq:
            return
        self._durable_seq = upstream_seq
        self.outbox.push_ack(wire.pb.DownstreamPacket(ack=wire.pb.Ack(seq=upstream_seq)))
        if self._durable is not None:
            self._durable.set()

    def _push_ack(self, packet: wire.pb.DownstreamPacket) -> None:
        """An ack the machine decided: at once, or (a durable store) once what it covers is committed."""
        store = self._settings.store
        seq = packet.ack.seq
        if store.durable and seq > self._durable_seq:
            store.checkpoint(self.session_id, seq, self.info().SerializeToString())
            return
        self.outbox.push_ack(packet)

    async def _until_durable(self, upstream_seq: int, timeout_s: float) -> None:
        """Wait (bounded) until the store has committed up to `upstream_seq` (a durable store)."""
        if not self._settings.store.durable:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._durable_seq < upstream_seq:
                    if self._durable is None:
                        self._durable = asyncio.Event()
                    self._durable.clear()
                    await self._durable.wait()

    def _interrupt_read(self) -> None:
        """Make the session task leave the stream it reads (lost, or replaced by a resume)."""
        task = self._task
        if self._switching:
            return  # one interruption is on its way: a second cancel would outlive `uncancel`
        if self._reading and task is not None and not task.done() and task is not asyncio.current_task():
            self._switching = True
            task.cancel()

    async def _next_packet(self, packets: AsyncIterator[wire.pb.UpstreamPacket]) -> wire.pb.UpstreamPacket | None:
        """The stream's next packet; None when it ended, or when it was left (`_interrupt_read`)."""
        self._reading = True
        try:
            return await anext(packets)
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            task = self._task
            if self._switching and not self._ending_self and task is not None and task.uncancel() == 0:
                self._switching = False
                return None
            raise
        finally:
            self._reading = False

    async def _pump_upstream(self, requests: AsyncIterator[wire.pb.UpstreamPacket]) -> None:
        machine = self.machine
        replay = self.replay
        packets = aiter(requests)
        try:
            while (packet := await self._next_packet(packets)) is not None:
                actions = machine.on_packet(packet, _clock())
                if actions:
                    await self._apply(actions)
                if machine.wake_at is not None and machine.wake_at < self._armed:
                    self._rearm_timer()
                if replay.keeps and packet.downstream_ack > replay.released:
                    replay.release_through(packet.downstream_ack)
                if machine.is_ended or self._requests is not requests:
                    return
        except grpc.aio.AioRpcError as exc:  # pragma: no cover - grpc reports most read failures as cancel
            await self._apply(machine.on_upstream_failed(exc.code().name, exc.details() or "read failed", _clock()))
            return
        except grpc.aio.UsageError:
            return
        except DecodeError as exc:
            detail = f"the packet after seq {machine.last_seq} is not a valid UpstreamPacket: {exc}"
            await self._apply(machine.on_upstream_failed("INVALID_ARGUMENT", detail, _clock()))
            return
        # The request iterator ends alike when the commander half-closed and when grpc killed
        # the call (a message over the size limit, a transport error). The write of the ack
        # that is due now tells them apart: on a live stream it completes; on a killed one the
        # handler is cancelled or its write fails, the outbox closes and flush() says so.
        if self._requests is not requests:
            return  # left for a resumed stream
        await self._apply(machine.on_upstream_eof())
        await self._until_durable(machine.last_seq, machine.stop_grace_s)  # the final ack goes out then
        if not await self._stream_alive():
            self.stream_lost("grpc ended the call (transport error or a message over the size limit)")
            return
        await self._apply(machine.on_upstream_closed(_clock()))
        self._rearm_timer()

    async def _stream_alive(self) -> bool:
        """Whether what is queued gets written. A commander that half-closed and stopped reading
        keeps the write waiting: after the stop grace it counts as alive (a killed call would
        have closed the outbox by then: its done-callback runs as soon as grpc ends it)."""
        grace_s = self.machine.stop_grace_s
        try:
            return await asyncio.wait_for(self.outbox.flush(), grace_s)
        except TimeoutError:
            return True

    def _finish(self) -> None:
        outcome = self.machine.outcome or self.machine.on_peer_gone(self._gone_reason or "stream closed")
        self.outcome = outcome
        if self.replay.keeps:  # kept for a resume that never came: never written, so dropped
            self._dropped(tuple(self.replay.never_written()))
        self._settings.timers.disarm(self)
        self._armed = -math.inf  # never again
        self.settled.set()
        self.outbox.finish()
        self.machine.journal.close()
        self.done.set()
        self._settings.stats.session_ended(
            outcome,
            packets_in=self.machine.packets_in,
            packets_out=self.packets_out,
            dropped_in=self.machine.dropped_packets,
            unsent=self.unsent,
            outbox_full=self.outbox.full_waits,
        )
        usage = self.machine.usage
        if usage is not None:  # counted once the session ends, like its packets
            stats = self._settings.stats
            stats.add_usage("prompt", usage.prompt_tokens)
            stats.add_usage("completion", usage.completion_tokens)
            stats.add_usage("reasoning", usage.reasoning_tokens)
        self._settings.on_ended(
            EndedSession(
                session_id=self.session_id,
                started_at_ms=self.machine.started_at_ms,
                outcome=outcome,
                packets_in=dict(self.machine.packets_in),
                dropped_packets=self.machine.dropped_packets,
                started_by=self.started_by,
                info=self.info(),
                journal=self.machine.journal,
            )
        )
        if self.trace is not None:
            self._end_trace(outcome)
        stop = outcome.stop
        log.info(
            "session.ended",
            state=outcome.state.value,
            reason=outcome.reason,
            ended_by=outcome.ended_by,
            status=outcome.status,
            stop_code=stop.code.name if stop else None,
            stop_path=list(stop.path) if stop else None,
            stop_confirmed=outcome.stop_confirmed if stop else None,
            stop_to_confirm_ms=round(outcome.stop_to_confirm_ms, 3) if outcome.stop_to_confirm_ms else None,
            packets_in=sum(self.machine.packets_in.values()),
            dropped=self.machine.dropped_packets,
        )

    def _end_trace(self, outcome: SessionOutcome) -> None:
        assert self.trace is not None
        counters = {
            "session.packets_in": sum(self.machine.packets_in.values()),
            "session.packets_out": sum(self.packets_out.values()),
            "session.packets_dropped": self.machine.dropped_packets,
            "session.tool_calls": self.machine.tools.done_count,
        }
        try:
            self.trace.end(outcome, self.machine.journal, counters)
        except Exception:  # tracing must never change how a session ends
            log.exception("trace.failed")

    def _end_task(self) -> None:
        """End the session task from another task: cancel it (taken back in `run`)."""
        task = self._task
        if task is None or task.done() or self._cleaning_up or self._ending_self:
            return
        if task is asyncio.current_task():
            return  # the pump sees `is_ended` after this batch and returns by itself
        self._ending_self = True
        task.cancel()

    def _rearm_timer(self) -> None:
        """Arm the machine's next wake-up when it is earlier than the one armed (a later one
        armed before just fires early: the machine then finds nothing due and we re-arm)."""
        wake = self.machine.wake_at
        if wake is not None and wake < self._armed:
            self._armed = wake
            self._settings.timers.arm(self, wake)

    # -- actions ----------------------------------------------------------------------

    async def _apply(self, actions: Sequence[Action]) -> None:
        """Carry out actions from a task that may wait: a full outbox pushes back on it."""
        for action in actions:
            if type(action) is Send:
                delivery = action.delivery
                if delivery is Delivery.IN_ORDER:
                    self.replay.number(action.packet)
                    if action.packet.HasField("tool_result") and self._settings.store.durable:
                        packet = action.packet
                        self._settings.store.tool_result(
                            self.session_id, packet.tool_result.call_id, packet.SerializeToString()
                        )
                    try:
                        if not await self.outbox.put(action.packet):
                            self._dropped((action.packet,))
                    except OutboxClosed:  # the RPC is over (its done-callback may still be to come)
                        if self.replay.keeps:
                            continue  # kept: a resumed stream gets it
                        self._dropped((action.packet,))
                        self.peer_gone("the stream ended while the session was still sending")
                        return
                elif delivery is Delivery.ACK:
                    self._push_ack(action.packet)
                else:
                    self.replay.number(action.packet)
                    self._dropped(self.outbox.push_urgent(action.packet))
            elif type(action) is StartTool:
                await self._start_tool(action)
            else:
                self._apply_control(action)

    def _apply_nowait(self, actions: Sequence[Action]) -> None:
        """Carry out actions from a task that must not wait (a timer, another session's caller).
        The machine gives such events only acks, stops and control actions."""
        for action in actions:
            if type(action) is Send:
                if action.delivery is Delivery.ACK:
                    self._push_ack(action.packet)
                    continue
                self.replay.number(action.packet)
                if action.delivery is Delivery.URGENT:
                    self._dropped(self.outbox.push_urgent(action.packet))
                elif not self.outbox.put_nowait(action.packet) and not (self.replay.keeps and self.is_detached):
                    self._dropped((action.packet,))
            elif type(action) is StartTool:  # pragma: no cover - tool calls start only from packets
                raise AssertionError("tool calls start from the upstream pump")
            else:
                self._apply_control(action)

    def _apply_control(self, action: Action) -> None:
        if type(action) is CancelTools:
            if self._tools is not None:
                self._tools.cancel_all(action.reason)
        elif type(action) is Report:
            log.warning(
                "packet.rejected", session_id=self.session_id, code=action.code, seq=action.seq, detail=action.message
            )
        elif type(action) is EndStream:
            self.outcome = action.outcome
            self.settled.set()
            self.outbox.finish()
            self._end_task()

    def _dropped(self, packets: Sequence[wire.pb.DownstreamPacket]) -> None:
        """Packets decided but never written (a stop went first, or the stream ended)."""
        if self.done.is_set():
            self._settings.stats.dropped["unsent"] = self._settings.stats.dropped.get("unsent", 0) + len(packets)
        else:
            self.unsent += len(packets)
        for packet in packets:
            if packet.HasField("tool_result"):
                self.machine.journal.append("tool_result_dropped", packet.tool_result)

    def _writer_gone(self, in_flight: wire.pb.DownstreamPacket | None) -> None:
        left = self.outbox.close()
        if self.replay.keeps and not self.settled.is_set():
            return  # kept in the replay: a resume re-sends them, the end journals them dropped
        self._dropped((in_flight, *left) if in_flight is not None else left)

    def _end_reason(self) -> str:
        outcome = self.outcome or self.machine.outcome
        if outcome is not None:
            return f"session ended {outcome.state.value}: {outcome.reason}"
        return f"session ended: {self._gone_reason or 'stream closed'}"

    # -- tool calls ---------------------------------------------------------------------

    async def _start_tool(self, action: StartTool) -> None:
        executor = self._settings.executor
        prepared = executor.prepare(action.call_id, action.tool_name, action.arguments_json, action.timeout_s)
        if isinstance(prepared, ToolOutcome):  # answered at once: unknown, invalid or inline
            _log_outcome(prepared)
            self._count_tool(prepared)
            await self._apply(self.machine.on_tool_done(action.call_id, tool_result_to_wire(prepared), _clock()))
            return
        tools = self._tools
        if tools is None:
            tools = self._tools = ToolTasks(
                self.session_id,
                limit=self._settings.max_tool_calls,
                abandoned=self._settings.abandoned,
                on_unfinished=self._tool_unfinished,
            )
        await tools.wait_for_slot()
        tools.start(action.call_id, action.tool_name, self._run_tool(action, prepared))

    async def _run_tool(self, action: StartTool, prepared: PreparedCall) -> None:
        """One call's task. It holds its slot until its result sits in the outbox: with a
        commander that does not read, finished calls must not pile up either."""
        # Its own task, so its own context copy: bound for the call's lines, nothing to unbind.
        structlog.contextvars.bind_contextvars(call_id=action.call_id, tool=action.tool_name)
        try:
            if prepared.needs_approval:
                if self._approvals is None:
                    self._approvals = Approvals()
                outcome = await run_once_approved(
                    self._approvals,
                    prepared,
                    action.arguments_json,
                    executor=self._settings.executor,
                    journal=self.machine.journal,
                    timeout_s=self._settings.approval_timeout_s,
                    timed_out_by=self.machine.dispatcher_hop,
                )
            else:
                outcome = await self._settings.executor.run(prepared)
            _log_outcome(outcome)
            self._count_tool(outcome)
            await self._apply(self.machine.on_tool_done(action.call_id, tool_result_to_wire(outcome), _clock()))
            self._rearm_timer()
        except Exception:  # a bug of ours around the call (the executor catches the tool's own)
            reference = new_reference()
            log.exception("session.crashed", ref=reference)
            self._apply_nowait(self.machine.on_crash(reference))

    def _count_tool(self, outcome: ToolOutcome) -> None:
        code = outcome.error_code
        # A name the registry does not know comes from the peer: never a label value of its own.
        tool = "(unknown)" if code is ToolErrorCode.UNKNOWN_TOOL else outcome.tool_name
        self._settings.stats.tool_call_done(tool, code.value if code else "ok", outcome.execution_time_us / 1e6)

    def _tool_unfinished(self, call_id: str, tool_name: str, reason: str) -> None:
        """A call ended without a result (cancelled, or abandoned): the journal says so."""
        outcome = "abandoned" if reason.startswith("abandoned") else "cancelled"  # see ToolTasks
        self._settings.stats.tool_call_done(tool_name, outcome, 0.0)
        error = wire.pb.ToolError(code=wire.pb.TOOL_ERROR_CODE_CANCELLED, message=reason)
        self.machine.journal.append(
            "tool_result_dropped", wire.pb.ToolCallResult(tool_name=tool_name, call_id=call_id, error=error)
        )

    # -- the control plane's view ---------------------------------------------------------

    @property
    def journal(self) -> Journal:
        return self.machine.journal

    @property
    def pending_stop(self) -> StopInfo | None:
        return self.machine.pending_stop

    def info(self) -> wire.ctl.SessionInfo:
        """The session as the control plane shows it (see SessionInfo in control.proto)."""
        outcome = (self.outcome or self.machine.outcome) if self.settled.is_set() else None
        return session_info(
            self.machine, commander=self.commander, peer=self.peer, started_by=self.started_by,
            packets_out=self.packets_out, outcome=outcome,
        )  # fmt: skip

    def running_tool_calls(self) -> list[wire.ctl.RunningToolCall]:
        return [
            wire.ctl.RunningToolCall(call_id=call_id, tool_name=tool, started_at_ms=started)
            for call_id, (tool, started) in self.machine.tools.started.items()
        ]


def _log_outcome(outcome: ToolOutcome) -> None:
    if outcome.is_error:
        code = outcome.error_code.name if outcome.error_code else None
        log.info(
            "tool.failed", call_id=outcome.call_id, tool=outcome.tool_name, code=code, detail=outcome.error_message
        )
    else:
        log.debug(
            "tool.finished", call_id=outcome.call_id, tool=outcome.tool_name, execution_us=outcome.execution_time_us
        )
