"""Hypothesis strategies for what peers send: upstream packets and control requests.

Biased towards the edges: empty and huge strings, ids that are not ids, JSON that is deeply
nested or not JSON at all, seqs that repeat or go backwards, enum numbers nobody defined.
"""

from __future__ import annotations

from hypothesis import strategies as st

from shared import wire

__all__ = ["control_requests", "json_texts", "upstream_packets"]

_NESTING = st.integers(min_value=1, max_value=200_000)

json_texts = st.one_of(
    st.just(""),
    st.just("{}"),
    st.just('{"expression": "6 * 7"}'),
    st.just("[1, 2]"),
    st.just("NaN"),
    st.just('{"a": Infinity}'),
    _NESTING.map(lambda n: "[" * n),  # unterminated and nested past any recursion limit
    _NESTING.map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.text(max_size=40),
)

_ids = st.one_of(
    st.just(""), st.text(max_size=12), st.text(alphabet="ab-1", min_size=1, max_size=8), st.just("x" * 200)
)
_tools = st.sampled_from(["echo", "clock", "calculator", "nope", "", "sleep"])
_seqs = st.one_of(
    st.just(0), st.integers(min_value=-3, max_value=12), st.integers(min_value=2**62, max_value=2**63 - 1)
)


@st.composite
def upstream_packets(draw: st.DrawFn) -> wire.pb.UpstreamPacket:
    kind = draw(st.sampled_from(["thought", "content", "tool_call", "error", "hello", "stop_confirm", "none"]))
    seq = draw(_seqs)
    session_id = draw(st.one_of(st.just(""), _ids))
    packet = wire.pb.UpstreamPacket(seq=max(seq, 0), session_id=session_id)
    if kind == "thought":
        packet.thought.CopyFrom(wire.pb.ThoughtChain(step_name=draw(_ids), delta=draw(st.text(max_size=30))))
    elif kind == "content":
        packet.content.CopyFrom(wire.pb.ContentChunk(text=draw(st.text(max_size=30)), is_finish=draw(st.booleans())))
    elif kind == "tool_call":
        packet.tool_call.CopyFrom(
            wire.pb.ToolCallRequest(
                tool_name=draw(_tools),
                arguments_json=draw(json_texts),
                call_id=draw(_ids),
                timeout_ms=draw(st.integers(min_value=0, max_value=50)),
            )
        )
    elif kind == "error":
        packet.error.CopyFrom(wire.pb.ErrorSignal(code=draw(st.sampled_from(["", "CANCELLED", "X"])), message="m"))
    elif kind == "hello":
        packet.hello.CopyFrom(wire.pb.Hello(session_id=draw(_ids), agent_name=draw(_ids)))
    elif kind == "stop_confirm":
        packet.stop_confirm.CopyFrom(wire.pb.StopConfirm(stop_id=draw(_ids)))
    return packet


@st.composite
def control_requests(draw: st.DrawFn, session_ids: st.SearchStrategy[str]) -> tuple[str, object]:
    """(method name, request) for any SessionControlService method."""
    method = draw(st.sampled_from(["ListSessions", "GetSession", "StopSession", "WatchSession", "StartSession", "Ask"]))
    session_id = draw(session_ids)
    if method == "ListSessions":
        return method, wire.ctl.ListSessionsRequest(
            page_size=draw(st.integers(min_value=0, max_value=5000)),
            page_token=draw(st.one_of(st.just(""), st.text(max_size=20))),
            states=draw(st.lists(st.integers(min_value=0, max_value=20), max_size=3)),
        )
    if method == "GetSession":
        return method, wire.ctl.GetSessionRequest(session_id=session_id)
    if method == "StopSession":
        return method, wire.ctl.StopSessionRequest(
            session_id=session_id,
            reason=draw(st.one_of(st.just(""), st.just(" "), st.text(max_size=20))),
            code=draw(st.integers(min_value=0, max_value=12)),  # type: ignore[arg-type]
        )
    if method == "WatchSession":
        return method, wire.ctl.WatchSessionRequest(
            session_id=session_id, from_seq=draw(st.integers(min_value=0, max_value=2**40))
        )
    fields = {
        "session_id": session_id,
        "input_text": draw(st.one_of(st.just(""), st.text(max_size=20))),
        "input_json": draw(json_texts),
        "wait_for_commander_ms": draw(st.integers(min_value=0, max_value=50)),
    }
    if method == "StartSession":
        return method, wire.ctl.StartSessionRequest(**fields)  # type: ignore[arg-type]
    return method, wire.ctl.AskRequest(**fields)  # type: ignore[arg-type]
