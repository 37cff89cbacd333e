"""One session's protocol state machine: sans-IO, no grpc, no anyio (its actions: dispatcher/actions.py).

The servicer feeds it events (`on_packet`, `on_tool_done`, `on_timer`, `request_stop`,
`on_upstream_closed`, `on_peer_gone`, `on_upstream_failed`) and carries out the actions
it returns (`Send`, `StartTool`, `CancelTools`, `Report`, `EndStream`). Every decision
about ordering, acks, stops, policies and terminal states is made here, so it is tested
by feeding packets and reading actions, with no network.

Hot path: a content or thought packet costs a few attribute updates, the policy scan
of its text, and returns the shared empty tuple unless an Ack is due.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Sequence

from dispatcher.config import SessionConfig
from dispatcher.core.actions import Action, CancelTools, EndStream, Report, Send, SessionOutcome, StartTool
from dispatcher.core.journal import Journal
from dispatcher.core.policies import Policy, Violation
from dispatcher.core.snapshots import state_change
from shared import wire
from shared.model import STOP_STATUS_NAME, SessionState, StopCode, StopInfo, now_ms

__all__ = [
    "Action",
    "CancelTools",
    "EndStream",
    "Report",
    "Send",
    "Session",
    "SessionOutcome",
    "StartTool",
]


_NO_ACTIONS: tuple[Action, ...] = ()


class _Fatal(Exception):
    """Internal: a protocol violation that ends the stream."""

    def __init__(self, code: str, message: str, status: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def ack_interval_s(session_id: str, ack_interval_ms: int) -> float:
    """The session's own Ack interval: spread over [T/2, T] by its id (deterministically).
    Sessions opened together (a reconnect storm, a benchmark) would otherwise ack in the same
    instant every T, a burst of downstream writes for both ends. Earlier than T is within the
    contract: T is how long an Ack may wait at most."""
    spread = zlib.crc32(session_id.encode()) / 0xFFFFFFFF
    return ack_interval_ms / 1000 * (0.5 + 0.5 * spread)


class Session:
    """The protocol rules of one ChatStream call (see the proto's comments)."""

    # Slots: ten thousand idle sessions each save the ~1.2 KiB a per-instance dict costs.
    __slots__ = (
        "_ack_due",
        "_ack_every",
        "_ack_interval_s",
        "_caller_deadline",
        "_caller_hop",
        "_config",
        "_ended",
        "_grace_deadline",
        "_hop",
        "_idle_s",
        "_last_activity",
        "_limits",
        "_linger_deadline",
        "_ordered",
        "_ordered_done",
        "_policy",
        "_policy_config",
        "_received",
        "_reported",
        "_running",
        "_seen_call_ids",
        "_sequenced",
        "_started_at",
        "_stop",
        "_stop_sent_at",
        "_unacked",
        "_upstream_closed",
        "_wall_deadline",
        "dispatcher_hop",
        "dropped_packets",
        "hello",
        "journal",
        "last_seq",
        "outcome",
        "packets_in",
        "session_id",
        "started_at_ms",
        "state",
        "tool_calls_done",
        "tool_calls_started",
        "wake_at",
    )

    def __init__(
        self,
        *,
        session_id: str,
        dispatcher_hop: str,
        config: SessionConfig,
        policy: Policy,
        limits: wire.pb.SessionLimits,
        now: float,
        journal: Journal | None = None,
    ) -> None:
        self.session_id = session_id
        self.state = SessionState.OPEN
        self.outcome: SessionOutcome | None = None
        self.started_at_ms = now_ms()
        self._started_at = now
        # Every accepted packet, result, stop and state change, for watchers (bounded).
        self.journal = journal or Journal(
            session_id, max_events=config.journal_max_events, max_bytes=config.journal_max_bytes
        )
        self.journal.append("state_change", state_change(SessionState.OPEN, "stream opened"))
        self.tool_calls_done = 0
        self.tool_calls_started: dict[str, tuple[str, int]] = {}  # running call_id -> (tool, started_at_ms)
        self.wake_at: float | None = None  # when on_timer wants to run next (monotonic seconds)
        self.packets_in: dict[str, int] = {}
        self.dropped_packets = 0
        self.last_seq = 0
        self.hello: wire.pb.Hello | None = None

        self.dispatcher_hop = dispatcher_hop
        self._hop = dispatcher_hop
        self._config = config
        self._policy_config = policy.config
        self._policy = policy.tracker()
        self._limits = limits
        self._sequenced = False
        self._received = 0
        self._unacked = 0
        self._ack_every = config.ack_every_packets
        self._ack_interval_s = ack_interval_s(session_id, config.ack_interval_ms)
        self._ack_due: float | None = None
        self._last_activity = now
        max_s = policy.config.max_session_s
        self._wall_deadline: float | None = now + max_s if max_s else None
        self._idle_s = policy.config.idle_timeout_s
        self._caller_deadline: float | None = None
        self._caller_hop = ""
        self._running: dict[str, bool] = {}  # call_id -> released in request order
        self._seen_call_ids: set[str] = set()
        self._ordered: deque[str] | None = None  # call ids without a call_id, in request order
        self._ordered_done: dict[str, wire.pb.ToolCallResult] = {}
        self._stop: StopInfo | None = None
        self._stop_sent_at = 0.0
        self._grace_deadline: float | None = None
        self._linger_deadline: float | None = None
        self._upstream_closed = False
        self._ended = False
        self._reported: set[str] = set()
        self._recompute_wake(now)

    # -- properties ---------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """True once a stop was sent or the session reached a terminal state."""
        return self.state is SessionState.STOPPING or self.outcome is not None

    @property
    def running_tool_calls(self) -> list[str]:
        return list(self._running)

    @property
    def is_ended(self) -> bool:
        """True once EndStream was emitted: the servicer stops reading."""
        return self._ended

    @property
    def pending_stop(self) -> StopInfo | None:
        return self._stop

    @property
    def last_activity_ms(self) -> int:
        """Wall-clock time of the last packet or tool result (epoch ms)."""
        return self.started_at_ms + round((self._last_activity - self._started_at) * 1000)

    # -- events -------------------------------------------------------------------

    def on_packet(self, packet: wire.pb.UpstreamPacket, now: float) -> Sequence[Action]:
        # The hot path: written out flat (no property or helper calls on the common case).
        try:
            if self.state is SessionState.STOPPING or self.outcome is not None:  # is_closed
                return self._on_packet_when_closed(packet, now)
            seq = packet.seq
            if seq > self.last_seq:
                self._sequenced = True
            else:
                seq = self._take_seq(seq)
            named = packet.session_id
            if named and named != self.session_id:
                raise _Fatal(
                    "SESSION_MISMATCH",
                    f"packet seq {seq} names session {named!r} but this stream is session {self.session_id!r}",
                )
            self.last_seq = seq
            self._received += 1
            self._last_activity = now
            kind = packet.WhichOneof("payload") or "none"
            counts = self.packets_in
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "content":
                return self._on_content(packet.content, now)
            if kind == "thought":
                return self._on_thought(packet.thought, now)
            if kind == "tool_call":
                return self._on_tool_call(packet.tool_call, seq, now)
            if kind == "hello":
                return self._on_hello(packet.hello, seq, now)
            if kind == "error":
                return self._on_commander_error(packet.error, now)
            if kind == "stop_confirm":
                return self._reject("UNEXPECTED_STOP_CONFIRM", f"stop_confirm at seq {seq} but no stop was sent", seq)
            return self._reject(
                "MISSING_PAYLOAD",
                f"packet seq {seq} has no payload (empty oneof, or a member this dispatcher does not know)",
                seq,
            )
        except _Fatal as fatal:
            return self._fail(fatal, now)

    def on_tool_done(self, call_id: str, result: wire.pb.ToolCallResult, now: float) -> Sequence[Action]:
        ordered = self._running.pop(call_id, None)
        if ordered is None:  # cancelled by a stop or an end: its result is never sent
            return _NO_ACTIONS
        self.tool_calls_started.pop(call_id, None)
        self.tool_calls_done += 1
        self._last_activity = now
        if not self._running and self.state is SessionState.AWAITING_TOOL:
            self.state = SessionState.ACTIVE
        actions: list[Action] = []
        if ordered:
            self._ordered_done[call_id] = result
            while self._ordered and self._ordered[0] in self._ordered_done:
                released = self._ordered_done.pop(self._ordered.popleft())
                self.journal.append("tool_result", released)
                actions.append(Send(wire.pb.DownstreamPacket(tool_result=released)))
        else:
            self.journal.append("tool_result", result)
            actions.append(Send(wire.pb.DownstreamPacket(tool_result=result)))
        if not self._running:
            if self.outcome is not None:
                actions.extend(self._after_terminal(now))
            elif self._upstream_closed:
                actions.extend(self._finish("commander half-closed without is_finish", now))
        self._recompute_wake(now)
        return actions

    def on_timer(self, now: float) -> Sequence[Action]:
        actions: list[Action] = []
        if self._ack_due is not None and now >= self._ack_due:
            actions.extend(self._ack())
        if not self.is_closed:
            if self._wall_deadline is not None and now >= self._wall_deadline:
                actions.extend(
                    self._stop_now(
                        StopInfo(
                            code=StopCode.TIMEOUT,
                            reason="session wall-clock limit reached",
                            cause=f"limit=max_session_s value={self._policy_config.max_session_s:g}",
                            path=("timer:max_session_s",),
                        ),
                        now,
                    )
                )
            elif self._caller_deadline is not None and now >= self._caller_deadline:
                actions.extend(
                    self._stop_now(
                        StopInfo(
                            code=StopCode.TIMEOUT,
                            reason="the caller's deadline passed",
                            path=(self._caller_hop,),
                        ),
                        now,
                    )
                )
            elif (idle_deadline := self._idle_deadline()) is not None and now >= idle_deadline:
                actions.extend(
                    self._stop_now(
                        StopInfo(
                            code=StopCode.IDLE_TIMEOUT,
                            reason="commander idle for too long",
                            cause=f"limit=idle_timeout_s value={self._idle_s:g}",
                            path=("timer:idle_timeout_s",),
                        ),
                        now,
                    )
                )
        if self.state is SessionState.STOPPING and self._grace_deadline is not None and now >= self._grace_deadline:
            actions.extend(self._end_stop(confirmed=False, how="grace period expired without stop_confirm", now=now))
        if self._linger_deadline is not None and now >= self._linger_deadline and not self._ended:
            actions.extend(self._end())
        self._recompute_wake(now)
        return actions

    def set_caller_deadline(self, deadline: float, caller_hop: str, now: float) -> None:
        """A StartSession caller's deadline (monotonic seconds): a TIMEOUT stop when it passes."""
        self._caller_deadline = deadline
        self._caller_hop = caller_hop
        self._recompute_wake(now)

    def request_stop(self, stop: StopInfo, now: float) -> Sequence[Action]:
        """A stop from outside the packet stream (shutdown, operator, backend)."""
        if self.is_closed:
            return _NO_ACTIONS
        actions = self._stop_now(stop, now)
        self._recompute_wake(now)
        return actions

    def on_upstream_closed(self, now: float) -> Sequence[Action]:
        """The commander half-closed (no more packets will come)."""
        self._upstream_closed = True
        actions: list[Action] = []
        if self.state is SessionState.STOPPING:
            actions.extend(self._end_stop(confirmed=False, how="commander half-closed without stop_confirm", now=now))
        elif self.outcome is not None:
            actions.extend(self._after_terminal(now))
        elif not self._running:
            actions.extend(self._finish("commander half-closed without is_finish", now))
        # else: tool calls still running; their results go out, then the stream ends.
        self._recompute_wake(now)
        return actions

    def on_peer_gone(self, reason: str) -> SessionOutcome:
        """The stream died under us (client cancel, deadline, connection lost)."""
        if self.outcome is None:
            if self.state is SessionState.STOPPING and self._stop is not None:
                self._set_outcome(self._stop_outcome(confirmed=False, how=f"peer went away: {reason}"))
            else:
                self._set_outcome(SessionOutcome(SessionState.CANCELLED, reason, "peer", status="CANCELLED"))
        self._running.clear()
        self._ended = True
        assert self.outcome is not None
        return self.outcome

    def on_upstream_failed(self, status: str, details: str, now: float) -> Sequence[Action]:
        """Reading upstream failed with a status (INVALID_ARGUMENT for bytes that do not parse)."""
        code = "MALFORMED_PACKET" if status == "INVALID_ARGUMENT" else "UPSTREAM_FAILED"
        return self._fail(_Fatal(code, details, status), now)

    # -- packet kinds -------------------------------------------------------------

    def _on_content(self, chunk: wire.pb.ContentChunk, now: float) -> Sequence[Action]:
        violation = self._policy.on_content(chunk.text)
        if violation is not None:
            return self._violated(violation, now)
        self.journal.append("content", chunk, self.last_seq)
        if chunk.is_finish:
            return self._finish("is_finish", now)
        if self.state is SessionState.OPEN:
            self.state = SessionState.ACTIVE
        return self._count_for_ack(now)

    def _on_thought(self, thought: wire.pb.ThoughtChain, now: float) -> Sequence[Action]:
        violation = self._policy.on_thought(thought.delta)
        if violation is not None:
            return self._violated(violation, now)
        self.journal.append("thought", thought, self.last_seq)
        if self.state is SessionState.OPEN:
            self.state = SessionState.ACTIVE
        return self._count_for_ack(now)

    def _on_tool_call(self, call: wire.pb.ToolCallRequest, seq: int, now: float) -> Sequence[Action]:
        violation = self._policy.on_tool_call()
        if violation is not None:
            return self._violated(violation, now)
        call_id = call.call_id
        ordered = not call_id
        if ordered:
            call_id = f"seq-{seq}"
        if call_id in self._seen_call_ids:
            actions = list(
                self._reject(
                    "DUPLICATE_CALL_ID",
                    f"tool call at seq {seq} reuses call_id {call_id!r}; the call was not run",
                    seq,
                    call_id=call_id,
                )
            )
            return actions
        self._seen_call_ids.add(call_id)
        self._running[call_id] = ordered
        self.tool_calls_started[call_id] = (call.tool_name, now_ms())
        if ordered:
            call = wire.pb.ToolCallRequest(
                tool_name=call.tool_name,
                arguments_json=call.arguments_json,
                call_id=call_id,
                timeout_ms=call.timeout_ms,
            )
        self.journal.append("tool_call", call, seq)
        if ordered:
            if self._ordered is None:
                self._ordered = deque()
            self._ordered.append(call_id)
        self.state = SessionState.AWAITING_TOOL
        timeout_s = call.timeout_ms / 1000 if call.timeout_ms else None
        # The ack first: an inline tool's result is ready the moment StartTool is carried out.
        actions = [*self._ack(), StartTool(call_id, call.tool_name, call.arguments_json, timeout_s)]
        self._recompute_wake(now)
        return actions

    def _on_hello(self, hello: wire.pb.Hello, seq: int, now: float) -> Sequence[Action]:
        if self.hello is not None:
            return self._reject("DUPLICATE_HELLO", f"second hello at seq {seq} ignored; the handshake is done", seq)
        if self._received > 1:
            return self._reject(
                "HELLO_NOT_FIRST", f"hello at seq {seq} ignored: it must be the first packet of the stream", seq
            )
        self.hello = hello
        welcome = wire.pb.Welcome(
            session_id=self.session_id,
            dispatcher_id=self._hop,
            features=list(wire.FEATURES),
            limits=self._limits,
        )
        return (Send(wire.pb.DownstreamPacket(welcome=welcome)),)

    def _on_commander_error(self, error: wire.pb.ErrorSignal, now: float) -> Sequence[Action]:
        self.journal.append("error", error, self.last_seq)
        code = error.code or "COMMANDER_ERROR"
        if code == "CANCELLED":  # the commander's own cancel (its user, its caller), not a failure
            outcome = SessionOutcome(
                SessionState.CANCELLED, error.message or "cancelled by the commander", "commander", "CANCELLED", code
            )
        else:
            outcome = SessionOutcome(
                SessionState.FAILED, f"commander reported {code}: {error.message}", "commander", error_code=code
            )
        self._set_outcome(outcome)
        actions: list[Action] = []
        if self._running:
            actions.append(CancelTools(f"commander reported {code}"))
            self._forget_running()
        actions.extend(self._ack())
        actions.extend(self._after_terminal(now))
        self._recompute_wake(now)
        return actions

    def _on_packet_when_closed(self, packet: wire.pb.UpstreamPacket, now: float) -> Sequence[Action]:
        if self._ended:
            return _NO_ACTIONS
        kind = packet.WhichOneof("payload")
        if self.state is SessionState.STOPPING:
            if kind == "stop_confirm":
                self.last_seq = max(self.last_seq, packet.seq)
                self.journal.append("stop_confirm", packet.stop_confirm, packet.seq)
                return self._end_stop(confirmed=True, how="confirmed", now=now, confirm=packet.stop_confirm)
            self.dropped_packets += 1  # in flight when the stop went out: counted, never forwarded
            return _NO_ACTIONS
        self.dropped_packets += 1
        code = (
            "PACKET_AFTER_STOP"
            if self.state in (SessionState.STOPPED, SessionState.EXPIRED)
            else ("PACKET_AFTER_FINISH" if self.state is SessionState.FINISHED else "PACKET_AFTER_END")
        )
        seq = packet.seq or self.last_seq + 1
        return self._reject(
            code, f"packet seq {seq} arrived after the session ended ({self.state.value}); dropped", seq
        )

    # -- helpers ------------------------------------------------------------------

    def _take_seq(self, seq: int) -> int:
        if seq:
            if seq <= self.last_seq:
                raise _Fatal(
                    "SEQ_REGRESSION",
                    f"seq {seq} after seq {self.last_seq}: seq must strictly increase within a session",
                )
            self._sequenced = True
            return seq
        if self._sequenced:
            raise _Fatal(
                "SEQ_MISSING", f"packet without seq after seq {self.last_seq}: this session numbers its packets"
            )
        return self.last_seq + 1

    def _count_for_ack(self, now: float) -> Sequence[Action]:
        self._unacked += 1
        if self._unacked >= self._ack_every:
            return self._ack()
        if self._ack_due is None:
            self._ack_due = now + self._ack_interval_s
            if self.wake_at is None or self._ack_due < self.wake_at:
                self.wake_at = self._ack_due
        return _NO_ACTIONS

    def _ack(self) -> tuple[Action, ...]:
        self._unacked = 0
        self._ack_due = None
        if self.last_seq == 0:
            return _NO_ACTIONS
        return (Send(wire.pb.DownstreamPacket(ack=wire.pb.Ack(seq=self.last_seq))),)

    def _reject(self, code: str, message: str, seq: int, *, call_id: str = "") -> Sequence[Action]:
        """A non-fatal bad packet: answer with an ErrorSignal; report the first of each code."""
        error = wire.pb.ErrorSignal(code=code, message=message, seq=seq, call_id=call_id)
        send = Send(wire.pb.DownstreamPacket(error=error))
        if code in self._reported:
            return (send,)
        self._reported.add(code)
        return (Report(code, message, seq), send)

    def _violated(self, violation: Violation, now: float) -> Sequence[Action]:
        stop = StopInfo(code=violation.code, reason=violation.reason, cause=violation.cause, path=(violation.origin,))
        actions = self._stop_now(stop, now)
        self._recompute_wake(now)
        return actions

    def _stop_now(self, stop: StopInfo, now: float) -> list[Action]:
        grace_ms = self._config.stop_grace_ms
        stop = stop.relayed_by(self._hop).with_grace(grace_ms)
        self._stop = stop
        self.state = SessionState.STOPPING
        self._stop_sent_at = now
        self._grace_deadline = now + grace_ms / 1000
        signal = wire.stop_to_wire(stop)
        self.journal.append("stop", signal)
        self.journal.append("state_change", state_change(SessionState.STOPPING, stop.describe()))
        actions: list[Action] = [Send(wire.pb.DownstreamPacket(stop=signal))]
        if self._running:
            actions.append(CancelTools(f"session stopping: {stop.code.name}"))
            self._forget_running()
        actions.extend(self._ack())
        if self._upstream_closed:  # nobody left to confirm
            actions.extend(self._end_stop(confirmed=False, how="commander had already half-closed", now=now))
        return actions

    def _stop_outcome(self, *, confirmed: bool, how: str, now: float | None = None, halt_us: int = 0) -> SessionOutcome:
        stop = self._stop
        assert stop is not None
        state = SessionState.EXPIRED if stop.code is StopCode.IDLE_TIMEOUT else SessionState.STOPPED
        return SessionOutcome(
            state,
            f"{stop.reason} ({how})",
            stop.path[0] if stop.path else self._hop,
            status=STOP_STATUS_NAME[stop.code],
            error_code=stop.code.name,
            stop=stop,
            stop_confirmed=confirmed,
            stop_to_confirm_ms=(now - self._stop_sent_at) * 1000 if (confirmed and now is not None) else None,
            halt_us=halt_us,
        )

    def _end_stop(
        self, *, confirmed: bool, how: str, now: float, confirm: wire.pb.StopConfirm | None = None
    ) -> list[Action]:
        self._set_outcome(
            self._stop_outcome(confirmed=confirmed, how=how, now=now, halt_us=confirm.halt_us if confirm else 0)
        )
        self._grace_deadline = None
        actions: list[Action] = []
        if confirmed:
            actions.extend(self._ack())
        actions.extend(self._end())
        return actions

    def _finish(self, reason: str, now: float) -> list[Action]:
        self._set_outcome(SessionOutcome(SessionState.FINISHED, reason, "commander"))
        actions: list[Action] = list(self._ack())
        actions.extend(self._after_terminal(now))
        self._recompute_wake(now)
        return actions

    def _after_terminal(self, now: float) -> list[Action]:
        """Finished or failed by the commander: end once tools are done and upstream is closed."""
        if self._ended or self._running:
            return []
        if self._upstream_closed:
            return self._end()
        if self._linger_deadline is None:
            self._linger_deadline = now + self._config.finish_linger_ms / 1000
        return []

    def _fail(self, fatal: _Fatal, now: float) -> list[Action]:
        if self.outcome is None:
            self._set_outcome(
                SessionOutcome(
                    SessionState.FAILED, fatal.message, "dispatcher", status=fatal.status, error_code=fatal.code
                )
            )
        actions: list[Action] = [Report(fatal.code, fatal.message, self.last_seq)]
        if self._running:
            actions.append(CancelTools(f"session failed: {fatal.code}"))
            self._forget_running()
        actions.extend(self._end())
        return actions

    def _end(self) -> list[Action]:
        if self._ended:
            return []
        self._ended = True
        self._linger_deadline = None
        self.wake_at = None
        assert self.outcome is not None
        return [EndStream(self.outcome)]

    def _set_outcome(self, outcome: SessionOutcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.state = outcome.state
            self.journal.append("state_change", state_change(outcome.state, outcome.reason, outcome))

    def _forget_running(self) -> None:
        self._running.clear()
        self.tool_calls_started.clear()
        if self._ordered:
            self._ordered.clear()
        self._ordered_done.clear()

    def _idle_deadline(self) -> float | None:
        if not self._idle_s or self._running:
            return None
        return self._last_activity + self._idle_s

    def _recompute_wake(self, now: float) -> None:
        candidates: list[float] = []
        if self._ack_due is not None:
            candidates.append(self._ack_due)
        if not self.is_closed:
            if self._wall_deadline is not None:
                candidates.append(self._wall_deadline)
            if self._caller_deadline is not None:
                candidates.append(self._caller_deadline)
            idle = self._idle_deadline()
            if idle is not None:
                candidates.append(idle)
        if self.state is SessionState.STOPPING and self._grace_deadline is not None:
            candidates.append(self._grace_deadline)
        if self._linger_deadline is not None and not self._ended:
            candidates.append(self._linger_deadline)
        self.wake_at = min(candidates) if candidates and not self._ended else None
