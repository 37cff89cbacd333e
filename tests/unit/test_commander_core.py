"""The commander's sans-IO session core: feed events, read actions. Time is a float passed in."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import commander.actions
import commander.core
from commander.actions import (
    Action,
    Assigned,
    CancelAgent,
    CancelCall,
    CloseUpstream,
    Deliver,
    DiscardQueued,
    Notify,
    PendingAtStop,
    Report,
    Send,
)
from commander.core import CommanderSession, Phase
from commander.events import HandshakeDone, StopReceived, ToolResultReceived
from shared import wire
from shared.model import SessionState, StopCode, StopInfo

pytestmark = pytest.mark.timeout(10)

SID = "s1"
CANCELLED_HERE = "cancelled by the commander"


# -- helpers ----------------------------------------------------------------------------


def make_core(*, await_assignment: bool = False, now: float = 0.0) -> CommanderSession:
    return CommanderSession(
        session_id="" if await_assignment else SID,
        prompt="the prompt",
        agent_name="test-agent",
        agent_version="9.9",
        await_assignment=await_assignment,
        now=now,
    )


def down(**signal: Any) -> wire.pb.DownstreamPacket:
    return wire.pb.DownstreamPacket(**signal)


def welcome(dispatcher_id: str = "dispatcher:test") -> wire.pb.DownstreamPacket:
    limits = wire.pb.SessionLimits(max_tool_calls=7)
    return down(welcome=wire.pb.Welcome(session_id=SID, dispatcher_id=dispatcher_id, limits=limits))


def ack(seq: int) -> wire.pb.DownstreamPacket:
    return down(ack=wire.pb.Ack(seq=seq))


def tool_result(call_id: str = "", result_json: str = '{"ok":true}', tool: str = "echo") -> wire.pb.DownstreamPacket:
    return down(tool_result=wire.pb.ToolCallResult(call_id=call_id, tool_name=tool, result_json=result_json))


def operator_stop(code: StopCode = StopCode.OPERATOR, stop_id: str = "stop-1") -> StopInfo:
    return StopInfo(code=code, reason="operator said so", path=("operator:alice", "dispatcher:test"), stop_id=stop_id)


def stop_packet(stop: StopInfo) -> wire.pb.DownstreamPacket:
    return down(stop=wire.stop_to_wire(stop))


def native(now: float = 0.0) -> CommanderSession:
    """A core past a Welcome with its agent running."""
    core = make_core(now=now)
    core.on_downstream(welcome(), now)
    assert core.start_agent()
    return core


def compat() -> CommanderSession:
    """A core in compatibility mode (no Welcome in time) with its agent running."""
    core = make_core()
    core.on_handshake_timeout()
    assert core.start_agent()
    return core


def end(core: CommanderSession, code: str = "OK", details: str = "", trailers: dict[str, str] | None = None) -> None:
    core.on_stream_end(code, details, trailers or {}, {})


def of_type(actions: Sequence[Action], cls: type) -> list[Any]:
    return [a for a in actions if isinstance(a, cls)]


def notified(actions: Sequence[Action], cls: type) -> list[Any]:
    return [a.event for a in of_type(actions, Notify) if isinstance(a.event, cls)]


def sent(actions: Sequence[Action]) -> list[wire.pb.UpstreamPacket]:
    return [a.packet for a in of_type(actions, Send)]


def only_sent(actions: Sequence[Action]) -> wire.pb.UpstreamPacket:
    (packet,) = sent(actions)
    return packet


def finish_after_stop(core: CommanderSession, now: float, discarded: int = 0) -> Sequence[Action]:
    """The agent unwinds at `now` after a stop: the shell discards the queue, then gets the confirm."""
    assert of_type(core.on_agent_returned(now), DiscardQueued)
    return core.on_queue_discarded(discarded)


# -- the module ---------------------------------------------------------------------------


@pytest.mark.parametrize("module", [commander.core, commander.actions], ids=["core", "actions"])
def test_the_core_imports_no_grpc_anyio_asyncio_or_clock(module: ModuleType) -> None:
    tree = ast.parse(Path(str(module.__file__)).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"grpc", "anyio", "asyncio", "time"}, imported


# -- handshake ----------------------------------------------------------------------------


def test_the_hello_goes_first_with_the_agent_the_features_and_no_pool_flag() -> None:
    (packet,) = sent(make_core().start())
    hello = packet.hello
    assert (hello.session_id, hello.agent_name, hello.agent_version) == (SID, "test-agent", "9.9")
    assert set(hello.features) == set(wire.FEATURES) and not hello.awaits_assignment


def test_a_welcome_settles_the_handshake_in_the_native_protocol() -> None:
    core = make_core()
    assert core.phase is Phase.HANDSHAKE and not core.start_agent()

    actions = core.on_downstream(welcome("dispatcher:d7"), 0.0)

    assert notified(actions, HandshakeDone) == [HandshakeDone(SID, "dispatcher:d7", False)]
    assert core.phase is Phase.RUNNING and not core.compat_mode
    assert core.limits is not None and core.limits.max_tool_calls == 7
    assert core.start_agent()
    core.on_handshake_timeout()  # too late to matter
    assert not core.compat_mode
    core.on_agent_returned(1.0)
    end(core)
    assert core.result(now=1.0, packets_sent=3).dispatcher_id == "dispatcher:d7"


def test_a_first_packet_other_than_a_welcome_means_compatibility_mode_and_is_still_handled() -> None:
    core = make_core()

    actions = core.on_downstream(ack(4), 0.0)

    assert notified(actions, HandshakeDone) == [HandshakeDone(SID, "", True)]
    assert core.compat_mode and core.phase is Phase.RUNNING and core.limits is None
    core.on_downstream(welcome(), 0.1)  # a Welcome now is not a handshake any more
    assert core.compat_mode and core.welcome is None
    end(core)
    result = core.result(now=1.0, packets_sent=4)
    assert result.compat_mode and result.last_acked_seq == 4


def test_a_stop_as_the_first_packet_enters_compatibility_mode_and_the_agent_never_starts() -> None:
    core = make_core()
    stop = operator_stop()

    actions = core.on_downstream(stop_packet(stop), 2.0)

    assert [type(a) for a in actions] == [Notify, Notify, CancelAgent]
    assert notified(actions, HandshakeDone) == [HandshakeDone(SID, "", True)]
    assert not core.start_agent()
    assert of_type(core.on_agent_returned(2.5), DiscardQueued)
    assert core.on_queue_discarded(0) == (CloseUpstream(),)  # compatibility mode: no StopConfirm


def test_no_answer_within_the_handshake_timeout_means_compatibility_mode() -> None:
    core = make_core()

    actions = core.on_handshake_timeout()

    assert actions == (Notify(HandshakeDone(SID, "", True)),)
    assert core.compat_mode and core.phase is Phase.RUNNING and core.start_agent()
    assert core.on_handshake_timeout() == ()  # settled once


def test_the_stream_ending_before_any_answer_is_a_refusal_not_compatibility_mode() -> None:
    core = make_core()

    actions = core.on_stream_end("UNAVAILABLE", "shutting down", {}, {wire.MetadataKey.DISPATCHER_ID: "dispatcher:d"})

    assert actions == ()
    assert core.phase is Phase.REFUSED and not core.compat_mode and not core.start_agent()
    result = core.result(now=0.5, packets_sent=1)
    assert (result.state, result.reason) == (SessionState.FAILED, "UNAVAILABLE: shutting down")
    assert not result.compat_mode and result.dispatcher_id == "dispatcher:d"


def test_an_end_after_the_handshake_timeout_keeps_compatibility_mode() -> None:
    core = make_core()
    core.on_handshake_timeout()

    end(core)

    assert core.compat_mode and core.phase is Phase.RUNNING
    assert not core.start_agent()  # nobody left to talk to
    assert core.on_agent_returned(1.0) == (CloseUpstream(),)
    assert core.result(now=1.0, packets_sent=1).compat_mode


# -- pool streams -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "json", "prompt"), [("hi", "", "hi"), ("", '{"q":1}', '{"q":1}')])
def test_a_pool_stream_takes_its_assignment_then_the_welcome(text: str, json: str, prompt: str) -> None:
    core = make_core(await_assignment=True)
    assert core.start()[0] == Send(wire.pb.UpstreamPacket(hello=wire.pb.Hello(
        agent_name="test-agent", agent_version="9.9", features=list(wire.FEATURES), awaits_assignment=True
    )))  # fmt: skip
    assert core.phase is Phase.AWAITING_ASSIGNMENT
    assignment = wire.pb.Assignment(session_id="pool-1", input_text=text, input_json=json, started_by="backend:web")

    actions = core.on_downstream(down(assignment=assignment), 0.0)

    assert list(actions) == [Assigned(assignment)]
    assert (core.phase, core.session_id, core.prompt) == (Phase.HANDSHAKE, "pool-1", prompt)
    handshake = core.on_downstream(welcome(), 0.1)
    assert notified(handshake, HandshakeDone) == [HandshakeDone("pool-1", "dispatcher:test", False)]
    assert core.start_agent()
    core.on_agent_returned(1.0)
    end(core)
    result = core.result(now=1.0, packets_sent=2)
    assert result.session_id == "pool-1" and result.assigned == assignment and result.state is SessionState.FINISHED


def test_a_pool_stream_whose_first_packet_is_no_assignment_leaves_the_call() -> None:
    core = make_core(await_assignment=True)

    actions = core.on_downstream(welcome(), 0.0)

    assert [type(a) for a in actions] == [Report, CancelCall]
    assert core.phase is Phase.AWAITING_ASSIGNMENT and core.welcome is None


def test_a_cancel_while_waiting_in_the_pool_resets_the_call_and_is_the_outcome() -> None:
    core = make_core(await_assignment=True)

    actions = core.on_cancel_requested(CANCELLED_HERE)

    assert of_type(actions, CancelCall) and not of_type(actions, CancelAgent)
    core.on_stream_end("CANCELLED", "cancelled by the commander", {}, {})
    assert core.phase is Phase.REFUSED
    result = core.result(now=1.0, packets_sent=1)
    assert (result.state, result.reason, result.assigned) == (SessionState.CANCELLED, CANCELLED_HERE, None)


def test_the_stream_ending_in_the_pool_is_a_refusal() -> None:
    core = make_core(await_assignment=True)
    core.on_stream_end("UNAVAILABLE", "draining", {}, {})
    assert core.phase is Phase.REFUSED and not core.start_agent()
    assert core.result(now=1.0, packets_sent=1).state is SessionState.FAILED


# -- tool calls ---------------------------------------------------------------------------


def test_results_are_matched_by_call_id_in_any_order() -> None:
    core = native()
    core.on_tool_call_sent("call-1", "slow")
    core.on_tool_call_sent("call-2", "echo")

    second = core.on_downstream(tool_result("call-2", '{"n":2}'), 0.1)
    first = core.on_downstream(tool_result("call-1", '{"n":1}'), 0.2)

    assert [(d.call_id, d.result.result_json) for d in of_type(second, Deliver)] == [("call-2", '{"n":2}')]
    assert [(d.call_id, d.result.result_json) for d in of_type(first, Deliver)] == [("call-1", '{"n":1}')]
    assert [e.call_id for e in notified(second + first, ToolResultReceived)] == ["call-2", "call-1"]
    assert core.tool_calls == 2


def test_a_result_for_no_pending_call_is_reported_and_delivered_to_nobody() -> None:
    core = native()
    core.on_tool_call_sent("call-1", "echo")
    core.on_tool_call_given_up("call-1")  # timed out: in the native protocol the call is forgotten

    actions = core.on_downstream(tool_result("call-1"), 0.5)

    assert not of_type(actions, Deliver)
    assert [e.call_id for e in notified(actions, ToolResultReceived)] == ["call-1"]


def test_a_tool_error_is_reported_with_its_bare_code() -> None:
    core = native()
    core.on_tool_call_sent("call-1", "nope")
    error = wire.pb.ToolError(code=wire.tool_error_code_to_wire("UNKNOWN_TOOL"), message="no such tool")
    packet = down(tool_result=wire.pb.ToolCallResult(call_id="call-1", tool_name="nope", error=error))

    (event,) = notified(core.on_downstream(packet, 0.1), ToolResultReceived)

    assert (event.error_code, event.error_message) == ("UNKNOWN_TOOL", "no such tool")


def test_compatibility_mode_matches_by_order_and_a_given_up_call_consumes_its_late_result() -> None:
    core = compat()
    core.on_tool_call_sent("call-1", "slow")
    core.on_tool_call_given_up("call-1")  # the agent's timeout: its slot stays
    core.on_tool_call_sent("call-2", "echo")

    late = core.on_downstream(tool_result(result_json='{"late":true}'), 1.0)
    answer = core.on_downstream(tool_result(result_json='{"echo":true}'), 1.1)

    assert not of_type(late, Deliver)  # consumed by the abandoned call, not handed to call-2
    assert [e.call_id for e in notified(late, ToolResultReceived)] == ["call-1"]
    assert [(d.call_id, d.result.result_json) for d in of_type(answer, Deliver)] == [("call-2", '{"echo":true}')]


def test_the_same_call_id_twice_is_a_bug_of_the_caller() -> None:
    core = native()
    core.on_tool_call_sent("call-1", "echo")
    with pytest.raises(ValueError, match="call-1"):
        core.on_tool_call_sent("call-1", "echo")


# -- stops --------------------------------------------------------------------------------


def test_a_stop_cancels_the_agent_and_tells_the_observer() -> None:
    core = native()
    stop = operator_stop()

    actions = core.on_downstream(stop_packet(stop), 5.0)

    assert notified(actions, StopReceived) == [StopReceived(stop)]
    (cancel,) = of_type(actions, CancelAgent)
    assert cancel.stop == stop and "operator said so" in cancel.reason
    assert core.stop == stop


def test_the_first_stop_wins() -> None:
    core = native()
    first, second = operator_stop(stop_id="first"), operator_stop(StopCode.SHUTDOWN, stop_id="second")
    core.on_downstream(stop_packet(first), 1.0)

    assert not core.on_downstream(stop_packet(second), 2.0)

    confirm = only_sent(finish_after_stop(core, 3.0)).stop_confirm
    assert confirm.stop_id == "first" and confirm.halt_us == 2_000_000  # from the first stop's arrival
    end(core, "ABORTED")
    assert core.result(now=3.0, packets_sent=1).stop == first


def test_the_stop_confirm_says_which_stop_how_fast_and_how_much_was_dropped() -> None:
    core = native(now=10.0)
    core.on_downstream(stop_packet(operator_stop()), 10.0)

    actions = finish_after_stop(core, 10.0125, discarded=3)

    assert [type(a) for a in actions] == [Send, CloseUpstream]
    confirm = only_sent(actions).stop_confirm
    assert (confirm.stop_id, confirm.halt_us, confirm.discarded_packets) == ("stop-1", 12_500, 3)
    # last_seq is the writer's: it stamps the seq of the last packet written before the confirm
    # (tests/unit/test_coalesce.py), as only it knows what was written and what was discarded.
    assert confirm.last_seq == 0
    end(core, "ABORTED", trailers={wire.MetadataKey.STOP_TO_CONFIRM_MS: "1.5"})
    result = core.result(now=10.5, packets_sent=7)
    assert result.stop_to_halt_ms == pytest.approx(12.5)
    assert result.discarded_packets == 3 and result.stop_to_confirm_ms == 1.5 and result.packets_sent == 7


def test_pending_calls_at_the_stop_are_abandoned_or_their_result_ignored() -> None:
    core = native()
    core.on_tool_call_sent("call-1", "done")
    core.on_downstream(tool_result("call-1"), 0.1)  # answered before the stop: no fate
    core.on_tool_call_sent("call-2", "timed_out")
    core.on_tool_call_given_up("call-2")  # gave up before the stop: forgotten
    core.on_tool_call_sent("call-3", "slow")
    core.on_tool_call_sent("call-4", "late")
    core.on_downstream(stop_packet(operator_stop()), 1.0)
    core.on_tool_call_given_up("call-3")  # the agent's cancellation ends both waits
    core.on_tool_call_given_up("call-4")

    ignored = core.on_downstream(tool_result("call-4"), 1.1)  # after the stop: not handed over

    assert not of_type(ignored, Deliver) and notified(ignored, ToolResultReceived)
    confirm = only_sent(finish_after_stop(core, 1.2)).stop_confirm
    assert [(p.call_id, p.tool_name, p.fate) for p in confirm.pending_tool_calls] == [
        ("call-3", "slow", wire.tool_call_fate_to_wire("ABANDONED")),
        ("call-4", "late", wire.tool_call_fate_to_wire("RESULT_IGNORED")),
    ]
    end(core, "ABORTED")
    assert core.result(now=2.0, packets_sent=5).pending_at_stop == (
        PendingAtStop("call-3", "slow", "ABANDONED"),
        PendingAtStop("call-4", "late", "RESULT_IGNORED"),
    )


def test_compatibility_mode_sends_no_stop_confirm_and_matches_late_results_by_order() -> None:
    core = compat()
    core.on_tool_call_sent("call-1", "a")
    core.on_tool_call_sent("call-2", "b")
    core.on_tool_call_sent("call-3", "c")
    core.on_downstream(stop_packet(operator_stop()), 1.0)
    core.on_downstream(tool_result(), 1.1)  # call-1's result
    core.on_downstream(tool_result(), 1.2)  # then call-2's, not call-1's again

    actions = finish_after_stop(core, 1.3, discarded=2)

    assert actions == (CloseUpstream(),)
    end(core)
    result = core.result(now=2.0, packets_sent=4)
    assert [(p.call_id, p.fate) for p in result.pending_at_stop] == [
        ("call-1", "RESULT_IGNORED"),
        ("call-2", "RESULT_IGNORED"),
        ("call-3", "ABANDONED"),
    ]
    assert result.state is SessionState.STOPPED and result.discarded_packets == 2


def test_a_stop_after_the_stream_ended_sends_nothing_more() -> None:
    core = native()
    core.on_downstream(stop_packet(operator_stop()), 1.0)
    end(core, "ABORTED")

    assert core.on_agent_returned(1.5) == (CloseUpstream(),)


def test_the_confirm_is_only_built_after_a_stop() -> None:
    core = native()
    with pytest.raises(RuntimeError):
        core.on_queue_discarded(0)


# -- the final packet ---------------------------------------------------------------------


def test_an_agent_that_returns_finishes_the_answer() -> None:
    core = native()

    actions = core.on_agent_returned(1.0)

    assert [type(a) for a in actions] == [Send, CloseUpstream]
    assert only_sent(actions).content.is_finish
    assert core.phase is Phase.CLOSED


def test_an_agent_that_fails_says_so_upstream() -> None:
    core = native()

    error = only_sent(core.on_agent_failed(ValueError("boom"), 1.0)).error

    assert (error.code, error.message) == ("AGENT_ERROR", "ValueError: boom")


def test_a_commander_side_cancel_cancels_the_agent_and_says_cancelled_upstream() -> None:
    core = native()

    actions = core.on_cancel_requested(CANCELLED_HERE)

    assert actions == (CancelAgent(CANCELLED_HERE),)
    error = only_sent(core.on_agent_returned(1.0)).error
    assert (error.code, error.message) == ("CANCELLED", CANCELLED_HERE)
    assert core.on_cancel_requested("again") == ()


def test_a_cancel_before_the_agent_starts_keeps_it_from_starting() -> None:
    core = make_core()
    assert core.on_cancel_requested(CANCELLED_HERE) == ()  # nothing runs yet
    core.on_downstream(welcome(), 0.1)

    assert not core.start_agent()
    assert only_sent(core.on_agent_returned(0.2)).error.code == "CANCELLED"


def test_a_stop_wins_over_a_cancel_and_a_cancel_after_a_stop_is_ignored() -> None:
    cancelled_first = native()
    cancelled_first.on_cancel_requested(CANCELLED_HERE)
    cancelled_first.on_downstream(stop_packet(operator_stop()), 1.0)
    assert only_sent(finish_after_stop(cancelled_first, 1.1)).HasField("stop_confirm")

    stopped_first = native()
    stopped_first.on_downstream(stop_packet(operator_stop()), 1.0)
    assert stopped_first.on_cancel_requested(CANCELLED_HERE) == ()

    for core in (cancelled_first, stopped_first):
        end(core, "ABORTED")
        assert core.result(now=2.0, packets_sent=1).state is SessionState.STOPPED


def test_a_cancel_after_the_final_packet_changes_nothing() -> None:
    core = native()
    core.on_agent_returned(1.0)

    assert core.on_cancel_requested(CANCELLED_HERE) == ()

    end(core)
    assert core.result(now=1.5, packets_sent=3).state is SessionState.FINISHED


def test_the_stream_ending_under_a_running_agent_cancels_it_and_nothing_more_is_sent() -> None:
    core = native()

    actions = core.on_stream_end("UNAVAILABLE", "connection lost", {}, {})

    assert of_type(actions, CancelAgent) and not of_type(actions, CancelCall)
    assert core.on_agent_returned(1.0) == (CloseUpstream(),)
    assert core.on_end_timeout() == ()


def test_no_end_after_the_final_packet_resets_the_call() -> None:
    core = native()
    core.on_agent_returned(1.0)
    assert of_type(core.on_end_timeout(), CancelCall)


def test_dispatcher_error_packets_are_reported_and_kept() -> None:
    core = native()
    packet = down(error=wire.pb.ErrorSignal(code="PACKET_AFTER_FINISH", message="dropped", seq=9))

    actions = core.on_downstream(packet, 0.1)

    assert list(actions) == [Report("dispatcher.error_packet", "PACKET_AFTER_FINISH", "dropped", 9)]
    core.on_agent_returned(1.0)
    end(core)
    assert core.result(now=1.0, packets_sent=9).errors == ("PACKET_AFTER_FINISH: dropped",)


# -- how it ended -------------------------------------------------------------------------


def test_a_finished_session() -> None:
    core = native(now=100.0)
    core.on_tool_call_sent("call-1", "echo")
    core.on_downstream(tool_result("call-1"), 100.1)
    core.on_downstream(ack(6), 100.2)
    core.on_agent_returned(100.3)
    core.on_stream_end("OK", "", {wire.MetadataKey.SESSION_STATE: "FINISHED"}, {})

    result = core.result(now=101.5, packets_sent=6)

    assert (result.state, result.reason, result.status_code) == (SessionState.FINISHED, "finished", "OK")
    assert result.ok and result.duration_s == pytest.approx(1.5)
    assert (result.packets_sent, result.last_acked_seq, result.tool_calls) == (6, 6, 1)
    assert result.trailers == {wire.MetadataKey.SESSION_STATE: "FINISHED"} and result.stop is None


@pytest.mark.parametrize(
    ("code", "state"),
    [(StopCode.POLICY_VIOLATION, SessionState.STOPPED), (StopCode.IDLE_TIMEOUT, SessionState.EXPIRED)],
)
def test_a_stopped_session_is_stopped_or_expired(code: StopCode, state: SessionState) -> None:
    core = native()
    stop = operator_stop(code)
    core.on_downstream(stop_packet(stop), 1.0)
    finish_after_stop(core, 1.1)
    end(core, "DEADLINE_EXCEEDED", "stopped")

    result = core.result(now=2.0, packets_sent=4)

    assert (result.state, result.reason, result.stop) == (state, stop.describe(), stop)
    assert result.status_code == "DEADLINE_EXCEEDED" and not result.ok


def test_a_stop_read_only_from_the_trailers_is_still_the_outcome() -> None:
    core = native()
    trailers = {
        wire.MetadataKey.STOP_CODE: "SHUTDOWN",
        wire.MetadataKey.STOP_REASON: "draining",
        wire.MetadataKey.STOP_CAUSE: "SIGTERM",
        wire.MetadataKey.STOP_PATH: "shutdown:SIGTERM,dispatcher:test",
        wire.MetadataKey.STOP_ID: "s-9",
        wire.MetadataKey.STOP_TO_CONFIRM_MS: "2.25",
    }
    core.on_stream_end("UNAVAILABLE", "shutting down", trailers, {})
    core.on_agent_returned(1.0)

    result = core.result(now=1.0, packets_sent=2)

    assert result.state is SessionState.STOPPED and result.stop is not None
    assert (result.stop.code, result.stop.reason, result.stop.cause) == (StopCode.SHUTDOWN, "draining", "SIGTERM")
    assert result.stop.path == ("shutdown:SIGTERM", "dispatcher:test") and result.stop.stop_id == "s-9"
    assert result.stop_to_confirm_ms == 2.25 and result.stop_to_halt_ms is None


def test_an_unknown_stop_code_in_the_trailers_is_unspecified() -> None:
    core = native()
    core.on_stream_end("ABORTED", "", {wire.MetadataKey.STOP_CODE: "FROM_THE_FUTURE"}, {})
    stop = core.result(now=1.0, packets_sent=1).stop
    assert stop is not None and stop.code is StopCode.UNSPECIFIED and stop.path == ()


def test_a_cancelled_session() -> None:
    core = native()
    core.on_cancel_requested(CANCELLED_HERE)
    core.on_agent_returned(1.0)
    end(core, "CANCELLED", "cancelled by the commander")

    result = core.result(now=1.0, packets_sent=3)

    assert (result.state, result.reason, result.status_code) == (SessionState.CANCELLED, CANCELLED_HERE, "CANCELLED")


@pytest.mark.parametrize(
    ("code", "state"), [("CANCELLED", SessionState.CANCELLED), ("UNAVAILABLE", SessionState.FAILED)]
)
def test_a_stream_ended_by_the_other_side_or_the_network(code: str, state: SessionState) -> None:
    core = native()
    core.on_stream_end(code, "gone", {}, {})
    core.on_agent_returned(1.0)

    result = core.result(now=1.0, packets_sent=3)

    assert (result.state, result.reason) == (state, f"{code}: gone")


@pytest.mark.parametrize(("code", "reason"), [("OK", "agent failed: KeyError: 'x'"), ("INTERNAL", "INTERNAL: oops")])
def test_a_failed_agent_is_the_outcome_unless_the_stream_failed_too(code: str, reason: str) -> None:
    core = native()
    core.on_agent_failed(KeyError("x"), 1.0)
    end(core, code, "oops")

    result = core.result(now=1.0, packets_sent=3)

    assert (result.state, result.reason) == (SessionState.FAILED, reason)


def test_a_result_before_the_stream_ended_says_so() -> None:
    result = native().result(now=1.0, packets_sent=0)
    assert (result.state, result.status_code, result.status_details) == (
        SessionState.FAILED,
        "UNKNOWN",
        "stream did not end",
    )
