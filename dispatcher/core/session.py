"""One session's protocol state machine: sans-IO, no grpc, no event loop (its actions: actions.py).

The runner feeds it events (`on_packet`, `on_tool_done`, `on_timer`, `request_stop`,
`on_upstream_eof`, `on_upstream_closed`, `on_peer_gone`, `on_upstream_failed`) and carries out
the actions it returns (`Send`, `StartTool`, `CancelTools`, `Report`, `EndStream`). Every
decision about acks, stops, policies, terminal states and the delivery class of each
downstream packet is made here, so it is tested by feeding packets and reading actions.

Hot path: a content or thought packet costs a few attribute updates, the policy scan
of its text, and returns the shared empty tuple unless an Ack is due.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dispatcher.config import SessionConfig
from dispatcher.core.actions import Action, CancelTools, Delivery, EndStream, Report, Send, SessionOutcome, StartTool
from dispatcher.core.journal import Journal
from dispatcher.core.outcomes import (
    CONFIRMED,
    FINISHED,
    GRACE_EXPIRED,
    HALF_CLOSED_UNCONFIRMED,
    HALF_CLOSED_UNFINISHED,
    closed_packet_code,
    commander_error_outcome,
    stop_outcome,
)
from dispatcher.core.policies import Policy, Violation
from dispatcher.core.snapshots import state_change
from dispatcher.core.status import status_of
from dispatcher.core.time_limits import TimeLimits, ack_interval_s, checked_seq
from dispatcher.core.tool_calls import ToolCallBook
from shared import wire
from shared.errors import ProtocolViolation
from shared.model import SessionState, StopInfo, now_ms

if TYPE_CHECKING:
    from dispatcher.tools.catalog import ToolCatalog

__all__ = ["Action", "CancelTools", "Delivery", "EndStream", "Report", "Send", "Session", "SessionOutcome", "StartTool"]


_NO_ACTIONS: tuple[Action, ...] = ()
_RESULTS_KEPT = 1024  # results a resumable session keeps by call id for repeated calls


class Session:
    """The protocol rules of one ChatStream call (see the proto's comments)."""

    # Slots: ten thousand idle sessions each save the ~1.2 KiB a per-instance dict costs.
    __slots__ = (
        "_ack_due", "_ack_every", "_ack_interval_s", "_allowed", "_catalog", "_config", "_detach_deadline",
        "_detached_reason", "_ended", "_grace_deadline", "_hop", "_last_activity", "_limits", "_linger_deadline",
        "_policy", "_received", "_reported", "_results", "_sequenced", "_started_at", "_state_before_detach", "_stop",
        "_stop_detail", "_stop_sent_at", "_time_limits", "_unacked", "_upstream_closed",
        "detached_at_ms", "dispatcher_hop", "dropped_packets", "duplicates", "hello", "journal", "last_seq", "outcome",
        "packets_in", "resumable", "resumes", "session_id", "started_at_ms", "state", "tools", "usage", "wake_at",
    )  # fmt: skip

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
        catalog: ToolCatalog | None = None,
        allowed_tools: frozenset[str] | None = None,
        opened: bool = True,
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
        if opened:  # False: a session adopted from a store, whose journal has its history
            self.journal.append("state_change", state_change(SessionState.OPEN, "stream opened"))
        self.tools = ToolCallBook()
        self.wake_at: float | None = None  # when on_timer wants to run next (monotonic seconds)
        self.packets_in: dict[str, int] = {}
        self.dropped_packets = 0
        self.last_seq = 0
        self.hello: wire.pb.Hello | None = None
        self.usage: wire.ctl.SessionUsage | None = None  # the commander's Usage packets, summed (from the first)

        self.dispatcher_hop = dispatcher_hop
        self._hop = dispatcher_hop
        self._config = config
        self._policy = policy.tracker()
        self._limits = limits
        self._sequenced = False
        self._received = 0
        self._unacked = 0
        self._ack_every = config.ack_every_packets
        self._ack_interval_s = ack_interval_s(session_id, config.ack_interval_ms)
        self._ack_due: float | None = None
        self._last_activity = now
        self._time_limits = TimeLimits(policy.config, now)
        self._stop: StopInfo | None = None
        self._stop_detail = ""  # what the stop's origin told operators only (e.g. the pattern)
        self._stop_sent_at = 0.0
        self._grace_deadline: float | None = None
        self._linger_deadline: float | None = None
        self._upstream_closed = False
        self._ended = False
        self._reported: set[str] = set()
        # The tools served (for the Welcome) and the subset this session may call (None: all).
        self._catalog = catalog
        self._allowed = allowed_tools
        # Fault survival: a session whose Hello listed "resume" (and a window > 0) outlives its
        # stream: DETACHED until its commander resumes it or the window passes.
        self.resumable = False
        self.resumes = 0
        self.duplicates = 0  # re-sent upstream packets after a resume that were already held
        self.detached_at_ms = 0
        self._detach_deadline: float | None = None
        self._detached_reason = ""
        self._state_before_detach = SessionState.OPEN
        # call_id -> its result, for a repeated call id (resumable sessions; newest kept)
        self._results: dict[str, wire.pb.ToolCallResult] | None = None
        self._recompute_wake(now)

    # -- properties ---------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """True once a stop was decided or the session reached a terminal state."""
        return self._stop is not None or self.outcome is not None

    @property
    def is_detached(self) -> bool:
        return self.state is SessionState.DETACHED

    @property
    def resume_window_s(self) -> float:
        return self._config.resume_window_s

    @property
    def running_tool_calls(self) -> list[str]:
        return self.tools.running()

    @property
    def is_ended(self) -> bool:
        """True once EndStream was emitted: the servicer stops reading."""
        return self._ended

    @property
    def stop_grace_s(self) -> float:
        return self._config.stop_grace_ms / 1000

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
            elif seq and self.resumes:  # re-sent after a resume, but already held: once only
                self.duplicates += 1
                return _NO_ACTIONS
            else:
                seq = self._take_seq(seq)
            named = packet.session_id
            if named and named != self.session_id:
                raise ProtocolViolation(
                    f"packet seq {seq} names session {named!r} but this stream is session {self.session_id!r}",
                    "SESSION_MISMATCH",
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
            if kind == "usage":
                return self._on_usage(packet.usage, now)
            if kind == "stop_confirm":
                return self._reject("UNEXPECTED_STOP_CONFIRM", f"stop_confirm at seq {seq} but no stop was sent", seq)
            return self._reject(
                "MISSING_PAYLOAD",
                f"packet seq {seq} has no payload (empty oneof, or a member this dispatcher does not know)",
                seq,
            )
        except ProtocolViolation as violation:
            return self._fail(violation.code, str(violation), status_of(violation) or "INVALID_ARGUMENT")

    def on_tool_done(self, call_id: str, result: wire.pb.ToolCallResult, now: float) -> Sequence[Action]:
        """A call's result. It is journaled when it is written downstream (by the runner), or
        here as dropped when its call was cancelled meanwhile: the journal never shows a
        result the commander did not get."""
        released = self.tools.finish(call_id, result)
        if released is None:  # cancelled by a stop or the session's end: never sent
            self.journal.append("tool_result_dropped", result)
            return _NO_ACTIONS
        self._last_activity = now
        if not self.tools.has_running:
            if self.state is SessionState.AWAITING_TOOL:
                self.state = SessionState.ACTIVE
            elif self.state is SessionState.DETACHED and self._state_before_detach is SessionState.AWAITING_TOOL:
                self._state_before_detach = SessionState.ACTIVE
        if self.resumable:
            self._remember_results(released)
        actions: list[Action] = [Send(wire.pb.DownstreamPacket(tool_result=done)) for done in released]
        if not self.tools.has_running:
            if self.outcome is not None:
                actions.extend(self._after_terminal(now))
            elif self._upstream_closed:
                actions.extend(self._finish(HALF_CLOSED_UNFINISHED, now))
        self._recompute_wake(now)
        return actions

    def on_timer(self, now: float) -> Sequence[Action]:
        actions: list[Action] = []
        if self._ack_due is not None and now >= self._ack_due:
            actions.extend(self._ack())
        if not self.is_closed:
            stop = self._time_limits.due(now, self._last_activity, self.tools.has_running)
            if stop is not None:
                actions.extend(self._stop_now(stop, now))
        if self._stop is not None and self.outcome is None and self._grace_deadline is not None:
            if now >= self._grace_deadline:  # STOPPING, or DETACHED after the stop went out
                actions.extend(self._end_stop(confirmed=False, how=GRACE_EXPIRED, now=now))
        if self._linger_deadline is not None and now >= self._linger_deadline and not self._ended:
            actions.extend(self._end())
        if self._detach_deadline is not None and now >= self._detach_deadline and not self._ended:
            actions.extend(self._not_resumed(now))
        self._recompute_wake(now)
        return actions

    def on_detached(self, reason: str, now: float) -> bool:
        """The stream broke without a half-close (`reason`). A resumable session is held
        DETACHED for the resume window (True); any other is not (False: the runner ends it
        with `on_peer_gone`)."""
        if not self.resumable or self._ended or self.outcome is not None or self._config.resume_window_s <= 0:
            return False  # an outcome already decided (finished, lingering for the half-close) stands
        if self.state is SessionState.DETACHED:
            return True
        self._state_before_detach = self.state
        self.state = SessionState.DETACHED
        self.detached_at_ms = now_ms()
        self._detached_reason = reason
        window = self._config.resume_window_s
        self._detach_deadline = now + window
        self._upstream_closed = False  # a new stream may send again
        self.journal.append(
            "state_change", state_change(SessionState.DETACHED, f"stream lost ({reason}); held {window:g}s for resume")
        )
        self._recompute_wake(now)
        return True

    def adopt(
        self,
        *,
        hello: wire.pb.Hello,
        info: wire.ctl.SessionInfo,
        last_seq: int,
        results: dict[str, wire.pb.ToolCallResult],
        now: float,
        reason: str,
    ) -> list[wire.pb.ToolCallResult]:
        """Take over a session an earlier process held (its store's records) and hold it
        DETACHED for its commander's resume. `results`: the answered calls by id (never run
        again); the calls the journal shows started and never answered died with that process:
        their answers (CANCELLED, "not run again") are returned, to be sent on resume."""
        self.hello = hello
        self.resumable = True
        self.last_seq = last_seq
        self._sequenced = True
        self._received = max(1, last_seq)
        self.started_at_ms = info.started_at_ms or self.started_at_ms
        self.packets_in = dict(info.packets_in)
        self.dropped_packets = info.packets_dropped
        if info.HasField("usage"):
            self.usage = wire.ctl.SessionUsage()
            self.usage.CopyFrom(info.usage)
        state = wire.session_state_from_wire(info.state)
        self.state = state if state in (SessionState.ACTIVE, SessionState.AWAITING_TOOL) else SessionState.OPEN
        interrupted = []
        started = {}
        for seq in range(self.journal.first_seq, self.journal.next_seq):
            entry = self.journal.entry(seq)
            if entry is not None and entry.kind == "tool_call":
                call = wire.pb.ToolCallRequest.FromString(entry.data)
                started[call.call_id] = call
        for call_id, call in started.items():
            self.tools.mark_seen(call_id)
            if call_id not in results:
                error = wire.pb.ToolError(
                    code=wire.pb.TOOL_ERROR_CODE_CANCELLED,
                    message="the call was running when the dispatcher restarted; it is not run again",
                )
                results[call_id] = wire.pb.ToolCallResult(tool_name=call.tool_name, call_id=call_id, error=error)
                interrupted.append(results[call_id])
        for call_id in results:
            self.tools.mark_seen(call_id)
        self._results = dict(results)
        if self.state is SessionState.AWAITING_TOOL:
            self.state = SessionState.ACTIVE
        self.on_detached(reason, now)
        return interrupted

    def on_resume(self, resume: wire.pb.Resume, now: float) -> wire.pb.DownstreamPacket:
        """The commander resumed the session on a new stream: the Welcome that answers it. The
        runner then re-sends the downstream packets after `resume.last_downstream_seq`."""
        if self.state is not SessionState.DETACHED:  # the old stream still looked alive: taken over
            self._state_before_detach = self.state
        self.state = self._state_before_detach
        self.resumes += 1
        self._detach_deadline = None
        self.detached_at_ms = 0
        self._last_activity = now
        if self._stop is not None and self._grace_deadline is None:  # stopped while detached: the grace starts now
            self._grace_deadline = now + self._config.stop_grace_ms / 1000
            self._stop_sent_at = now
        self.journal.append(
            "state_change",
            state_change(
                self.state,
                f"resumed (resume {self.resumes}): commander had downstream seq {resume.last_downstream_seq}, "
                f"sent upstream seq {resume.last_upstream_seq}; dispatcher holds upstream seq {self.last_seq}",
            ),
        )
        self._recompute_wake(now)
        return wire.pb.DownstreamPacket(welcome=self._welcome(resumed=True))

    def set_caller_deadline(self, deadline: float, caller_hop: str, now: float) -> None:
        """A StartSession caller's deadline (monotonic seconds): a TIMEOUT stop when it passes."""
        self._time_limits.set_caller_deadline(deadline, caller_hop)
        self._recompute_wake(now)

    def request_stop(self, stop: StopInfo, now: float) -> Sequence[Action]:
        """A stop from outside the packet stream (shutdown, operator, backend)."""
        if self.is_closed:
            return _NO_ACTIONS
        actions = self._stop_now(stop, now)
        self._recompute_wake(now)
        return actions

    def on_upstream_eof(self) -> Sequence[Action]:
        """Upstream ended, and the runner does not know yet whether the commander half-closed
        or grpc killed the call (both end the request iterator alike). An ack of everything
        received is due either way; the runner learns from its write whether the stream is
        still alive, then calls `on_upstream_closed` or `on_peer_gone`."""
        if self._ended:
            return _NO_ACTIONS
        return self._ack()

    def on_upstream_closed(self, now: float) -> Sequence[Action]:
        """The commander half-closed (no more packets will come)."""
        self._upstream_closed = True
        actions: list[Action] = []
        if self.state is SessionState.STOPPING:
            actions.extend(self._end_stop(confirmed=False, how=HALF_CLOSED_UNCONFIRMED, now=now))
        elif self.outcome is not None:
            actions.extend(self._after_terminal(now))
        elif not self.tools.has_running:
            actions.extend(self._finish(HALF_CLOSED_UNFINISHED, now))
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
        for held in self.tools.forget_running():
            self.journal.append("tool_result_dropped", held)
        self._ended = True
        assert self.outcome is not None
        return self.outcome

    def on_upstream_failed(self, status: str, details: str, now: float) -> Sequence[Action]:
        """Reading upstream failed with a status (INVALID_ARGUMENT for bytes that do not parse)."""
        code = "MALFORMED_PACKET" if status == "INVALID_ARGUMENT" else "UPSTREAM_FAILED"
        return self._fail(code, details, status)

    def on_crash(self, reference: str) -> Sequence[Action]:
        """The runner hit a bug of ours while carrying out this session (logged there, with
        `reference`): the session fails INTERNAL, and the peer reads only the reference."""
        return self._fail("INTERNAL", f"internal error (ref {reference})", "INTERNAL")

    # -- packet kinds -------------------------------------------------------------

    def _on_content(self, chunk: wire.pb.ContentChunk, now: float) -> Sequence[Action]:
        violation = self._policy.on_content(chunk.text)
        if violation is not None:
            return self._violated(violation, now)
        self.journal.append("content", chunk, self.last_seq)
        if chunk.is_finish:
            return self._finish(FINISHED, now)
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
        if self.tools.is_duplicate(call_id):
            if self.resumable:  # exactly once: the recorded result again, or the running call's own
                return self._repeated_call(call_id, seq)
            return self._reject(
                "DUPLICATE_CALL_ID",
                f"tool call at seq {seq} reuses call_id {call_id!r}; the call was not run",
                seq,
                call_id=call_id,
            )
        allowed = self._allowed
        self.tools.start(call_id, call.tool_name, ordered=ordered)
        if ordered:
            call = wire.pb.ToolCallRequest(
                tool_name=call.tool_name,
                arguments_json=call.arguments_json,
                call_id=call_id,
                timeout_ms=call.timeout_ms,
            )
        self.journal.append("tool_call", call, seq)
        self.state = SessionState.AWAITING_TOOL
        if allowed is not None and call.tool_name not in allowed:
            return [*self._ack(), *self.on_tool_done(call_id, self._not_enabled(call), now)]
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
        self.resumable = "resume" in hello.features and self._config.resume_window_s > 0
        actions: list[Action] = []
        catalog = self._catalog
        if catalog is not None:
            if hello.tools:
                unknown = catalog.unknown(hello.tools)
                if unknown:
                    message = f"hello names tools this dispatcher does not serve: {', '.join(unknown)}; ignored"
                    actions.extend(self._reject("UNKNOWN_TOOLS", message, seq))
                wanted = frozenset(hello.tools).difference(unknown)
                self._allowed = wanted if self._allowed is None else self._allowed & wanted
        actions.insert(0, Send(wire.pb.DownstreamPacket(welcome=self._welcome())))  # the Welcome first, always
        return actions

    def _welcome(self, *, resumed: bool = False) -> wire.pb.Welcome:
        window = self._config.resume_window_s
        features = [*wire.FEATURES, "resume"] if window > 0 else list(wire.FEATURES)
        welcome = wire.pb.Welcome(
            session_id=self.session_id,
            dispatcher_id=self._hop,
            features=features,
            limits=self._limits,
            resumed=resumed,
            last_upstream_seq=self.last_seq if resumed else 0,
            resume_window_s=math.ceil(window) if self.resumable else 0,
        )
        if self._catalog is not None:
            welcome.tools.extend(self._catalog.specs(self._allowed))
        return welcome

    def _repeated_call(self, call_id: str, seq: int) -> Sequence[Action]:
        """A call id this session already has: never run twice. Its recorded result goes out
        again; a call still running answers once, when it ends."""
        recorded = self._results.get(call_id) if self._results is not None else None
        if recorded is not None:
            return [*self._ack(), Send(wire.pb.DownstreamPacket(tool_result=recorded))]
        if call_id in self.tools.started:
            return self._ack()
        return self._reject(
            "DUPLICATE_CALL_ID",
            f"tool call at seq {seq} reuses call_id {call_id!r}, whose result is no longer held; the call was not run",
            seq,
            call_id=call_id,
        )

    def _remember_results(self, results: Sequence[wire.pb.ToolCallResult]) -> None:
        held = self._results
        if held is None:
            held = self._results = {}
        for result in results:
            held[result.call_id] = result
        while len(held) > _RESULTS_KEPT:
            del held[next(iter(held))]

    def _on_usage(self, usage: wire.pb.Usage, now: float) -> Sequence[Action]:
        """One model request's tokens: summed, journaled, and checked against the token budgets."""
        total = self.usage
        if total is None:
            total = self.usage = wire.ctl.SessionUsage()
        total.prompt_tokens += usage.prompt_tokens
        total.completion_tokens += usage.completion_tokens
        total.reasoning_tokens += usage.reasoning_tokens
        total.total_tokens = total.prompt_tokens + total.completion_tokens
        total.model_requests += 1
        if usage.model:
            total.model = usage.model
        total.estimated = total.estimated or usage.estimated
        self.journal.append("usage", usage, self.last_seq)
        violation = self._policy.on_usage(usage.prompt_tokens, usage.completion_tokens)
        if violation is not None:
            return self._violated(violation, now)
        return self._count_for_ack(now)

    def _not_enabled(self, call: wire.pb.ToolCallRequest) -> wire.pb.ToolCallResult:
        allowed = ", ".join(sorted(self._allowed or ())) or "none"
        error = wire.pb.ToolError(
            code=wire.pb.TOOL_ERROR_CODE_UNKNOWN_TOOL,
            message=f"tool {call.tool_name!r} is not enabled for this session (enabled: {allowed})",
        )
        return wire.pb.ToolCallResult(tool_name=call.tool_name, call_id=call.call_id, error=error)

    def _on_commander_error(self, error: wire.pb.ErrorSignal, now: float) -> Sequence[Action]:
        self.journal.append("error", error, self.last_seq)
        outcome = commander_error_outcome(error)
        self._set_outcome(outcome)
        actions: list[Action] = []
        if self.tools.has_running:
            actions.append(CancelTools(f"commander reported {outcome.error_code}"))
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
                return self._end_stop(confirmed=True, how=CONFIRMED, now=now, confirm=packet.stop_confirm)
            self.dropped_packets += 1  # in flight when the stop went out: counted, never forwarded
            return _NO_ACTIONS
        self.dropped_packets += 1
        seq = packet.seq or self.last_seq + 1
        message = f"packet seq {seq} arrived after the session ended ({self.state.value}); dropped"
        return self._reject(closed_packet_code(self.state), message, seq)

    # -- helpers ------------------------------------------------------------------

    def _take_seq(self, seq: int) -> int:
        seq, self._sequenced = checked_seq(seq, self.last_seq, self._sequenced)
        return seq

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
        return (Send(wire.pb.DownstreamPacket(ack=wire.pb.Ack(seq=self.last_seq)), Delivery.ACK),)

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
        self._stop_detail = violation.detail
        actions = self._stop_now(stop, now)
        self._recompute_wake(now)
        return actions

    def _stop_now(self, stop: StopInfo, now: float) -> list[Action]:
        grace_ms = self._config.stop_grace_ms
        stop = stop.relayed_by(self._hop).with_grace(grace_ms)
        self._stop = stop
        self._stop_sent_at = now
        if self.state is SessionState.DETACHED:  # delivered on resume; its grace starts then
            self._state_before_detach = SessionState.STOPPING
            self._grace_deadline = None
        else:
            self.state = SessionState.STOPPING
            self._grace_deadline = now + grace_ms / 1000
        signal = wire.stop_to_wire(stop)
        self.journal.append("stop", signal)
        self.journal.append("state_change", state_change(SessionState.STOPPING, stop.describe()))
        actions: list[Action] = [Send(wire.pb.DownstreamPacket(stop=signal), Delivery.URGENT)]
        if self.tools.has_running:
            actions.append(CancelTools(f"session stopping: {stop.code.name}"))
            self._forget_running()
        actions.extend(self._ack())
        if self._upstream_closed:  # nobody left to confirm
            actions.extend(self._end_stop(confirmed=False, how="commander had already half-closed", now=now))
        return actions

    def _stop_outcome(self, *, confirmed: bool, how: str, now: float | None = None, halt_us: int = 0) -> SessionOutcome:
        assert self._stop is not None
        return stop_outcome(
            self._stop,
            how=how,
            detail=self._stop_detail,
            ended_by_default=self._hop,
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

    def _not_resumed(self, now: float) -> list[Action]:
        """The resume window passed with no resume."""
        window = self._config.resume_window_s
        how = f"peer lost, not resumed within {window:g}s ({self._detached_reason})"
        if self._stop is not None:
            self._set_outcome(self._stop_outcome(confirmed=False, how=how, now=now))
        else:
            self._set_outcome(SessionOutcome(SessionState.CANCELLED, how, "peer", status="CANCELLED"))
        self._detach_deadline = None
        actions: list[Action] = []
        if self.tools.has_running:
            actions.append(CancelTools(f"session ended: {how}"))
            self._forget_running()
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
        if self._ended or self.tools.has_running:
            return []
        if self._upstream_closed:
            return self._end()
        if self._linger_deadline is None:
            self._linger_deadline = now + self._config.finish_linger_ms / 1000
        return []

    def _fail(self, code: str, message: str, status: str) -> list[Action]:
        if self.outcome is None:
            self._set_outcome(
                SessionOutcome(SessionState.FAILED, message, "dispatcher", status=status, error_code=code)
            )
        actions: list[Action] = [Report(code, message, self.last_seq)]
        if self.tools.has_running:
            actions.append(CancelTools(f"session failed: {code}"))
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
        for held in self.tools.forget_running():  # finished, but waiting behind an earlier call
            self.journal.append("tool_result_dropped", held)

    def _recompute_wake(self, now: float) -> None:
        candidates: list[float] = []
        if self._ack_due is not None:
            candidates.append(self._ack_due)
        if not self.is_closed:
            limit = self._time_limits.next_deadline(self._last_activity, self.tools.has_running)
            if limit is not None:
                candidates.append(limit)
        if self._stop is not None and self.outcome is None and self._grace_deadline is not None:
            candidates.append(self._grace_deadline)
        if self._linger_deadline is not None and not self._ended:
            candidates.append(self._linger_deadline)
        if self._detach_deadline is not None:
            candidates.append(self._detach_deadline)
        self.wake_at = min(candidates) if candidates and not self._ended else None
