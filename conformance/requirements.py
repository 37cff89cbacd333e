"""The requirement registry: every check the kit makes, with its level and the sentence it grades.

Each requirement is one normative sentence of the contract — a comment in
`proto/southwest/ai/agent/v1/agent.proto` or a row of the README's tables — graded by one
or more tests of `conformance/suite` that carry `@requirement("ID")`. `docs/contract.md`
is generated from this table (`scripts/gen_requirements_doc.py`); a unit test keeps them equal.

Ids are stable: never renumber or reuse one; retire an id by leaving it out and noting it
in `RETIRED`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["AREAS", "BY_ID", "REQUIREMENTS", "RETIRED", "Level", "Requirement", "areas_of"]


class Level(enum.Enum):
    """RFC 2119 levels. A MUST failure fails the run; SHOULD and MAY failures only with --strict."""

    MUST = "MUST"
    SHOULD = "SHOULD"
    MAY = "MAY"


@dataclass(frozen=True, slots=True)
class Requirement:
    id: str
    level: Level
    sentence: str  # the contract's own words (quoted), or the table row it grades
    source: str  # where the sentence lives
    checks: str  # what the kit does to grade it

    @property
    def area(self) -> str:
        return self.id.split("-", 1)[0]


# Area prefix -> what it covers (the order of the summary table and the doc).
AREAS: dict[str, str] = {
    "HS": "handshake: Hello / Welcome, session ids",
    "SESS": "session lifecycle: a full session, ending it, response metadata",
    "COMPAT": "seed-era clients: no Hello, no session_id, no seq, no call_id",
    "TOOL": "tool calls: correlation, concurrency, tool errors",
    "ACK": "acknowledgements",
    "INPUT": "bad input answered without ending the stream, or ending it with a defined status",
    "SEQ": "sequence numbers",
    "AFTER": "packets after the end of a session",
    "STOP": "stops: the StopSignal, cancelling tool calls, ending the stream",
    "KA": "keepalive policy",
    "HEALTH": "standard health service",
    "REFL": "server reflection",
    "CTRL": "the SessionControlService API (control.proto), when served",
}

_PROTO = "agent.proto"
_README = "README"

REQUIREMENTS: tuple[Requirement, ...] = (
    # -- handshake ------------------------------------------------------------------
    Requirement(
        "HS-001", Level.MUST,
        "The dispatcher's answer to Hello; always the first downstream packet when sent.",
        f"{_PROTO}: DownstreamPacket.welcome",
        "sends Hello as the first packet; the first downstream packet must be a Welcome",
    ),
    Requirement(
        "HS-002", Level.MUST,
        "The session id in force (the one asked for, or a new one).",
        f"{_PROTO}: Welcome.session_id",
        "Hello with a session id gets exactly that id back; Hello without one gets a non-empty id",
    ),
    Requirement(
        "HS-003", Level.SHOULD,
        "Response metadata. Initial: `x-session-id`, `x-dispatcher-id`.",
        f"{_README}: The contract",
        "the initial metadata of a Hello session carries x-session-id (= Welcome.session_id) and x-dispatcher-id",
    ),
    Requirement(
        "HS-004", Level.MUST,
        "An id already used by another open stream is refused with ALREADY_EXISTS.",
        f"{_PROTO}: Hello.session_id",
        "a second stream asking for the id of an open session ends ALREADY_EXISTS; the first session still works",
    ),
    Requirement(
        "HS-005", Level.MUST,
        "malformed session id (not 1–128 printable ASCII characters, spaces excluded) | INVALID_ARGUMENT | refused",
        f"{_README}: Bad input",
        "Hello asking for a 129-character, a non-ASCII or a control-character session id ends the stream "
        "INVALID_ARGUMENT",
    ),
    # -- session lifecycle ----------------------------------------------------------------
    Requirement(
        "SESS-001", Level.MUST,
        "True on the last chunk of the answer: the session is FINISHED. The commander should half-close after it.",
        f"{_PROTO}: ContentChunk.is_finish",
        "Hello, thought, content, an echo tool call and its result, is_finish, half-close: the stream ends OK",
    ),
    Requirement(
        "SESS-002", Level.SHOULD,
        "Trailing, on every end: `x-session-id`, `x-session-state`.",
        f"{_README}: The contract",
        "a finished session's trailers carry its session id and x-session-state FINISHED",
    ),
    Requirement(
        "SESS-003", Level.MUST,
        "When set it must equal the session id in force (the one in Welcome / the `x-session-id` response "
        "header); a packet naming another session ends the stream with INVALID_ARGUMENT.",
        f"{_PROTO}: UpstreamPacket.session_id",
        "a packet naming another session id ends the stream INVALID_ARGUMENT",
    ),
    Requirement(
        "SESS-004", Level.SHOULD,
        "Upstream: the commander reports a failure of its own (the LLM provider failed, the agent raised); "
        "the session ends FAILED; with code CANCELLED the commander ends the session on purpose (its user or "
        "caller cancelled) and it ends CANCELLED.",
        f"{_PROTO}: ErrorSignal",
        "an upstream ErrorSignal then a half-close ends the stream with x-session-state FAILED (any code) "
        "or CANCELLED (code CANCELLED)",
    ),
    # -- seed-era clients ------------------------------------------------------------------
    Requirement(
        "COMPAT-001", Level.MUST,
        "A client built from the original file alone (no Hello, no session_id, no seq, no call_id) still gets "
        "a working session.",
        f"{_PROTO}: file header",
        "thought, an echo tool call, content and is_finish with no Hello, session_id, seq or call_id: the echo "
        "result arrives and the stream ends OK",
    ),
    Requirement(
        "COMPAT-002", Level.MUST,
        "the dispatcher assigns a session id (reported in the response's initial metadata as `x-session-id`)",
        f"{_PROTO}: file header",
        "a session without Hello or session_id gets a non-empty x-session-id in its initial metadata",
    ),
    Requirement(
        "COMPAT-003", Level.MUST,
        'Empty = the dispatcher assigns one ("seq-<seq>") and returns results of such calls in request order.',
        f"{_PROTO}: ToolCallRequest.call_id",
        "a slow sleep call then a fast echo call, both without call_id: results come sleep first, with call "
        "ids seq-1 and seq-2",
    ),
    Requirement(
        "COMPAT-004", Level.MUST,
        "For unsequenced sessions: the number of packets received so far.",
        f"{_PROTO}: Ack.seq",
        "after three unsequenced packets and is_finish, the last Ack's seq is 4",
    ),
    Requirement(
        "COMPAT-005", Level.MUST,
        "A client that sends `session_id` in its packets gets that id.",
        f"{_README}: The contract",
        "a session whose packets carry session_id (no Hello) sees that id in x-session-id",
    ),
    # -- tools -----------------------------------------------------------------------------
    Requirement(
        "TOOL-001", Level.MUST,
        "Echoes ToolCallRequest.call_id (or the id the dispatcher assigned).",
        f"{_PROTO}: ToolCallResult.call_id",
        "an echo call with call_id gets a result with the same call_id, tool_name and the arguments back",
    ),
    Requirement(
        "TOOL-002", Level.MUST,
        "Tool calls of this session that run at once; more wait their turn.",
        f"{_PROTO}: SessionLimits.max_concurrent_tool_calls",
        "a slow sleep call then a fast echo call with their own call_ids: the echo result arrives first, "
        "then the sleep result, each with its call_id (skipped when the limit is 1)",
    ),
    Requirement(
        "TOOL-003", Level.MUST,
        "No tool of that name is registered.",
        f"{_PROTO}: ToolErrorCode.TOOL_ERROR_CODE_UNKNOWN_TOOL",
        "a call to an unregistered tool gets ToolCallResult.error UNKNOWN_TOOL with its call_id; the stream "
        "goes on (an echo call still works)",
    ),
    Requirement(
        "TOOL-004", Level.MUST,
        "arguments_json is not a JSON object or fails the tool's schema.",
        f"{_PROTO}: ToolErrorCode.TOOL_ERROR_CODE_INVALID_ARGUMENTS",
        "invalid JSON, a JSON array, and sleep with a string for seconds each get INVALID_ARGUMENTS; the "
        "stream goes on",
    ),
    Requirement(
        "TOOL-005", Level.MUST,
        "The dispatcher runs the tool for at most min(this, the tool's own timeout).",
        f"{_PROTO}: ToolCallRequest.timeout_ms",
        "sleep 30 s with timeout_ms 200 gets ToolCallResult.error TIMEOUT well before 30 s",
    ),
    Requirement(
        "TOOL-006", Level.MUST,
        "duplicate `call_id` | `ErrorSignal DUPLICATE_CALL_ID` (the call does not run again) | goes on",
        f"{_README}: Bad input",
        "a second call reusing a call_id gets ErrorSignal DUPLICATE_CALL_ID naming it, and no second result",
    ),
    # -- acks ------------------------------------------------------------------------------
    Requirement(
        "ACK-001", Level.MUST,
        "Acks are sparse: at most one every N packets or T milliseconds (Welcome.limits says which), and always "
        "right after a tool call, a finish or a stop confirmation.",
        f"{_PROTO}: Ack",
        "an Ack covering the packet arrives after a slow tool call (before its result), after is_finish and "
        "after a StopConfirm (before the stream ends)",
    ),
    Requirement(
        "ACK-002", Level.MUST,
        "Cumulative acknowledgement: every upstream packet up to and including `seq` has been received and "
        "processed.",
        f"{_PROTO}: Ack",
        "over packets with gaps in seq, Ack seqs never decrease, never exceed the highest seq sent, and the "
        "tool call's Ack covers it",
    ),
    Requirement(
        "ACK-003", Level.MUST,
        "An Ack is sent at least every this many packets... ...or this long after the first unacknowledged "
        "packet.",
        f"{_PROTO}: SessionLimits.ack_every_packets, ack_interval_ms",
        "after a few content packets (fewer than ack_every_packets), an Ack covering them arrives within "
        "ack_interval_ms (plus the kit's wait)",
    ),
    # -- bad input -------------------------------------------------------------------------
    Requirement(
        "INPUT-001", Level.MUST,
        "packet with no payload (or a oneof member this build does not know) | `ErrorSignal MISSING_PAYLOAD` "
        "| goes on",
        f"{_README}: Bad input",
        "a packet with no payload gets ErrorSignal MISSING_PAYLOAD with its seq; an echo call still works",
    ),
    Requirement(
        "INPUT-002", Level.MUST,
        "Opening handshake. When used it must be the first packet of the stream.",
        f"{_PROTO}: UpstreamPacket.hello",
        "a Hello after other packets gets ErrorSignal HELLO_NOT_FIRST, a second Hello DUPLICATE_HELLO; the "
        "stream goes on",
    ),
    Requirement(
        "INPUT-003", Level.MUST,
        "`StopConfirm` without a stop | `ErrorSignal UNEXPECTED_STOP_CONFIRM` | goes on",
        f"{_README}: Bad input",
        "a StopConfirm when no stop was sent gets ErrorSignal UNEXPECTED_STOP_CONFIRM; an echo call still works",
    ),
    Requirement(
        "INPUT-004", Level.MUST,
        "bytes that do not parse as an `UpstreamPacket` | INVALID_ARGUMENT | FAILED",
        f"{_README}: Bad input",
        "bytes that are not a protobuf message, first or after a Hello, end the stream INVALID_ARGUMENT",
    ),
    Requirement(
        "INPUT-005", Level.MUST,
        "Largest upstream message accepted, in bytes (bigger: RESOURCE_EXHAUSTED).",
        f"{_PROTO}: SessionLimits.max_receive_message_bytes",
        "a content packet bigger than Welcome.limits.max_receive_message_bytes ends that stream "
        "RESOURCE_EXHAUSTED; a new session on the same connection still works",
    ),
    # -- seq -------------------------------------------------------------------------------
    Requirement(
        "SEQ-001", Level.MUST,
        "Per-session sequence number, set by the commander: 1 for the first packet, strictly increasing "
        "afterwards (gaps allowed).",
        f"{_PROTO}: UpstreamPacket.seq",
        "seqs 1, 5, 9, 20 are accepted: the echo result arrives and the stream ends OK",
    ),
    Requirement(
        "SEQ-002", Level.MUST,
        "A sequenced session whose seq repeats, goes backwards or drops to 0 is ended with INVALID_ARGUMENT.",
        f"{_PROTO}: UpstreamPacket.seq",
        "each of a repeated seq, a lower seq and seq 0 after seq 2 ends the stream INVALID_ARGUMENT",
    ),
    Requirement(
        "SEQ-003", Level.SHOULD,
        "`seq` repeating, going backwards, or missing in a sequenced session | status INVALID_ARGUMENT naming "
        "both seqs | FAILED",
        f"{_README}: Bad input",
        "the status details of a repeated or lower seq name both seqs",
    ),
    # -- after the end ---------------------------------------------------------------------
    Requirement(
        "AFTER-001", Level.MUST,
        "True on the last chunk of the answer: the session is FINISHED. The commander should half-close after "
        "it; packets after it are dropped.",
        f"{_PROTO}: ContentChunk.is_finish",
        "a tool call sent after is_finish never runs (no result) and the stream still ends OK",
    ),
    Requirement(
        "AFTER-002", Level.SHOULD,
        "packets after the finish | dropped, counted, `ErrorSignal PACKET_AFTER_FINISH` | stays FINISHED",
        f"{_README}: Bad input",
        "the packet after is_finish is answered with ErrorSignal PACKET_AFTER_FINISH naming its seq",
    ),
    Requirement(
        "AFTER-003", Level.MUST,
        "The dispatcher cancels the session's running tool calls, drops every later packet, and ends the "
        "stream once the confirmation arrives or `grace_ms` passes.",
        f"{_PROTO}: StopSignal",
        "a tool call sent after the stop never runs: only Acks follow the StopSignal",
    ),
    # -- stops -----------------------------------------------------------------------------
    Requirement(
        "STOP-001", Level.MUST,
        "A content policy matched (e.g. the block-list).",
        f"{_PROTO}: StopCode.STOP_CODE_POLICY_VIOLATION",
        "content containing the stop word gets a StopSignal with code POLICY_VIOLATION, a reason (always "
        "filled), a stop_id and a non-empty path",
    ),
    Requirement(
        "STOP-002", Level.MUST,
        "POLICY_VIOLATION | PERMISSION_DENIED | STOPPED",
        f"{_README}: Stops",
        "after the StopConfirm and half-close, the stream ends PERMISSION_DENIED",
    ),
    Requirement(
        "STOP-003", Level.MUST,
        "The dispatcher cancels the session's running tool calls, drops every later packet, and ends the "
        "stream once the confirmation arrives or `grace_ms` passes.",
        f"{_PROTO}: StopSignal",
        "a stop while a 30 s sleep call runs: no result for that call ever arrives and the stream ends "
        "PERMISSION_DENIED soon after the StopConfirm",
    ),
    Requirement(
        "STOP-004", Level.MUST,
        "The first stop wins; a stop after the finish is moot.",
        f"{_README}: Stops",
        "the stop word mid-answer, more content (stop word included) sent before reading: exactly one "
        "StopSignal, only Acks after it",
    ),
    Requirement(
        "STOP-005", Level.MUST,
        "How long the dispatcher waits for StopConfirm before ending the stream anyway, in milliseconds.",
        f"{_PROTO}: StopSignal.grace_ms",
        "a commander that never confirms and never half-closes: the stream ends PERMISSION_DENIED within "
        "grace_ms (plus the kit's wait)",
    ),
    Requirement(
        "STOP-006", Level.MUST,
        "the dispatcher ends the stream when the confirmation arrives, or when the commander half-closes, or "
        "after `--session-stop-grace-ms` — whichever comes first",
        f"{_README}: Stops",
        "a seed-era client that half-closes after the stop without StopConfirm: the stream ends "
        "PERMISSION_DENIED at once (well before grace_ms)",
    ),
    Requirement(
        "STOP-007", Level.SHOULD,
        "after a stop also `x-stop-code`, `x-stop-reason`, `x-stop-cause`, `x-stop-path` (comma-separated), "
        "`x-stop-id`, `x-stop-confirmed`, `x-stop-to-confirm-ms`.",
        f"{_README}: The contract",
        "a confirmed stop's trailers: x-session-state STOPPED, x-stop-code POLICY_VIOLATION, x-stop-id = "
        "stop_id, x-stop-confirmed true, x-stop-reason and x-stop-path present",
    ),
    # -- transport -------------------------------------------------------------------------
    Requirement(
        "KA-001", Level.SHOULD,
        "a client pinging faster is refused with GOAWAY `too_many_pings`",
        f"{_README}: Keepalive",
        "a client pinging about once a second on a silent session is refused (UNAVAILABLE, Too many pings) "
        "within the kit's keepalive budget",
    ),
    Requirement(
        "HEALTH-001", Level.MUST,
        "`grpc.health.v1.Health` (aio servicer) reports `\"\"` and `southwest.ai.agent.v1.AgentInteraction`",
        f"{_README}: Health and reflection",
        "Health.Check answers SERVING for \"\" and for southwest.ai.agent.v1.AgentInteraction",
    ),
    Requirement(
        "REFL-001", Level.SHOULD,
        "server reflection is on (`--no-server-reflection` to turn it off), so `grpcurl`/`buf curl` work "
        "without the proto.",
        f"{_README}: Health and reflection",
        "reflection lists AgentInteraction and Health and resolves ChatStream as a bidirectional stream of "
        "UpstreamPacket / DownstreamPacket",
    ),
    Requirement(
        "CTRL-001", Level.MAY,
        "The control plane: operators and backend services list, inspect, watch, stop and start agent sessions. "
        "Served by the dispatcher beside AgentInteraction; the `dispatcherctl` CLI speaks only this service.",
        "control.proto: file header",
        "reflection lists southwest.ai.agent.v1.SessionControlService and resolves its methods; skipped (and "
        "every CTRL requirement with it) when the target does not serve it",
    ),
    Requirement(
        "CTRL-002", Level.MUST,
        "GetSession: one session, with its running tool calls. Unknown id: NOT_FOUND.",
        "control.proto: SessionControlService.GetSession",
        "a session open on ChatStream is listed by ListSessions and shown by GetSession with a live state and "
        "its packets; an unknown id is NOT_FOUND for GetSession, StopSession and WatchSession",
    ),
    Requirement(
        "CTRL-003", Level.MUST,
        "Stops a session and answers once the commander has confirmed the stop or the stream ended without a "
        "confirmation. An already-ended session is not an error: the answer carries its recorded outcome.",
        "control.proto: SessionControlService.StopSession",
        "StopSession on a live session sends a StopSignal (code OPERATOR, path = caller first, then the "
        "dispatcher) down its stream; after the kit confirms, the answer is STOP_RESULT_CONFIRMED with a "
        "stop_to_confirm_us; stopping it again answers STOP_RESULT_ALREADY_ENDED with the same stop",
    ),
    Requirement(
        "CTRL-004", Level.MUST,
        "a watcher that reconnects passes the last seq it saw + 1 and gets every later event exactly once",
        "control.proto: WatchSessionRequest.from_seq",
        "events carry dense seqs from 1; a watcher that reads some events, disconnects and reconnects from the "
        "last seq + 1 sees every event exactly once, ending with the terminal state change",
    ),
    Requirement(
        "CTRL-005", Level.MUST,
        "Older than the oldest kept event, or beyond the next one: OUT_OF_RANGE. / Why ... Required "
        "(INVALID_ARGUMENT if empty).",
        "control.proto: WatchSessionRequest.from_seq, StopSessionRequest.reason",
        "WatchSession from a seq beyond the next event is OUT_OF_RANGE; StopSession without a reason is "
        "INVALID_ARGUMENT and leaves the session running",
    ),
)  # fmt: skip

BY_ID: dict[str, Requirement] = {r.id: r for r in REQUIREMENTS}

# Ids that were used once and must never be reused: id -> why it was retired.
RETIRED: dict[str, str] = {}


def areas_of(ids: set[str]) -> set[str]:
    return {BY_ID[i].area for i in ids}


def _check_registry() -> None:
    assert len(BY_ID) == len(REQUIREMENTS), "duplicate requirement id"
    for r in REQUIREMENTS:
        assert r.area in AREAS, f"{r.id}: unknown area {r.area}"
        assert r.id not in RETIRED, f"{r.id} is retired and must not be reused"


_check_registry()
