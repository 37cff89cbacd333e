"""Property-based: whatever packet sequence a commander sends, the session machine answers with
defined actions, ends in exactly one defined outcome, and never writes anything but acks after
a stop. Generated sequences, no network."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.config import PolicyConfig, SessionConfig
from dispatcher.core.actions import EndStream, Send, StartTool
from dispatcher.core.policies import Policy
from dispatcher.core.session import Session
from dispatcher.core.status import ERROR_STATUS, STOP_STATUS
from shared import wire
from shared.model import StopCode, StopInfo
from tests.strategies import upstream_packets

# Every status an outcome may carry: the table's, and the three a session can end with besides.
DEFINED = set(ERROR_STATUS.values()) | set(STOP_STATUS.values()) | {"OK", "CANCELLED", "INTERNAL"}


def machine() -> Session:
    return Session(
        session_id="prop",
        dispatcher_hop="dispatcher:prop",
        config=SessionConfig(stop_grace_ms=1000, finish_linger_ms=100, ack_every_packets=4),
        policy=Policy(PolicyConfig(block_patterns=("forbidden",), max_tool_calls=5, max_content_chars=200)),
        limits=wire.pb.SessionLimits(),
        now=0.0,
    )


@settings(max_examples=300, deadline=None)
@given(
    packets=st.lists(upstream_packets(), min_size=1, max_size=25),
    stop_at=st.one_of(st.none(), st.integers(min_value=0, max_value=25)),
)
def test_any_packet_sequence_gets_defined_actions_and_one_outcome(
    packets: list[wire.pb.UpstreamPacket], stop_at: int | None
) -> None:
    session = machine()
    ends: list[EndStream] = []
    stop_sent = False
    now = 0.0
    for index, packet in enumerate(packets):
        now += 0.01
        actions = list(session.on_packet(packet, now))
        if index == stop_at:
            actions += session.request_stop(StopInfo(StopCode.OPERATOR, "prop", path=("operator:prop",)), now)
        for action in actions:
            if isinstance(action, Send):
                kind = action.packet.WhichOneof("signal")
                assert kind in {"ack", "stop", "tool_result", "welcome", "error"}, action
                if stop_sent:
                    assert kind == "ack", f"{kind} after the stop"
                stop_sent = stop_sent or kind == "stop"
            elif isinstance(action, StartTool):
                result = wire.pb.ToolCallResult(call_id=action.call_id, tool_name=action.tool_name, result_json="{}")
                for done in session.on_tool_done(action.call_id, result, now):
                    if isinstance(done, Send) and stop_sent:
                        assert done.packet.HasField("ack")
                    if isinstance(done, EndStream):
                        ends.append(done)
            elif isinstance(action, EndStream):
                ends.append(action)
        if session.is_ended:
            break
    if not session.is_ended:
        ends += [a for a in session.on_upstream_closed(now) if isinstance(a, EndStream)]
        for _ in range(3):  # timers: grace, linger
            now += 2.0
            ends += [a for a in session.on_timer(now) if isinstance(a, EndStream)]
    outcome = session.outcome or session.on_peer_gone("test over")
    assert len(ends) <= 1, ends  # exactly one end of the stream, at most
    assert outcome.status in DEFINED, outcome
    assert "Traceback" not in outcome.reason and "<class" not in outcome.reason
