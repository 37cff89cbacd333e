"""Runs one session: pumps upstream packets into the state machine and carries out its actions.

One session = one task (the inbound pump, in its own cancel scope), owned by the
dispatcher's `SessionTasks`, plus one task per running tool call. The ChatStream handler
only drains the outbox: no anyio cancel scope ever spans one of its `yield`s (grpc drives
that generator and may stop it from outside), which is why the session's tasks live here
and not in the handler. One exception to "the handler writes": a stop the session task
decides while the handler sits idle is written by the session task itself, with the
outbox's writer turn lent to it (see `_write_stop`). Wake-ups come from the process's
shared `Timers`.

Tool calls are plain asyncio tasks owned by the runner rather than anyio task-group
children: on anyio 4.16 `TaskGroup.start_soon` alone costs ~20 µs (timeit, this machine)
against ~3 µs for `create_task`, and each call also paid a cancel scope, a timeout scope
and a semaphore (~15 µs more). They stay structured all the same: each is cancelled with
a recorded reason by a stop, and the session task cancels and awaits every one that is
left before it records the outcome, so none outlives its session. Tools written as plain
functions do not get a task at all (see ToolSpec).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio
import grpc
import structlog
from google.protobuf.message import DecodeError

from dispatcher.core.journal import Journal
from dispatcher.core.session import (
    Action,
    CancelTools,
    EndStream,
    Report,
    Send,
    Session,
    SessionOutcome,
    StartTool,
)
from dispatcher.core.snapshots import outcome_to_wire
from dispatcher.sessions.latch import Latch
from dispatcher.sessions.outbox import Outbox, OutboxClosed
from dispatcher.sessions.registry import EndedSession, SessionRegistry
from dispatcher.sessions.timers import Timers
from dispatcher.tools import PreparedCall, ToolExecutor, ToolOutcome
from shared import wire
from shared.model import StopInfo

__all__ = ["SessionRunner", "tool_result_to_wire"]

log = structlog.get_logger("dispatcher.sessions.runner")
_clock = time.monotonic
_UPSTREAM_END_SETTLE_S = 0.05


def tool_result_to_wire(outcome: ToolOutcome) -> wire.pb.ToolCallResult:
    result = wire.pb.ToolCallResult(
        tool_name=outcome.tool_name,
        call_id=outcome.call_id,
        result_json=outcome.result_json,
        execution_time_us=outcome.execution_time_us,
    )
    if outcome.error_code is not None:
        result.error.CopyFrom(
            wire.pb.ToolError(code=wire.tool_error_code_to_wire(outcome.error_code.name), message=outcome.error_message)
        )
    return result


class SessionRunner:
    """The IO around one `Session` state machine."""

    # `__weakref__`: the process's Timers hold runners weakly.
    __slots__ = (
        "__weakref__",
        "_armed",
        "_cancel_reasons",
        "_crashed",
        "_executor",
        "_gone_reason",
        "_max_tool_calls",
        "_peer",
        "_registry",
        "_requests",
        "_scope",
        "_slot_freed",
        "_timers",
        "_tool_tasks",
        "_write",
        "assignment",
        "commander",
        "done",
        "machine",
        "outbox",
        "outcome",
        "packets_out",
        "peer",
        "session_id",
        "settled",
        "started_by",
        "stop_written",
    )

    def __init__(
        self,
        *,
        machine: Session,
        requests: AsyncIterator[wire.pb.UpstreamPacket],
        executor: ToolExecutor,
        registry: SessionRegistry,
        outbox_size: int,
        max_concurrent_tool_calls: int,
        peer: str,
        commander: str = "",
        started_by: str = "",
        assignment: wire.pb.Assignment | None = None,
        timers: Timers,
    ) -> None:
        self.session_id = machine.session_id
        self.machine = machine
        self.outcome: SessionOutcome | None = None
        self.peer = peer
        self.commander = commander  # who runs it: token name, else Hello.agent_name
        self.started_by = started_by  # "<kind>:<name>" when started through the control API
        self.assignment = assignment  # pool streams: sent down before anything else
        self.packets_out: dict[str, int] = {}  # by DownstreamPacket signal name (counted by the handler)
        self._requests = requests
        self._executor = executor
        self._registry = registry
        self._peer = peer
        self.outbox = Outbox(outbox_size)
        self._max_tool_calls = max_concurrent_tool_calls
        # Running calls by call_id, and why a cancelled one was cancelled. Built on first use:
        # most sessions never call a tool, and an idle session should cost little.
        self._tool_tasks: dict[str, asyncio.Task[None]] | None = None
        self._cancel_reasons: dict[str, str] | None = None
        self._slot_freed: asyncio.Future[None] | None = None  # the pump waiting for a tool slot
        self._scope: anyio.CancelScope | None = None  # the session task's; cancelling it ends the session
        self._crashed = False
        self._timers = timers
        self._armed = math.inf  # the deadline armed with `timers` (mirrors it: read per packet)
        self._gone_reason: str | None = None
        # The RPC's own write (context.write), for a stop the session task writes itself.
        self._write: Callable[[wire.pb.DownstreamPacket], Awaitable[None]] | None = None
        # Once the stop is out, only acks follow it (the handler drops anything else).
        self.stop_written = False
        # Set when the session's outcome is decided (EndStream), a moment before `done`.
        self.settled = Latch()
        self.done = Latch()

    # -- called from other tasks ------------------------------------------------------

    def request_stop(self, stop: StopInfo) -> None:
        """Deliver a stop from outside the packet stream (shutdown, operator). Never blocks."""
        self._apply_nowait(self.machine.request_stop(stop, _clock()))
        self._rearm_timer()

    def set_caller_deadline(self, deadline: float, caller_hop: str) -> None:
        """Stop the session with TIMEOUT at `deadline` (monotonic seconds), on behalf of its caller."""
        self.machine.set_caller_deadline(deadline, caller_hop, _clock())
        self._rearm_timer()

    def peer_gone(self, reason: str) -> None:
        """The RPC ended under us (client cancel, connection lost): stop everything."""
        if self.outcome is not None:
            return
        self._gone_reason = reason
        if self._scope is not None:
            self._scope.cancel()

    def info(self) -> wire.ctl.SessionInfo:
        """The session as the control plane shows it (see SessionInfo in control.proto)."""
        machine = self.machine
        hello = machine.hello
        info = wire.ctl.SessionInfo(
            session_id=self.session_id,
            state=wire.session_state_to_wire(machine.state),  # type: ignore[arg-type]  # enums are ints
            commander=self.commander,
            commander_peer=self.peer,
            started_by=self.started_by,
            dispatcher_id=machine.dispatcher_hop,
            started_at_ms=machine.started_at_ms,
            last_activity_ms=machine.last_activity_ms,
            packets_in=machine.packets_in,
            packets_out=self.packets_out,
            tool_calls_running=len(machine.tool_calls_started),
            tool_calls_done=machine.tool_calls_done,
            packets_dropped=machine.dropped_packets,
            first_event_seq=machine.journal.first_seq if machine.journal.last_seq else 0,
            last_event_seq=machine.journal.last_seq,
            agent_name=hello.agent_name if hello is not None else "",
            agent_version=hello.agent_version if hello is not None else "",
        )
        outcome = self.outcome or machine.outcome
        if outcome is not None and self.settled.is_set():
            info.outcome.CopyFrom(outcome_to_wire(outcome))
        return info

    @property
    def journal(self) -> Journal:
        return self.machine.journal

    @property
    def pending_stop(self) -> StopInfo | None:
        return self.machine.pending_stop

    def running_tool_calls(self) -> list[wire.ctl.RunningToolCall]:
        return [
            wire.ctl.RunningToolCall(call_id=call_id, tool_name=tool, started_at_ms=started)
            for call_id, (tool, started) in self.machine.tool_calls_started.items()
        ]

    def attach_writer(self, write: Callable[[wire.pb.DownstreamPacket], Awaitable[None]]) -> None:
        """Let the session task write a stop straight to the RPC (see `_write_stop`)."""
        self._write = write

    def discard(self) -> None:
        """Release the outbox of a runner that was never started (its session was refused)."""
        self.outbox.close()

    # -- the session task ------------------------------------------------------------

    async def run(self, first: wire.pb.UpstreamPacket) -> None:
        # The session task runs in its own copy of the context: binding here tags every log
        # line of this task and of the tool tasks it starts, with nothing to unbind.
        structlog.contextvars.bind_contextvars(session_id=self.session_id)
        log.info("session.opened", peer=self._peer)
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._gone_reason is not None:
                    scope.cancel()
                await self._apply(self.machine.on_packet(first, _clock()))
                self._rearm_timer()
                if not self.machine.is_ended:
                    await self._pump_upstream()
                if not self.machine.is_ended:
                    # Upstream is done; a timer (grace, linger), a tool result or the peer
                    # going away ends the session, and EndStream cancels this scope.
                    await anyio.sleep_forever()
        except Exception:
            self._crashed = True
            log.exception("session.crashed")
        finally:
            try:
                await self._end_tool_calls()
            finally:  # even if shutdown cancels us right here, the outcome is recorded
                if self._crashed and self.machine.outcome is None:
                    self.machine.on_upstream_failed("INTERNAL", "internal error in the dispatcher", _clock())
                self._finish()

    def _finish(self) -> None:
        outcome = self.machine.outcome or self.machine.on_peer_gone(self._gone_reason or "stream closed")
        self.outcome = outcome
        self._timers.disarm(self)
        self._armed = -math.inf  # never again
        self.outbox.finish()
        self.machine.journal.close()
        self.settled.set()
        self.done.set()
        self._registry.release(
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
        log.info(
            "session.ended",
            state=outcome.state.value,
            reason=outcome.reason,
            ended_by=outcome.ended_by,
            status=outcome.status,
            stop_code=outcome.stop.code.name if outcome.stop else None,
            stop_path=list(outcome.stop.path) if outcome.stop else None,
            stop_confirmed=outcome.stop_confirmed if outcome.stop else None,
            stop_to_confirm_ms=round(outcome.stop_to_confirm_ms, 3) if outcome.stop_to_confirm_ms else None,
            packets_in=sum(self.machine.packets_in.values()),
            dropped=self.machine.dropped_packets,
        )

    async def _pump_upstream(self) -> None:
        machine = self.machine
        try:
            async for packet in self._requests:
                actions = machine.on_packet(packet, _clock())
                if actions:
                    await self._apply(actions)
                if machine.wake_at is not None and machine.wake_at < self._armed:
                    self._rearm_timer()
                if machine.is_ended:
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
        if not machine.is_closed:
            # The iterator also just ends when grpc itself kills the RPC (a message over the
            # size limit, a transport error); the done-callback follows a moment later and
            # cancels us. Give it that moment before calling this a clean half-close.
            with anyio.move_on_after(_UPSTREAM_END_SETTLE_S):
                await anyio.sleep_forever()
        await self._apply(machine.on_upstream_closed(_clock()))
        self._rearm_timer()

    def timer_fired(self, now: float) -> None:
        """Called by the process's `Timers` at the armed deadline (never waits)."""
        if self._armed == -math.inf:
            return  # ended meanwhile
        self._armed = math.inf
        # No contextvars binding here (it cost a third of a timer's time): the one line this
        # path can log names its session itself.
        wake = self.machine.wake_at
        if wake is not None and now >= wake:
            self._apply_nowait(self.machine.on_timer(now))
        self._rearm_timer()

    def _rearm_timer(self) -> None:
        """Arm the machine's next wake-up when it is earlier than the one armed (a later one
        armed before just fires early: the machine then finds nothing due and we re-arm)."""
        wake = self.machine.wake_at
        if wake is not None and wake < self._armed:
            self._armed = wake
            self._timers.arm(self, wake)

    # -- actions ----------------------------------------------------------------------

    async def _apply(self, actions: Sequence[Action]) -> None:
        """Carry out actions from a task that may wait: a full outbox pushes back on it."""
        for index, action in enumerate(actions):
            if type(action) is Send:
                if action.packet.HasField("ack"):
                    self._send_ack(action.packet)
                elif action.packet.HasField("stop"):
                    if self._may_write_stop(actions):
                        # The rest of this batch (cancel the tools, the ack) is synchronous and
                        # queues behind the lent turn: carry it out, then write the stop.
                        await self._apply(actions[index + 1 :])
                        await self._write_stop(action.packet)
                        return
                    self._send_urgent(action.packet)
                else:
                    try:
                        await self.outbox.put(action.packet)
                    except OutboxClosed:
                        # The handler closed the outbox: the RPC is over (its done-callback
                        # may not have run yet). Same as the peer going away.
                        self.peer_gone("the stream ended while the session was still sending")
                        return
            else:
                await self._apply_other(action)

    def _apply_nowait(self, actions: Sequence[Action]) -> None:
        """Carry out actions from a task that must not wait (timer, other sessions' callers)."""
        for action in actions:
            if type(action) is Send:
                if action.packet.HasField("ack"):
                    self._send_ack(action.packet)
                else:
                    self._send_urgent(action.packet)
            elif type(action) is StartTool:  # pragma: no cover - tools start only from packets
                raise AssertionError("tool calls start from the upstream pump")
            else:
                self._apply_control(action)

    async def _apply_other(self, action: Action) -> None:
        if type(action) is StartTool:
            prepared = self._executor.prepare(action.call_id, action.tool_name, action.arguments_json, action.timeout_s)
            if isinstance(prepared, ToolOutcome):  # answered at once: unknown, invalid or inline
                _log_outcome(prepared)
                await self._apply(self.machine.on_tool_done(action.call_id, tool_result_to_wire(prepared), _clock()))
                return
            # Waiting for a slot stops the pump reading: HTTP/2 flow control then pushes
            # back on the commander instead of tool calls piling up here.
            tasks = self._tool_tasks
            if tasks is None:
                tasks = self._tool_tasks = {}
            while len(tasks) >= self._max_tool_calls:
                self._slot_freed = asyncio.get_running_loop().create_future()
                try:
                    await self._slot_freed
                finally:
                    self._slot_freed = None
            task = asyncio.get_running_loop().create_task(
                self._run_tool(action, prepared), name=f"tool:{self.session_id}:{action.call_id}"
            )
            task.add_done_callback(lambda task: self._tool_ended(action, task))
            tasks[action.call_id] = task
        else:
            self._apply_control(action)

    def _apply_control(self, action: Action) -> None:
        if type(action) is CancelTools:
            self._cancel_tool_calls(action.reason)
        elif type(action) is Report:
            log.warning(
                "packet.rejected", session_id=self.session_id, code=action.code, seq=action.seq, detail=action.message
            )
        elif type(action) is EndStream:
            self.outcome = action.outcome
            self.settled.set()
            if self._scope is not None:
                self._scope.cancel()

    def _end_reason(self) -> str:
        outcome = self.outcome or self.machine.outcome
        if outcome is not None:
            return f"session ended {outcome.state.value}: {outcome.reason}"
        return f"session ended: {self._gone_reason or 'stream closed'}"

    def _may_write_stop(self, actions: Sequence[Action]) -> bool:
        """Whether the session task may write this batch's stop itself: only with the writer's
        turn lent (nothing queued, no write in flight), and not when the batch also ends the
        session (its end cancels this task: the handler then sends the stop, then the status)."""
        if self._write is None or any(type(action) in (EndStream, StartTool) for action in actions):
            return False
        return self.outbox.lend()

    async def _write_stop(self, packet: wire.pb.DownstreamPacket) -> None:
        """Write the stop from the session task, the moment it is decided: waking the handler
        instead would send it an event-loop round later, and under load that round is the
        larger part of the stop's latency."""
        assert self._write is not None
        self.stop_written = True
        self.packets_out["stop"] = self.packets_out.get("stop", 0) + 1
        try:
            await self._write(packet)
        except Exception:  # the RPC is over (aborted, cancelled, transport gone)
            self.outbox.give_back()
            self.peer_gone("the stream ended while the stop was being written")
            return
        # Cancelled mid-write (the session ending): the turn is not given back, as grpc may
        # still be sending; the handler then takes nothing more and ends with the session.
        self.outbox.give_back()

    def _send_ack(self, packet: wire.pb.DownstreamPacket) -> None:
        # Acks are cumulative: when the outbox is full the next one covers this one.
        self.outbox.offer(packet)

    def _send_urgent(self, packet: wire.pb.DownstreamPacket) -> None:
        self.outbox.push_urgent(packet)

    # -- tool calls ---------------------------------------------------------------------

    async def _run_tool(self, action: StartTool, prepared: PreparedCall) -> None:
        """One call's task. The call's slot is held until its result sits in the outbox: with
        a commander that does not read, finished calls must not pile up either."""
        # Its own task, so its own context copy: bound for the call's lines, nothing to unbind.
        structlog.contextvars.bind_contextvars(call_id=action.call_id, tool=action.tool_name)
        try:
            outcome = await self._executor.run(prepared)
            _log_outcome(outcome)
            await self._apply(self.machine.on_tool_done(action.call_id, tool_result_to_wire(outcome), _clock()))
            self._rearm_timer()
        except Exception:
            self._crashed = True
            log.exception("session.crashed")
            if self._scope is not None:
                self._scope.cancel()

    def _tool_ended(self, action: StartTool, task: asyncio.Task[None]) -> None:
        """A call's task is done (run as its done-callback, so also for a call cancelled before
        it ever ran): free its slot and record why a cancelled call ended."""
        if self._tool_tasks is not None:
            self._tool_tasks.pop(action.call_id, None)
        freed = self._slot_freed
        if freed is not None and not freed.done():
            freed.set_result(None)
        if task.cancelled():
            reasons = self._cancel_reasons
            reason = reasons.pop(action.call_id, None) if reasons else None
            log.info(
                "tool.cancelled",
                session_id=self.session_id,
                call_id=action.call_id,
                tool=action.tool_name,
                reason=reason or self._end_reason(),
            )

    def _cancel_tool_calls(self, reason: str) -> None:
        """Cancel every running call (a stop); each logs `reason` as it ends."""
        if not self._tool_tasks:
            return
        if self._cancel_reasons is None:
            self._cancel_reasons = {}
        for call_id, task in self._tool_tasks.items():
            self._cancel_reasons.setdefault(call_id, reason)
            task.cancel()

    async def _end_tool_calls(self) -> None:
        """Cancel and await whatever calls are left: none outlives the session task."""
        if not self._tool_tasks:
            return
        tasks = list(self._tool_tasks.values())
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.wait(tasks)


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


def describe_peer(context: Any) -> str:
    try:
        return str(context.peer())
    except Exception:  # pragma: no cover - peer() only fails on a dead call
        return "unknown"
