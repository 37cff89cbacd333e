"""The sans-IO session state machine: feed events, read actions. Time is a float passed in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from dispatcher.config import PolicyConfig, SessionConfig
from dispatcher.core.policies import Policy
from dispatcher.core.session import (
    Action,
    CancelTools,
    EndStream,
    Report,
    Send,
    Session,
    SessionOutcome,
    StartTool,
    ack_interval_s,
)
from dispatcher.core.status import STOP_STATUS
from shared import wire
from shared.model import SessionState, StopCode, StopInfo

pytestmark = pytest.mark.timeout(10)

HOP = "dispatcher:test"


# -- helpers ----------------------------------------------------------------------------


def make_session(
    *,
    limits: wire.pb.SessionLimits | None = None,
    now: float = 0.0,
    session: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
) -> Session:
    """A session with short, explicit timers; wall-clock and idle limits off unless given."""
    session_fields: dict[str, Any] = {
        "stop_grace_ms": 1_000,
        "finish_linger_ms": 500,
        "ack_every_packets": 32,
        "ack_interval_ms": 250,
    }
    session_fields.update(session or {})
    policy_fields: dict[str, Any] = {"max_session_s": 0, "idle_timeout_s": 0}
    policy_fields.update(policy or {})
    return Session(
        session_id="s1",
        dispatcher_hop=HOP,
        config=SessionConfig(**session_fields),
        policy=Policy(PolicyConfig(**policy_fields)),
        limits=limits if limits is not None else wire.pb.SessionLimits(),
        now=now,
    )


def content(seq: int, text: str = "x", *, is_finish: bool = False, session_id: str = "") -> wire.pb.UpstreamPacket:
    return wire.pb.UpstreamPacket(
        seq=seq, session_id=session_id, content=wire.pb.ContentChunk(text=text, is_finish=is_finish)
    )


def thought(seq: int, delta: str = "hmm") -> wire.pb.UpstreamPacket:
    return wire.pb.UpstreamPacket(seq=seq, thought=wire.pb.ThoughtChain(step_name="plan", delta=delta))


def tool_call(
    seq: int, call_id: str = "", *, tool: str = "calc", args: str = "{}", timeout_ms: int = 0
) -> wire.pb.UpstreamPacket:
    request = wire.pb.ToolCallRequest(tool_name=tool, arguments_json=args, call_id=call_id, timeout_ms=timeout_ms)
    return wire.pb.UpstreamPacket(seq=seq, tool_call=request)


def hello(seq: int) -> wire.pb.UpstreamPacket:
    return wire.pb.UpstreamPacket(seq=seq, hello=wire.pb.Hello(agent_name="test-agent", features=["seq"]))


def stop_confirm(seq: int, stop_id: str = "", *, halt_us: int = 0) -> wire.pb.UpstreamPacket:
    return wire.pb.UpstreamPacket(seq=seq, stop_confirm=wire.pb.StopConfirm(stop_id=stop_id, halt_us=halt_us))


def result(call_id: str, payload: str = '{"ok": true}') -> wire.pb.ToolCallResult:
    return wire.pb.ToolCallResult(tool_name="calc", call_id=call_id, result_json=payload)


def operator_stop(code: StopCode = StopCode.OPERATOR) -> StopInfo:
    return StopInfo(code=code, reason="operator said so", cause="ticket=42", path=("operator:alice",))


def sent(actions: Sequence[Action], kind: str) -> list[Any]:
    """The payloads of the downstream packets of oneof `kind` (ack, stop, tool_result, welcome, error)."""
    return [getattr(a.packet, kind) for a in actions if isinstance(a, Send) and a.packet.WhichOneof("signal") == kind]


def of_type(actions: Sequence[Action], cls: type) -> list[Any]:
    return [a for a in actions if isinstance(a, cls)]


def ended(actions: Sequence[Action]) -> SessionOutcome:
    """The outcome of the one EndStream in `actions` (fails if there is none or several)."""
    ends = of_type(actions, EndStream)
    assert len(ends) == 1, f"expected exactly one EndStream, got {actions}"
    return ends[0].outcome


def no_end(actions: Sequence[Action]) -> None:
    assert not of_type(actions, EndStream), f"unexpected EndStream in {actions}"


def error_codes(actions: Sequence[Action]) -> list[str]:
    return [e.code for e in sent(actions, "error")]


def acks(actions: Sequence[Action]) -> list[int]:
    return [a.seq for a in sent(actions, "ack")]


# -- hello ------------------------------------------------------------------------------


def test_hello_first_gets_welcome_with_session_id_features_and_limits() -> None:
    limits = wire.pb.SessionLimits(max_content_chars=1234, max_tool_calls=7, stop_grace_ms=1_000, ack_every_packets=32)
    machine = make_session(limits=limits)
    actions = machine.on_packet(hello(1), 0.0)
    assert len(actions) == 1
    (welcome,) = sent(actions, "welcome")
    assert welcome.session_id == "s1"
    assert welcome.dispatcher_id == HOP
    assert list(welcome.features) == [*wire.FEATURES, "resume"]  # resume: the default window is on
    assert {"seq", "call_id", "stop_confirm"} <= set(welcome.features)
    assert welcome.limits == limits
    assert machine.hello is not None and machine.hello.agent_name == "test-agent"
    assert machine.outcome is None


def test_hello_not_first_is_a_non_fatal_error() -> None:
    machine = make_session()
    machine.on_packet(content(1), 0.0)
    actions = machine.on_packet(hello(2), 0.1)
    assert not sent(actions, "welcome")
    (error,) = sent(actions, "error")
    assert error.code == "HELLO_NOT_FIRST"
    assert error.seq == 2
    no_end(actions)
    assert machine.outcome is None
    assert machine.hello is None
    no_end(machine.on_packet(content(3), 0.2))
    assert machine.state is SessionState.ACTIVE


def test_second_hello_is_duplicate_hello() -> None:
    machine = make_session()
    machine.on_packet(hello(1), 0.0)
    actions = machine.on_packet(hello(2), 0.1)
    assert not sent(actions, "welcome")
    assert error_codes(actions) == ["DUPLICATE_HELLO"]
    assert sent(actions, "error")[0].seq == 2
    no_end(actions)
    assert machine.outcome is None


def test_report_only_for_first_occurrence_of_each_code() -> None:
    machine = make_session()
    first = machine.on_packet(wire.pb.UpstreamPacket(seq=1), 0.0)
    second = machine.on_packet(wire.pb.UpstreamPacket(seq=2), 0.1)
    other = machine.on_packet(hello(3), 0.2)
    other_again = machine.on_packet(hello(4), 0.3)
    assert [r.code for r in of_type(first, Report)] == ["MISSING_PAYLOAD"]
    assert of_type(first, Report)[0].seq == 1
    assert of_type(second, Report) == []
    assert error_codes(second) == ["MISSING_PAYLOAD"]  # the ErrorSignal still goes out every time
    assert [r.code for r in of_type(other, Report)] == ["HELLO_NOT_FIRST"]
    assert of_type(other_again, Report) == []
    assert error_codes(other_again) == ["HELLO_NOT_FIRST"]


# -- seq --------------------------------------------------------------------------------


def test_strictly_increasing_seq_with_gaps_is_accepted() -> None:
    machine = make_session()
    for seq in (1, 5, 100):
        no_end(machine.on_packet(content(seq), 0.0))
    assert machine.last_seq == 100
    actions = machine.on_packet(tool_call(250, "c1"), 0.0)
    assert acks(actions) == [250]
    assert machine.outcome is None


@pytest.mark.parametrize(("first", "second"), [(3, 3), (5, 2)], ids=["repeat", "regression"])
def test_seq_repeat_or_regression_ends_stream(first: int, second: int) -> None:
    machine = make_session()
    machine.on_packet(content(first), 0.0)
    actions = machine.on_packet(content(second), 0.1)
    outcome = ended(actions)
    assert outcome.state is SessionState.FAILED
    assert outcome.status == "INVALID_ARGUMENT"
    assert outcome.error_code == "SEQ_REGRESSION"
    assert f"seq {second} after seq {first}" in outcome.reason
    assert machine.state is SessionState.FAILED
    assert machine.is_ended
    assert [r.code for r in of_type(actions, Report)] == ["SEQ_REGRESSION"]


def test_sequenced_session_then_seq_zero_is_seq_missing() -> None:
    machine = make_session()
    machine.on_packet(content(1), 0.0)
    outcome = ended(machine.on_packet(content(0), 0.1))
    assert outcome.state is SessionState.FAILED
    assert outcome.status == "INVALID_ARGUMENT"
    assert outcome.error_code == "SEQ_MISSING"
    assert "after seq 1" in outcome.reason


def test_unsequenced_session_gets_implicit_seqs() -> None:
    machine = make_session(session={"ack_every_packets": 1})
    seen = [acks(machine.on_packet(content(0), float(i))) for i in range(3)]
    assert seen == [[1], [2], [3]]
    actions = machine.on_packet(tool_call(0), 4.0)
    assert of_type(actions, StartTool)[0].call_id == "seq-4"
    assert acks(actions) == [4]
    assert machine.outcome is None


# -- session id -------------------------------------------------------------------------


def test_session_id_mismatch_ends_stream() -> None:
    machine = make_session()
    outcome = ended(machine.on_packet(content(1, session_id="other"), 0.0))
    assert outcome.state is SessionState.FAILED
    assert outcome.status == "INVALID_ARGUMENT"
    assert outcome.error_code == "SESSION_MISMATCH"
    assert "'other'" in outcome.reason and "'s1'" in outcome.reason


@pytest.mark.parametrize("session_id", ["s1", ""], ids=["matching", "empty"])
def test_matching_or_empty_session_id_accepted(session_id: str) -> None:
    machine = make_session()
    actions = machine.on_packet(content(1, session_id=session_id), 0.0)
    no_end(actions)
    assert machine.outcome is None
    assert machine.state is SessionState.ACTIVE


# -- missing payload --------------------------------------------------------------------


def test_missing_payload_is_non_fatal() -> None:
    machine = make_session()
    actions = machine.on_packet(wire.pb.UpstreamPacket(seq=1), 0.0)
    (error,) = sent(actions, "error")
    assert error.code == "MISSING_PAYLOAD"
    assert error.seq == 1
    no_end(actions)
    assert machine.outcome is None
    assert machine.packets_in == {"none": 1}
    no_end(machine.on_packet(content(2), 0.1))
    assert machine.last_seq == 2


# -- acks -------------------------------------------------------------------------------


def test_ack_after_ack_every_packets_content_packets() -> None:
    machine = make_session(session={"ack_every_packets": 3})
    assert acks(machine.on_packet(content(2), 0.0)) == []
    assert acks(machine.on_packet(thought(4), 0.0)) == []
    assert acks(machine.on_packet(content(7), 0.0)) == [7]
    assert acks(machine.on_packet(content(8), 0.0)) == []
    assert acks(machine.on_packet(content(9), 0.0)) == []
    assert acks(machine.on_packet(content(10), 0.0)) == [10]


def test_ack_timer_after_first_unacked_packet() -> None:
    machine = make_session(session={"ack_every_packets": 32, "ack_interval_ms": 250})
    interval = ack_interval_s(machine.session_id, 250)
    assert machine.wake_at is None
    machine.on_packet(content(1), 10.0)
    assert machine.wake_at == pytest.approx(10.0 + interval)
    machine.on_packet(content(2), 10.1)
    assert machine.wake_at == pytest.approx(10.0 + interval)  # due time counts from the first unacked packet
    assert acks(machine.on_timer(10.0 + interval - 0.01)) == []
    assert acks(machine.on_timer(10.0 + interval)) == [2]
    assert machine.wake_at is None
    assert acks(machine.on_timer(11.0)) == []


def test_ack_intervals_are_spread_over_the_upper_half_by_session_id() -> None:
    intervals = [ack_interval_s(f"session-{n}", 1000) for n in range(200)]
    assert all(0.5 <= i <= 1.0 for i in intervals)  # never later than advertised
    assert max(intervals) - min(intervals) > 0.4  # sessions opened together do not ack together
    assert ack_interval_s("same", 1000) == ack_interval_s("same", 1000)  # deterministic


def test_ack_right_after_tool_call() -> None:
    machine = make_session()
    machine.on_packet(content(1), 0.0)
    actions = machine.on_packet(tool_call(2, "c1"), 0.1)
    # The ack goes first: an inline tool's result is ready as soon as StartTool is carried out.
    assert acks(actions[:1]) == [2] and isinstance(actions[1], StartTool)
    assert acks(machine.on_timer(1.0)) == []  # the pending ack was folded into that one


# -- tool calls -------------------------------------------------------------------------


def test_tool_call_starts_tool_with_timeout() -> None:
    machine = make_session()
    actions = machine.on_packet(tool_call(1, "c1", tool="calc", args='{"e": "1+1"}', timeout_ms=1500), 0.0)
    (start,) = of_type(actions, StartTool)
    assert start == StartTool(call_id="c1", tool_name="calc", arguments_json='{"e": "1+1"}', timeout_s=1.5)
    (start2,) = of_type(machine.on_packet(tool_call(2, "c2"), 0.0), StartTool)
    assert start2.timeout_s is None


def test_tool_call_state_awaiting_then_active_and_result_sent() -> None:
    machine = make_session()
    machine.on_packet(tool_call(1, "c1"), 0.0)
    assert machine.state is SessionState.AWAITING_TOOL
    assert machine.running_tool_calls == ["c1"]
    actions = machine.on_tool_done("c1", result("c1"), 0.5)
    assert [r.call_id for r in sent(actions, "tool_result")] == ["c1"]
    assert sent(actions, "tool_result")[0].result_json == '{"ok": true}'
    assert machine.state is SessionState.ACTIVE
    assert machine.running_tool_calls == []


def test_results_with_call_ids_sent_as_they_complete() -> None:
    machine = make_session()
    machine.on_packet(tool_call(1, "a"), 0.0)
    machine.on_packet(tool_call(2, "b"), 0.0)
    first = machine.on_tool_done("b", result("b"), 0.1)
    assert [r.call_id for r in sent(first, "tool_result")] == ["b"]
    assert machine.state is SessionState.AWAITING_TOOL
    second = machine.on_tool_done("a", result("a"), 0.2)
    assert [r.call_id for r in sent(second, "tool_result")] == ["a"]
    assert machine.state is SessionState.ACTIVE


def test_calls_without_call_id_released_in_request_order() -> None:
    machine = make_session()
    ids = [of_type(machine.on_packet(tool_call(seq), 0.0), StartTool)[0].call_id for seq in (3, 5, 8)]
    assert ids == ["seq-3", "seq-5", "seq-8"]
    assert sent(machine.on_tool_done("seq-8", result("seq-8"), 0.1), "tool_result") == []
    assert sent(machine.on_tool_done("seq-5", result("seq-5"), 0.2), "tool_result") == []
    released = machine.on_tool_done("seq-3", result("seq-3"), 0.3)
    assert [r.call_id for r in sent(released, "tool_result")] == ["seq-3", "seq-5", "seq-8"]
    assert machine.state is SessionState.ACTIVE


def test_duplicate_call_id_is_rejected_without_second_start() -> None:
    machine = make_session()
    machine.on_packet(tool_call(1, "c1"), 0.0)
    actions = machine.on_packet(tool_call(2, "c1"), 0.1)
    assert of_type(actions, StartTool) == []
    (error,) = sent(actions, "error")
    assert error.code == "DUPLICATE_CALL_ID"
    assert error.call_id == "c1"
    assert error.seq == 2
    no_end(actions)
    assert machine.running_tool_calls == ["c1"]


# -- finish -----------------------------------------------------------------------------


def test_finish_then_half_close_ends_stream() -> None:
    machine = make_session()
    machine.on_packet(content(1, "hello"), 0.0)
    actions = machine.on_packet(content(2, "done", is_finish=True), 1.0)
    no_end(actions)
    assert acks(actions) == [2]
    assert machine.outcome is not None and machine.outcome.state is SessionState.FINISHED
    assert machine.state is SessionState.FINISHED
    outcome = ended(machine.on_upstream_closed(1.1))
    assert outcome.state is SessionState.FINISHED
    assert outcome.status == "OK"
    assert machine.is_ended


def test_finish_without_half_close_ends_at_linger_deadline() -> None:
    machine = make_session(session={"finish_linger_ms": 500})
    no_end(machine.on_packet(content(1, is_finish=True), 2.0))
    assert machine.wake_at == pytest.approx(2.5)
    no_end(machine.on_timer(2.4))
    outcome = ended(machine.on_timer(2.5))
    assert outcome.state is SessionState.FINISHED
    assert machine.wake_at is None


def test_tools_running_at_finish_are_not_cancelled_and_results_sent() -> None:
    machine = make_session()
    machine.on_packet(tool_call(1, "c1"), 0.0)
    actions = machine.on_packet(content(2, is_finish=True), 0.1)
    assert of_type(actions, CancelTools) == []
    no_end(actions)
    no_end(machine.on_upstream_closed(0.2))  # the result is still owed
    done = machine.on_tool_done("c1", result("c1"), 0.3)
    assert [r.call_id for r in sent(done, "tool_result")] == ["c1"]
    assert isinstance(done[-1], EndStream)
    assert ended(done).state is SessionState.FINISHED


def test_tool_result_after_finish_then_linger() -> None:
    machine = make_session(session={"finish_linger_ms": 500})
    machine.on_packet(tool_call(1, "c1"), 0.0)
    machine.on_packet(content(2, is_finish=True), 0.1)
    no_end(machine.on_timer(5.0))  # no linger while a result is owed
    done = machine.on_tool_done("c1", result("c1"), 6.0)
    assert [r.call_id for r in sent(done, "tool_result")] == ["c1"]
    no_end(done)
    assert machine.wake_at == pytest.approx(6.5)
    assert ended(machine.on_timer(6.5)).state is SessionState.FINISHED


def test_packets_after_finish_dropped_counted_and_answered() -> None:
    machine = make_session()
    machine.on_packet(content(1, is_finish=True), 0.0)
    late = machine.on_packet(content(2, "more"), 0.1)
    assert error_codes(late) == ["PACKET_AFTER_FINISH"]
    assert sent(late, "error")[0].seq == 2
    late_call = machine.on_packet(tool_call(3, "c9"), 0.2)
    assert of_type(late_call, StartTool) == []
    assert error_codes(late_call) == ["PACKET_AFTER_FINISH"]
    assert machine.dropped_packets == 2
    assert machine.outcome is not None and machine.outcome.state is SessionState.FINISHED


# -- half-close -------------------------------------------------------------------------


def test_half_close_without_finish_and_no_tools_finishes() -> None:
    machine = make_session()
    machine.on_packet(content(1), 0.0)
    outcome = ended(machine.on_upstream_closed(0.5))
    assert outcome.state is SessionState.FINISHED
    assert outcome.status == "OK"
    assert "half-closed" in outcome.reason


def test_half_close_with_running_tool_waits_for_result() -> None:
    machine = make_session()
    machine.on_packet(tool_call(1, "c1"), 0.0)
    actions = machine.on_upstream_closed(0.1)
    no_end(actions)
    assert of_type(actions, CancelTools) == []
    done = machine.on_tool_done("c1", result("c1"), 0.2)
    assert [r.call_id for r in sent(done, "tool_result")] == ["c1"]


def test_half_close_with_running_tool_ends_after_result() -> None:
    machine = make_session(policy={"idle_timeout_s": 30})
    machine.on_packet(tool_call(1, "c1"), 0.0)
    no_end(machine.on_upstream_closed(0.1))
    done = machine.on_tool_done("c1", result("c1"), 0.2)
    assert [r.call_id for r in sent(done, "tool_result")] == ["c1"]
    outcome = ended(done)
    assert outcome.state is SessionState.FINISHED


# -- stops ------------------------------------------------------------------------------


def test_request_stop_sends_stop_first() -> None:
    machine = make_session(session={"stop_grace_ms": 1_500})
    machine.on_packet(content(1), 0.0)
    stop = operator_stop()
    actions = machine.request_stop(stop, 1.0)
    assert isinstance(actions[0], Send) and actions[0].packet.WhichOneof("signal") == "stop"
    signal = actions[0].packet.stop
    assert signal.code == wire.pb.STOP_CODE_OPERATOR
    assert signal.reason == "operator said so"
    assert signal.cause == "ticket=42"
    assert list(signal.path) == ["operator:alice", HOP]
    assert signal.grace_ms == 1_500
    assert signal.stop_id == stop.stop_id
    assert of_type(actions, CancelTools) == []  # nothing was running
    no_end(actions)
    assert machine.state is SessionState.STOPPING
    assert machine.is_closed
    assert machine.pending_stop is not None and machine.pending_stop.stop_id == stop.stop_id


def test_request_stop_cancels_running_tools() -> None:
    machine = make_session()
    machine.on_packet(tool_call(1, "c1"), 0.0)
    machine.on_packet(tool_call(2), 0.0)
    actions = machine.request_stop(operator_stop(), 1.0)
    assert sent(actions[:1], "stop")
    assert len(of_type(actions, CancelTools)) == 1
    assert machine.running_tool_calls == []


def test_packets_after_stop_dropped_and_counted() -> None:
    machine = make_session()
    machine.on_packet(content(1), 0.0)
    machine.request_stop(operator_stop(), 1.0)
    assert machine.on_packet(content(2, "still talking"), 1.1) == ()
    assert machine.on_packet(tool_call(3, "late"), 1.2) == ()
    assert machine.dropped_packets == 2
    assert machine.state is SessionState.STOPPING


def test_tool_results_after_stop_are_not_sent() -> None:
    machine = make_session()
    machine.on_packet(tool_call(1, "c1"), 0.0)
    machine.on_packet(tool_call(2), 0.0)
    machine.request_stop(operator_stop(), 1.0)
    assert machine.on_tool_done("c1", result("c1"), 1.1) == ()
    assert machine.on_tool_done("seq-2", result("seq-2"), 1.2) == ()


def test_stop_confirm_ends_stream_stopped_confirmed() -> None:
    machine = make_session()
    machine.on_packet(content(1), 0.0)
    stop = operator_stop()
    machine.request_stop(stop, 2.0)
    actions = machine.on_packet(stop_confirm(2, stop.stop_id, halt_us=12_345), 3.5)
    outcome = ended(actions)
    assert isinstance(actions[-1], EndStream)
    assert outcome.state is SessionState.STOPPED
    assert outcome.stop_confirmed is True
    assert outcome.stop_to_confirm_ms == pytest.approx(1_500.0)
    assert outcome.halt_us == 12_345
    assert outcome.status == "ABORTED"
    assert outcome.error_code == "OPERATOR"
    assert outcome.ended_by == "operator:alice"
    assert outcome.stop is not None and outcome.stop.stop_id == stop.stop_id
    assert acks(actions) == [2]
    assert machine.state is SessionState.STOPPED


def test_stop_grace_expiry_ends_stream_unconfirmed() -> None:
    machine = make_session(session={"stop_grace_ms": 1_000})
    machine.request_stop(operator_stop(), 5.0)
    assert machine.wake_at == pytest.approx(6.0)
    no_end(machine.on_timer(5.9))
    outcome = ended(machine.on_timer(6.0))
    assert outcome.state is SessionState.STOPPED
    assert outcome.stop_confirmed is False
    assert outcome.stop_to_confirm_ms is None
    assert machine.wake_at is None


def test_half_close_during_stopping_is_unconfirmed_stop() -> None:
    machine = make_session()
    machine.request_stop(operator_stop(), 0.0)
    outcome = ended(machine.on_upstream_closed(0.3))
    assert outcome.state is SessionState.STOPPED
    assert outcome.stop_confirmed is False


def test_second_stop_is_ignored_first_wins() -> None:
    machine = make_session()
    first = operator_stop()
    machine.request_stop(first, 0.0)
    second = StopInfo(code=StopCode.SHUTDOWN, reason="shutting down", path=("signal:SIGTERM",))
    assert machine.request_stop(second, 0.1) == ()
    outcome = ended(machine.on_upstream_closed(0.2))
    assert outcome.stop is not None and outcome.stop.stop_id == first.stop_id
    assert outcome.error_code == "OPERATOR"


def test_stop_after_finish_is_ignored() -> None:
    machine = make_session()
    machine.on_packet(content(1, is_finish=True), 0.0)
    assert machine.request_stop(operator_stop(), 0.1) == ()
    outcome = ended(machine.on_upstream_closed(0.2))
    assert outcome.state is SessionState.FINISHED
    assert outcome.stop is None


def test_idle_timeout_stop_ends_expired() -> None:
    machine = make_session()
    stop = StopInfo(code=StopCode.IDLE_TIMEOUT, reason="idle", path=("timer:idle_timeout_s",))
    machine.request_stop(stop, 0.0)
    outcome = ended(machine.on_packet(stop_confirm(1, stop.stop_id), 0.2))
    assert outcome.state is SessionState.EXPIRED
    assert outcome.stop_confirmed is True
    assert outcome.status == "DEADLINE_EXCEEDED"


def test_stop_confirm_without_stop_is_unexpected() -> None:
    machine = make_session()
    actions = machine.on_packet(stop_confirm(1), 0.0)
    assert error_codes(actions) == ["UNEXPECTED_STOP_CONFIRM"]
    no_end(actions)
    assert machine.outcome is None


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (StopCode.UNSPECIFIED, "ABORTED"),
        (StopCode.USER_CANCEL, "CANCELLED"),
        (StopCode.POLICY_VIOLATION, "PERMISSION_DENIED"),
        (StopCode.BUDGET_EXCEEDED, "RESOURCE_EXHAUSTED"),
        (StopCode.OPERATOR, "ABORTED"),
        (StopCode.SHUTDOWN, "UNAVAILABLE"),
        (StopCode.TIMEOUT, "DEADLINE_EXCEEDED"),
        (StopCode.IDLE_TIMEOUT, "DEADLINE_EXCEEDED"),
    ],
)
def test_stop_outcome_status_follows_stop_status_name(code: StopCode, status: str) -> None:
    machine = make_session()
    machine.request_stop(StopInfo(code=code, reason="r", path=("test:x",)), 0.0)
    outcome = ended(machine.on_timer(10.0))
    assert outcome.status == STOP_STATUS[code] == status
    assert outcome.error_code == code.name


# -- policies through the machine -------------------------------------------------------


def _stop_of(actions: Sequence[Action]) -> wire.pb.StopSignal:
    (stop,) = sent(actions, "stop")
    assert isinstance(actions[0], Send) and actions[0].packet.HasField("stop"), "the stop must come first"
    return stop


def test_blocklist_match_stops_with_policy_violation() -> None:
    machine = make_session(policy={"block_patterns": ("forbidden",)})
    no_end(machine.on_packet(content(1, "all fine"), 0.0))
    stop = _stop_of(machine.on_packet(content(2, "this is forbidden"), 0.1))
    assert stop.code == wire.pb.STOP_CODE_POLICY_VIOLATION
    assert stop.path[0].startswith("policy:content_blocklist")
    assert stop.path[-1] == HOP
    # The peer learns which policy stopped it, never the rule: operators read that in the outcome.
    assert stop.cause == "policy=content_blocklist" and "forbidden" not in str(stop)
    assert machine.state is SessionState.STOPPING
    outcome = ended(machine.on_upstream_closed(0.2))
    assert outcome.status == "PERMISSION_DENIED"
    assert "pattern='forbidden'" in outcome.reason, outcome


def test_blocklist_match_across_two_deltas() -> None:
    machine = make_session(policy={"block_patterns": ("forbidden",)})
    assert sent(machine.on_packet(content(1, "it is forb"), 0.0), "stop") == []
    stop = _stop_of(machine.on_packet(content(2, "idden!"), 0.1))
    assert stop.code == wire.pb.STOP_CODE_POLICY_VIOLATION
    assert stop.path[0].startswith("policy:content_blocklist")


def test_content_budget_exceeded_stops() -> None:
    machine = make_session(policy={"max_content_chars": 10})
    assert sent(machine.on_packet(content(1, "12345"), 0.0), "stop") == []
    assert sent(machine.on_packet(content(2, "67890"), 0.0), "stop") == []
    stop = _stop_of(machine.on_packet(content(3, "!"), 0.1))
    assert stop.code == wire.pb.STOP_CODE_BUDGET_EXCEEDED
    assert "budget=content_chars" in stop.cause
    assert "limit=10" in stop.cause and "used=11" in stop.cause
    assert ended(machine.on_upstream_closed(0.2)).status == "RESOURCE_EXHAUSTED"


def test_thought_budget_exceeded_stops() -> None:
    machine = make_session(policy={"max_thought_chars": 4})
    assert sent(machine.on_packet(thought(1, "abcd"), 0.0), "stop") == []
    stop = _stop_of(machine.on_packet(thought(2, "e"), 0.1))
    assert stop.code == wire.pb.STOP_CODE_BUDGET_EXCEEDED
    assert "budget=thought_chars" in stop.cause


def test_tool_call_budget_exceeded_stops_without_starting() -> None:
    machine = make_session(policy={"max_tool_calls": 1})
    assert of_type(machine.on_packet(tool_call(1, "c1"), 0.0), StartTool)
    actions = machine.on_packet(tool_call(2, "c2"), 0.1)
    stop = _stop_of(actions)
    assert stop.code == wire.pb.STOP_CODE_BUDGET_EXCEEDED
    assert "budget=tool_calls" in stop.cause
    assert of_type(actions, StartTool) == []
    assert len(of_type(actions, CancelTools)) == 1  # c1 was still running


def test_wall_clock_limit_stops_with_timeout() -> None:
    machine = make_session(policy={"max_session_s": 5})
    assert machine.wake_at == pytest.approx(5.0)
    early = machine.on_timer(4.9)
    assert sent(early, "stop") == []
    no_end(early)
    stop = _stop_of(machine.on_timer(5.0))
    assert stop.code == wire.pb.STOP_CODE_TIMEOUT
    assert stop.path[0].startswith("timer:max_session_s")
    assert machine.state is SessionState.STOPPING
    outcome = ended(machine.on_timer(10.0))
    assert outcome.state is SessionState.STOPPED
    assert outcome.status == "DEADLINE_EXCEEDED"


def test_idle_timeout_stops_with_idle_timeout() -> None:
    machine = make_session(policy={"idle_timeout_s": 10})
    assert machine.wake_at == pytest.approx(10.0)
    stop = _stop_of(machine.on_timer(10.0))
    assert stop.code == wire.pb.STOP_CODE_IDLE_TIMEOUT
    assert stop.path[0].startswith("timer:idle_timeout_s")
    outcome = ended(machine.on_timer(20.0))
    assert outcome.state is SessionState.EXPIRED


def test_no_idle_timeout_while_tool_runs() -> None:
    machine = make_session(policy={"idle_timeout_s": 10})
    machine.on_packet(tool_call(1, "c1"), 1.0)
    assert machine.wake_at is None
    assert sent(machine.on_timer(50.0), "stop") == []
    assert machine.state is SessionState.AWAITING_TOOL
    machine.on_tool_done("c1", result("c1"), 60.0)
    assert machine.wake_at == pytest.approx(70.0)  # the idle clock restarts at the result
    assert sent(machine.on_timer(69.9), "stop") == []
    assert _stop_of(machine.on_timer(70.0)).code == wire.pb.STOP_CODE_IDLE_TIMEOUT


def test_activity_pushes_idle_deadline_lazily() -> None:
    machine = make_session(session={"ack_every_packets": 1}, policy={"idle_timeout_s": 10})
    machine.on_packet(content(1), 5.0)
    assert machine.wake_at == pytest.approx(10.0)  # not recomputed on the hot path
    assert sent(machine.on_timer(10.0), "stop") == []
    assert machine.state is SessionState.ACTIVE
    assert machine.wake_at == pytest.approx(15.0)
    assert _stop_of(machine.on_timer(15.0)).code == wire.pb.STOP_CODE_IDLE_TIMEOUT


# -- commander error, peer gone, upstream failed -----------------------------------------


def test_commander_error_fails_session_and_cancels_tools() -> None:
    machine = make_session()
    machine.on_packet(tool_call(1, "c1"), 0.0)
    packet = wire.pb.UpstreamPacket(seq=2, error=wire.pb.ErrorSignal(code="LLM_UNAVAILABLE", message="provider down"))
    actions = machine.on_packet(packet, 0.1)
    assert len(of_type(actions, CancelTools)) == 1
    assert machine.outcome is not None
    assert machine.outcome.state is SessionState.FAILED
    assert machine.outcome.error_code == "LLM_UNAVAILABLE"
    assert machine.running_tool_calls == []
    assert machine.on_tool_done("c1", result("c1"), 0.2) == ()
    outcome = ended(machine.on_upstream_closed(0.3))
    assert outcome.state is SessionState.FAILED
    assert outcome.error_code == "LLM_UNAVAILABLE"


def test_peer_gone_is_cancelled() -> None:
    machine = make_session()
    machine.on_packet(tool_call(1, "c1"), 0.0)
    outcome = machine.on_peer_gone("client cancelled")
    assert outcome.state is SessionState.CANCELLED
    assert outcome.status == "CANCELLED"
    assert machine.is_ended
    assert machine.running_tool_calls == []


def test_peer_gone_with_pending_stop_is_unconfirmed_stop() -> None:
    machine = make_session()
    machine.request_stop(operator_stop(), 0.0)
    outcome = machine.on_peer_gone("connection lost")
    assert outcome.state is SessionState.STOPPED
    assert outcome.stop_confirmed is False
    assert outcome.error_code == "OPERATOR"


def test_upstream_failed_fails_with_that_status() -> None:
    machine = make_session()
    machine.on_packet(tool_call(1, "c1"), 0.0)
    actions = machine.on_upstream_failed("RESOURCE_EXHAUSTED", "message larger than max", 0.1)
    outcome = ended(actions)
    assert outcome.state is SessionState.FAILED
    assert outcome.status == "RESOURCE_EXHAUSTED"
    assert len(of_type(actions, CancelTools)) == 1
    assert machine.is_ended
