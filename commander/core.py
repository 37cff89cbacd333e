"""The commander's side of one session as a state machine: sans-IO, no grpc, no anyio, no clock.

`run_session` (commander/session.py) feeds it what happens: downstream packets, the stream's
end, the handshake timeout, a cancel request, the agent's tool calls and the agent's end. It
carries out the actions returned. Every protocol decision of the commander is made here:
whether the dispatcher answered the Hello (native protocol) or speaks the original contract
(compatibility mode) or refused the stream, which call a tool result answers, what a stop
means for the agent and its pending calls, which packet ends the stream, and how the session
ended. So it is tested by feeding events and reading actions, with no network.

Times are arguments (`now`: seconds on one monotonic clock), never read here; status codes
are `grpc.StatusCode` names, so nothing here imports grpc.

Events fed by the reader task and the timers return only `Effect`s, which the shell carries
out at once (no waiting); only the agent's end leads to packets to send (`Action`). The
actions and the SessionResult are in commander/actions.py.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from commander import actions
from commander.events import HandshakeDone, Resumed, StopReceived, ToolResultReceived
from shared import wire
from shared.errors import AgentFailure, describe_exception
from shared.model import SessionState, StopCode, StopInfo

__all__ = ["CommanderSession", "Phase"]


_NONE: tuple[actions.Effect, ...] = ()


# -- the state machine ------------------------------------------------------------------------


class Phase(enum.Enum):
    """Where the session is; the stream's end is a separate fact (`is_ended`)."""

    AWAITING_ASSIGNMENT = "AWAITING_ASSIGNMENT"  # a pool stream: Hello sent, no Assignment yet
    HANDSHAKE = "HANDSHAKE"  # Hello sent, no answer yet
    RUNNING = "RUNNING"  # answered (native or compatibility mode): the agent's turn
    CLOSED = "CLOSED"  # the agent is done and the final packet decided
    REFUSED = "REFUSED"  # the stream ended before any answer: no agent, nothing to send


@dataclass(slots=True)
class _Call:
    """A tool call the agent sent that has no answer yet."""

    call_id: str
    tool_name: str
    abandoned: bool = False  # compatibility mode: the agent gave up; its late result is dropped
    result_after_stop: bool = False


@dataclass(frozen=True, slots=True)
class _End:
    code: str
    details: str
    trailers: dict[str, str]
    initial_metadata: dict[str, str]


_NOT_ENDED = _End("UNKNOWN", "stream did not end", {}, {})


class CommanderSession:
    """The protocol rules of one ChatStream call, commander side (see the proto's comments)."""

    def __init__(
        self,
        *,
        session_id: str,
        prompt: str,
        agent_name: str,
        agent_version: str,
        now: float,
        await_assignment: bool = False,
        tools: Sequence[str] = (),
        resume: bool = False,
    ) -> None:
        self.session_id = session_id
        self.prompt = prompt
        self.phase = Phase.AWAITING_ASSIGNMENT if await_assignment else Phase.HANDSHAKE
        self.compat_mode = False
        self.welcome: wire.pb.Welcome | None = None
        self.assignment: wire.pb.Assignment | None = None
        self.stop: StopInfo | None = None
        self.cancel_reason: str | None = None  # this side's cancel, when it was taken
        self.tool_calls = 0
        self._hello = wire.pb.Hello(
            session_id=session_id,
            agent_name=agent_name,
            agent_version=agent_version,
            features=[*wire.FEATURES, "resume"] if resume else list(wire.FEATURES),
            awaits_assignment=await_assignment,
            tools=list(tools),
        )
        self._resume = resume
        self.last_downstream_seq = 0  # the newest numbered downstream packet processed
        self.resumes = 0
        self.duplicates = 0  # downstream packets re-sent after a resume that were already processed
        self._started_at = now
        self._agent_running = False
        self._calls: dict[str, _Call] = {}  # in the order they were sent: compatibility mode matches by it
        self._stop_received_at: float | None = None
        self._halted_at: float | None = None
        self._pending_at_stop: tuple[actions.PendingAtStop, ...] = ()
        self._discarded = 0
        self._agent_error: str | None = None
        self._agent_error_code = ""
        self._model_closed_at: float | None = None  # a model request closed because of the stop
        self.usage = actions.UsageTotals()
        self._acked_seq = 0
        self._errors: list[str] = []
        self._end: _End | None = None

    # -- queries --------------------------------------------------------------------------

    @property
    def limits(self) -> wire.pb.SessionLimits | None:
        return self.welcome.limits if self.welcome is not None else None

    @property
    def resumable(self) -> bool:
        """The dispatcher holds this session for a resume when the stream breaks (its Welcome says)."""
        welcome = self.welcome
        return (
            self._resume
            and not self.compat_mode
            and welcome is not None
            and "resume" in welcome.features
            and welcome.resume_window_s > 0
        )

    def resume_hello(self, last_upstream_seq: int) -> wire.pb.UpstreamPacket:
        """The first packet of a resumed stream: this session, and what this side has."""
        hello = wire.pb.Hello()
        hello.CopyFrom(self._hello)
        hello.session_id = self.session_id
        hello.awaits_assignment = False
        hello.resume.last_downstream_seq = self.last_downstream_seq
        hello.resume.last_upstream_seq = last_upstream_seq
        return wire.pb.UpstreamPacket(hello=hello)

    @property
    def is_ended(self) -> bool:
        """True once the stream's end was fed in."""
        return self._end is not None

    # -- events ---------------------------------------------------------------------------

    def start(self) -> Sequence[actions.Action]:
        """The call is open: the Hello goes first."""
        return (actions.Send(wire.pb.UpstreamPacket(hello=self._hello)),)

    def on_downstream(self, packet: wire.pb.DownstreamPacket, now: float) -> Sequence[actions.Effect]:
        seq = packet.seq
        if seq:
            if seq <= self.last_downstream_seq:  # re-sent after a resume, already processed
                self.duplicates += 1
                return _NONE
            self.last_downstream_seq = seq
        kind = packet.WhichOneof("signal")
        if self.phase is Phase.AWAITING_ASSIGNMENT:
            if kind != "assignment":  # the contract: always a pool stream's first packet
                return (
                    actions.Report("pool.not_assigned", kind or "none", "a pool stream must start with an Assignment"),
                    actions.CancelCall("the dispatcher does not run this stream as a pool stream"),
                )
            self.assignment = packet.assignment
            self.session_id = packet.assignment.session_id
            self.prompt = packet.assignment.input_text or packet.assignment.input_json
            self.phase = Phase.HANDSHAKE
            return (actions.Assigned(packet.assignment),)
        effects: list[actions.Effect] = []
        if self.phase is Phase.HANDSHAKE:
            if kind == "welcome":
                self.welcome = packet.welcome
                return self._handshake_done()
            # An original-contract dispatcher ignores the Hello and answers the agent's packets.
            self.compat_mode = True
            effects.extend(self._handshake_done())
        if kind == "ack":
            self._acked_seq = packet.ack.seq
        elif kind == "welcome" and packet.welcome.resumed:
            self.resumes += 1
            self._acked_seq = max(self._acked_seq, packet.welcome.last_upstream_seq)
            effects.append(actions.Notify(Resumed(self.session_id, packet.welcome.last_upstream_seq, self.resumes)))
        elif kind == "tool_result":
            effects.extend(self._on_tool_result(packet.tool_result))
        elif kind == "stop":
            effects.extend(self._on_stop(wire.stop_from_wire(packet.stop), now))
        elif kind == "error":
            error = packet.error
            self._errors.append(f"{error.code}: {error.message}")
            effects.append(actions.Report("dispatcher.error_packet", error.code, error.message, error.seq))
        return effects

    def on_handshake_timeout(self) -> Sequence[actions.Effect]:
        """No answer to the Hello in time: an original-contract dispatcher says nothing until spoken to."""
        if self.phase is not Phase.HANDSHAKE:
            return _NONE
        self.compat_mode = True
        return self._handshake_done()

    def on_stream_end(
        self, code: str, details: str, trailers: Mapping[str, str], initial_metadata: Mapping[str, str]
    ) -> Sequence[actions.Effect]:
        """The call ended with status `code` (a grpc.StatusCode name)."""
        self._end = _End(code, details, dict(trailers), dict(initial_metadata))
        if self.phase in (Phase.AWAITING_ASSIGNMENT, Phase.HANDSHAKE):
            # Refused before any answer: nothing says which contract the dispatcher speaks.
            self.phase = Phase.REFUSED
            self.compat_mode = False
            return _NONE
        if self._agent_running:  # nobody left to talk to
            return (actions.CancelAgent("the stream ended"),)
        return _NONE

    def on_cancel_requested(self, reason: str) -> Sequence[actions.Effect]:
        """This side ends the session (the user's Ctrl-C, the caller): the dispatcher is told `reason`.

        A stop already received wins (it is confirmed instead); once the final packet is decided
        there is nothing left to cancel.
        """
        if self.stop is not None or self.cancel_reason is not None:
            return _NONE
        if self.phase in (Phase.CLOSED, Phase.REFUSED):
            return _NONE
        self.cancel_reason = reason
        if self.phase is Phase.AWAITING_ASSIGNMENT:
            return (actions.CancelCall("leaving the pool"),)  # no session yet: nobody to tell in-band
        if self._agent_running:
            return (actions.CancelAgent(reason),)
        return _NONE  # the agent will not start; its end sends the ErrorSignal

    def start_agent(self) -> bool:
        """The shell is about to run the agent: True when it should (the handshake is settled and
        no stop, cancel or end came first). Either way `on_agent_returned` follows."""
        if self.phase is not Phase.RUNNING or self._agent_running:
            return False
        if self.stop is not None or self.cancel_reason is not None or self.is_ended:
            return False
        self._agent_running = True
        return True

    def on_tool_call_sent(self, call_id: str, tool_name: str) -> None:
        """The agent queues a call: from now on a result may answer it. Call before queueing."""
        if call_id in self._calls:
            raise ValueError(f"call id {call_id!r} is already pending")
        self._calls[call_id] = _Call(call_id, tool_name)
        self.tool_calls += 1

    def on_tool_call_given_up(self, call_id: str) -> None:
        """The agent stopped waiting for `call_id` without its result (its timeout, cancellation)."""
        call = self._calls.get(call_id)
        if call is None:
            return  # answered already
        if self.compat_mode:
            # Results without call ids are matched by order: the slot stays so that the late
            # result is consumed by it instead of being handed to the next call.
            call.abandoned = True
        elif self.stop is None:
            del self._calls[call_id]
        # else: after a stop the call stays: its fate goes into the StopConfirm.

    def on_model_request_closed(self, now: float) -> None:
        """The agent closed a model request (its HTTP response and connection). After a stop
        the first such close is the stop's effect on the model: stop -> abort is measured."""
        if self._stop_received_at is not None and self._model_closed_at is None:
            self._model_closed_at = now

    def on_usage(self, usage: wire.pb.Usage) -> bool:
        """The agent reports one model request's usage: True when it goes upstream (the
        original contract has no Usage packet; it is only counted here then)."""
        self.usage = self.usage.plus(usage)
        return not self.compat_mode

    def on_agent_returned(self, now: float) -> Sequence[actions.Action]:
        """The agent's task is over: it returned, or was cancelled by a CancelAgent (or never started)."""
        return self._agent_done(now, None)

    def on_agent_failed(self, exc: BaseException, now: float) -> Sequence[actions.Action]:
        """The agent raised `exc`: its own failure, reported upstream."""
        return self._agent_done(now, exc)

    def on_queue_discarded(self, count: int) -> Sequence[actions.Action]:
        """The answer to DiscardQueued: `count` agent packets were dropped unsent."""
        stop, halt_s = self.stop, self._halt_s()
        if stop is None or halt_s is None:
            raise RuntimeError("on_queue_discarded without a stop: DiscardQueued comes only after one")
        self._discarded = count
        if self.compat_mode:
            return (actions.CloseUpstream(),)  # the original contract has no StopConfirm
        confirm = wire.pb.StopConfirm(
            stop_id=stop.stop_id,
            halt_us=round(halt_s * 1_000_000),  # not int(): 12.5 ms is 12499.99... us in floats
            discarded_packets=count,
            pending_tool_calls=[
                wire.pb.PendingToolCall(
                    call_id=p.call_id,
                    tool_name=p.tool_name,
                    fate=wire.tool_call_fate_to_wire(p.fate),
                )
                for p in self._pending_at_stop
            ],
        )
        return (actions.Send(wire.pb.UpstreamPacket(stop_confirm=confirm)), actions.CloseUpstream())

    def on_end_timeout(self) -> Sequence[actions.Effect]:
        """The stream did not end in time after the final packet."""
        if self.is_ended:
            return _NONE
        return (actions.CancelCall("the dispatcher did not end the stream"),)

    def result(self, *, now: float, packets_sent: int) -> actions.SessionResult:
        """How the session ended: from everything fed in, the stream's status and its trailers."""
        end = self._end or _NOT_ENDED
        stop = self.stop
        if stop is None and end.trailers.get(wire.MetadataKey.STOP_CODE):
            stop = _stop_from_trailers(end.trailers)  # the stream ended with a stop we never read
        state, reason = self._outcome(end, stop)
        stop_to_confirm = end.trailers.get(wire.MetadataKey.STOP_TO_CONFIRM_MS) if stop is not None else None
        halt_s = self._halt_s()
        if self.welcome is not None:
            dispatcher_id = self.welcome.dispatcher_id
        else:
            dispatcher_id = end.initial_metadata.get(wire.MetadataKey.DISPATCHER_ID, "")
        return actions.SessionResult(
            session_id=self.session_id,
            state=state,
            reason=reason,
            status_code=end.code,
            status_details=end.details,
            compat_mode=self.compat_mode,
            dispatcher_id=dispatcher_id,
            stop=stop,
            stop_to_halt_ms=halt_s * 1000 if halt_s is not None else None,
            stop_to_abort_ms=self._abort_ms(),
            stop_to_confirm_ms=float(stop_to_confirm) if stop_to_confirm else None,
            pending_at_stop=self._pending_at_stop,
            discarded_packets=self._discarded,
            packets_sent=packets_sent,
            last_acked_seq=self._acked_seq,
            tool_calls=self.tool_calls,
            duration_s=now - self._started_at,
            errors=tuple(self._errors),
            trailers=dict(end.trailers),
            assigned=self.assignment,
            error_code=self._agent_error_code,
            usage=self.usage,
            resumes=self.resumes,
        )

    # -- helpers --------------------------------------------------------------------------

    def _abort_ms(self) -> float | None:
        """Stop received -> the model request it interrupted closed (None when none was open)."""
        if self._stop_received_at is None or self._model_closed_at is None:
            return None
        return (self._model_closed_at - self._stop_received_at) * 1000

    def _halt_s(self) -> float | None:
        """Stop received -> agent unwound (None unless a stop came while the agent still had its turn)."""
        if self._stop_received_at is None or self._halted_at is None:
            return None
        return self._halted_at - self._stop_received_at

    def _handshake_done(self) -> Sequence[actions.Effect]:
        self.phase = Phase.RUNNING
        dispatcher_id = self.welcome.dispatcher_id if self.welcome is not None else ""
        return (actions.Notify(HandshakeDone(self.session_id, dispatcher_id, self.compat_mode)),)

    def _on_tool_result(self, result: wire.pb.ToolCallResult) -> Sequence[actions.Effect]:
        if result.call_id:
            call = self._calls.get(result.call_id)
        else:  # no call id (the original contract): the oldest call still waiting for one
            call = next((c for c in self._calls.values() if not c.result_after_stop), None)
        effects: list[actions.Effect] = []
        if call is not None:
            if self.stop is not None:
                call.result_after_stop = True  # the agent is gone: the result is not used
            else:
                del self._calls[call.call_id]
                if not call.abandoned:
                    effects.append(actions.Deliver(call.call_id, result))
        error_code = wire.tool_error_code_name(result.error.code) if result.HasField("error") else ""
        event = ToolResultReceived(
            call_id=call.call_id if call is not None else result.call_id,
            tool_name=result.tool_name,
            result_json=result.result_json,
            error_code=error_code,
            error_message=result.error.message,
            execution_time_us=result.execution_time_us,
        )
        effects.append(actions.Notify(event))
        return effects

    def _on_stop(self, stop: StopInfo, now: float) -> Sequence[actions.Effect]:
        if self.stop is not None:
            return _NONE  # the first stop wins
        self.stop = stop
        self._stop_received_at = now
        return (actions.Notify(StopReceived(stop)), actions.CancelAgent(f"stopped: {stop.describe()}", stop))

    def _agent_done(self, now: float, exc: BaseException | None) -> Sequence[actions.Action]:
        if self.phase is not Phase.RUNNING:
            return ()
        self._agent_running = False
        self.phase = Phase.CLOSED
        if self._stop_received_at is not None:
            self._halted_at = now
        if isinstance(exc, AgentFailure):  # a failure with a name (MODEL_UNAUTHORIZED...)
            self._agent_error_code = exc.code
            self._agent_error = exc.message
        elif exc is not None:
            self._agent_error_code = "AGENT_ERROR"
            self._agent_error = describe_exception(exc)
        if self.is_ended:
            return (actions.CloseUpstream(),)  # the stream is over: nothing more to say
        if self.stop is not None:
            self._pending_at_stop = tuple(
                actions.PendingAtStop(c.call_id, c.tool_name, "RESULT_IGNORED" if c.result_after_stop else "ABANDONED")
                for c in self._calls.values()
            )
            return (actions.DiscardQueued(),)  # never sent, never paid for; then the StopConfirm
        if self.cancel_reason is not None:
            final = wire.pb.UpstreamPacket(error=wire.pb.ErrorSignal(code="CANCELLED", message=self.cancel_reason))
        elif self._agent_error is not None:
            error = wire.pb.ErrorSignal(code=self._agent_error_code, message=self._agent_error)
            final = wire.pb.UpstreamPacket(error=error)
        else:
            final = wire.pb.UpstreamPacket(content=wire.pb.ContentChunk(is_finish=True))
        return (actions.Send(final), actions.CloseUpstream())

    def _outcome(self, end: _End, stop: StopInfo | None) -> tuple[SessionState, str]:
        if stop is not None:
            state = SessionState.EXPIRED if stop.code is StopCode.IDLE_TIMEOUT else SessionState.STOPPED
            return state, stop.describe()
        if self.cancel_reason is not None:
            return SessionState.CANCELLED, self.cancel_reason
        if end.code == "OK":
            if self._agent_error is not None:
                named = "" if self._agent_error_code == "AGENT_ERROR" else f"{self._agent_error_code}: "
                return SessionState.FAILED, f"agent failed: {named}{self._agent_error}"
            return SessionState.FINISHED, "finished"
        state = SessionState.CANCELLED if end.code == "CANCELLED" else SessionState.FAILED
        return state, f"{end.code}: {end.details}"


def _stop_from_trailers(trailers: Mapping[str, str]) -> StopInfo:
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
