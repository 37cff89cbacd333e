"""dispatcherctl without a network: enum names, the status -> one-line error table, and what
tables, key/value views, stop lines, event lines and JSON lines look like for messages built
here. The CLI's usage errors go through click's runner (no channel is opened for them)."""

from __future__ import annotations

import io
import json
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from dispatcherctl import cli
from dispatcherctl.client import ClientConfig, CtlError, StopAnswer
from dispatcherctl.errors import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
    error_for_status,
    is_transport_failure,
)
from dispatcherctl.names import parse_kinds, parse_states, parse_stop_code, result_name, state_name
from dispatcherctl.render import (
    SESSION_HEADERS,
    StopTally,
    format_age,
    format_time,
    health_line,
    json_line,
    outcome_text,
    plain_table,
    print_pairs,
    print_table,
    session_pairs,
    session_row,
    stop_json,
    stop_line,
)
from dispatcherctl.stream import EventPrinter, event_line, safe_text
from shared import wire

pytestmark = pytest.mark.timeout(10)

NOW_MS = 1_800_000_000_000
TARGET = "127.0.0.1:50051"
ctl, pb = wire.ctl, wire.pb


def stop_signal(**fields: Any) -> Any:
    defaults: dict[str, Any] = {
        "reason": "maintenance",
        "code": pb.STOP_CODE_OPERATOR,
        "cause": "ticket=INC-42",
        "path": ["operator:alice", "dispatcher:host"],
        "stop_id": "s1",
    }
    return pb.StopSignal(**{**defaults, **fields})


def stopped_outcome(**fields: Any) -> Any:
    defaults: dict[str, Any] = {
        "state": ctl.SESSION_STATE_STOPPED,
        "reason": "maintenance",
        "ended_by": "operator:alice",
        "status": "ABORTED",
        "error_code": "OPERATOR",
        "stop": stop_signal(),
        "stop_confirmed": True,
        "stop_to_confirm_us": 1420,
        "ended_at_ms": NOW_MS - 2_000,
    }
    return ctl.SessionOutcome(**{**defaults, **fields})


def session_info(**fields: Any) -> Any:
    defaults: dict[str, Any] = {
        "session_id": "sess-1",
        "state": ctl.SESSION_STATE_ACTIVE,
        "commander": "scripted",
        "commander_peer": "ipv4:127.0.0.1:40112",
        "started_by": "backend:web",
        "dispatcher_id": "dispatcher:host",
        "started_at_ms": NOW_MS - 125_000,
        "last_activity_ms": NOW_MS - 400,
        "packets_in": {"content": 10, "thought": 3, "tool_call": 1},
        "packets_out": {"ack": 2, "tool_result": 1},
        "tool_calls_running": 1,
        "tool_calls_done": 3,
        "first_event_seq": 1,
        "last_event_seq": 42,
    }
    return ctl.SessionInfo(**{**defaults, **fields})


def event(seq: int, **payload: Any) -> Any:
    return ctl.SessionEvent(session_id="sess-1", seq=seq, **payload)


# -- names -----------------------------------------------------------------------------------


def test_states_are_case_insensitive_with_or_without_prefix() -> None:
    assert parse_states(["Active", "session_state_open"]) == ["SESSION_STATE_OPEN", "SESSION_STATE_ACTIVE"]
    assert parse_states(["awaiting_tool,STOPPED"]) == ["SESSION_STATE_AWAITING_TOOL", "SESSION_STATE_STOPPED"]
    assert parse_states([]) == []


def test_live_and_ended_are_the_non_terminal_and_terminal_states() -> None:
    live = ["SESSION_STATE_OPEN", "SESSION_STATE_ACTIVE", "SESSION_STATE_AWAITING_TOOL", "SESSION_STATE_STOPPING"]
    live.append("SESSION_STATE_DETACHED")
    assert parse_states(["live"]) == live
    assert parse_states(["ENDED"]) == [
        "SESSION_STATE_FINISHED",
        "SESSION_STATE_STOPPED",
        "SESSION_STATE_FAILED",
        "SESSION_STATE_CANCELLED",
        "SESSION_STATE_EXPIRED",
    ]
    assert parse_states(["live", "open"]) == live  # no duplicates


@pytest.mark.parametrize("bad", ["bogus", "unspecified", "SESSION_STATE_UNSPECIFIED"])
def test_an_unknown_state_names_the_accepted_ones(bad: str) -> None:
    with pytest.raises(ValueError, match=r"unknown state .*one of: open, active.*, live, ended\)"):
        parse_states([bad])


def test_stop_codes_and_event_kinds() -> None:
    assert parse_stop_code("operator") == "STOP_CODE_OPERATOR"
    assert parse_stop_code("Policy_Violation") == "STOP_CODE_POLICY_VIOLATION"
    assert parse_stop_code("stop_code_idle_timeout") == "STOP_CODE_IDLE_TIMEOUT"
    with pytest.raises(ValueError, match=r"unknown stop code 'later'.*user_cancel"):
        parse_stop_code("later")
    assert parse_kinds(["content", "TOOL_CALL,state_change"]) == [
        "EVENT_KIND_CONTENT",
        "EVENT_KIND_TOOL_CALL",
        "EVENT_KIND_STATE_CHANGE",
    ]
    with pytest.raises(ValueError, match="unknown event kind"):
        parse_kinds(["tokens"])
    assert ctl.StopSessionRequest(code=parse_stop_code("timeout")).code == pb.STOP_CODE_TIMEOUT


def test_names_of_numbers_including_unknown_ones() -> None:
    assert state_name(ctl.SESSION_STATE_AWAITING_TOOL) == "AWAITING_TOOL"
    assert state_name(99) == "SESSION_STATE_99"
    assert result_name(ctl.STOP_RESULT_ALREADY_ENDED) == "ALREADY_ENDED"


# -- errors ----------------------------------------------------------------------------------

REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
    "Failed to connect to remote host: Connection refused"
)
NO_NAME = (
    "errors resolving nope.invalid:1: [field:hostname lookup error:address lookup failed for "
    "nope.invalid:1: Domain name not found]"
)


@pytest.mark.parametrize(
    ("code", "details", "session_id", "connected", "message", "exit_code"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            REFUSED,
            "",
            False,
            f"cannot reach dispatcher at {TARGET}: Failed to connect to remote host: Connection refused",
            EXIT_UNREACHABLE,
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            NO_NAME,
            "",
            False,
            f"cannot reach dispatcher at {TARGET}: name resolution failed: Domain name not found",
            EXIT_UNREACHABLE,
        ),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            "",
            False,
            f"cannot reach dispatcher at {TARGET}: no connection within 10 s",
            EXIT_UNREACHABLE,
        ),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            "",
            True,
            "DEADLINE_EXCEEDED: no answer within 10 s (raise --timeout)",
            EXIT_FAILED,
        ),
        (grpc.StatusCode.NOT_FOUND, "unknown session", "abc", True, f"no session abc on {TARGET}", EXIT_NOT_FOUND),
        (
            grpc.StatusCode.UNAUTHENTICATED,
            "unknown token",
            "",
            True,
            "authentication failed: unknown token (set --token or DISPATCHER_TOKEN)",
            EXIT_AUTH,
        ),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "role backend may not stop sessions it did not start",
            "abc",
            True,
            "permission denied: role backend may not stop sessions it did not start",
            EXIT_AUTH,
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "no free commander within 2000 ms",
            "",
            True,
            "UNAVAILABLE: no free commander within 2000 ms",
            EXIT_FAILED,
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "reason\nis required", "", True, "INVALID_ARGUMENT: reason is required", 1),
    ],
)
def test_status_to_one_line_error(
    code: grpc.StatusCode, details: str, session_id: str, connected: bool, message: str, exit_code: int
) -> None:
    error = error_for_status(code, details, target=TARGET, session_id=session_id, connected=connected, timeout_s=10)
    assert (error.message, error.exit_code, error.status) == (message, exit_code, code)
    assert "\n" not in error.message


def test_server_unavailable_is_not_a_transport_failure() -> None:
    assert is_transport_failure(REFUSED) and is_transport_failure(NO_NAME)
    assert not is_transport_failure("the dispatcher is shutting down")


def test_client_config_validates() -> None:
    assert ClientConfig(token="t0k").metadata() == (("authorization", "Bearer t0k"),)
    assert ClientConfig().metadata() == ()
    assert ClientConfig(ca_file="/ca.pem").use_tls
    for bad in ({"timeout_s": 0}, {"target": " "}, {"token": "bad\ntoken"}):
        with pytest.raises(ValueError):
            ClientConfig(**bad)


# -- sessions table, show --------------------------------------------------------------------


def test_session_row_has_every_column() -> None:
    row = session_row(session_info(), NOW_MS)
    assert len(row) == len(SESSION_HEADERS)
    assert row == ["sess-1", "ACTIVE", "scripted", "backend:web", "2m05s", "0.4s ago", "14/3", "1/3", ""]
    ended = session_row(session_info(state=ctl.SESSION_STATE_STOPPED, outcome=stopped_outcome()), NOW_MS)
    assert ended[1] == "STOPPED" and ended[-1] == "OPERATOR: maintenance"
    bare = session_row(ctl.SessionInfo(session_id="x"), NOW_MS)
    assert bare == ["x", "UNSPECIFIED", "-", "-", "-", "-", "0/0", "0/0", ""]


def test_plain_table_aligns_columns_without_trailing_spaces() -> None:
    text = plain_table(["ID", "STATE", "NOTE"], [["a", "ACTIVE", ""], ["longer-id", "OPEN", "two\nlines"]])
    assert text.splitlines() == [
        "ID         STATE   NOTE",
        "a          ACTIVE",
        "longer-id  OPEN    two lines",
    ]


def test_print_table_plain_and_rich() -> None:
    rows = [session_row(session_info(), NOW_MS)]
    plain = io.StringIO()
    print_table(SESSION_HEADERS, rows, plain, tty=False)
    assert plain.getvalue().splitlines()[0].startswith("SESSION  STATE   COMMANDER")
    rich_out = io.StringIO()
    print_table(SESSION_HEADERS, [[*rows[0][:-1], "[bold]not markup[/bold]"]], rich_out, tty=True, width=200)
    assert "sess-1" in rich_out.getvalue() and "[bold]not markup[/bold]" in rich_out.getvalue()


def test_show_lists_every_field_and_the_stop_path() -> None:
    response = ctl.GetSessionResponse(
        session=session_info(
            state=ctl.SESSION_STATE_STOPPED, outcome=stopped_outcome(), agent_name="scripted", agent_version="0.1"
        ),
        running_tool_calls=[ctl.RunningToolCall(call_id="c7", tool_name="gate", started_at_ms=NOW_MS - 1_500)],
    )
    pairs = dict(session_pairs(response, NOW_MS))
    assert pairs["commander"] == "scripted (ipv4:127.0.0.1:40112)"
    assert pairs["agent"] == "scripted 0.1"
    assert pairs["packets in"] == "14: content 10, thought 3, tool_call 1"
    assert pairs["tool calls"] == "1 running, 3 done"
    assert pairs["events"] == "seq 1..42"
    assert pairs["running tools"] == "c7 gate (for 1.5s)"
    assert pairs["outcome"] == "STOPPED"
    assert pairs["  stop"] == "OPERATOR: maintenance (ticket=INC-42)"
    assert pairs["  path"] == "operator:alice -> dispatcher:host"
    assert pairs["  confirmed"] == "yes, 1.42 ms after it was sent"
    out = io.StringIO()
    print_pairs(list(pairs.items()), out, tty=False)
    assert "  path           operator:alice -> dispatcher:host\n" in out.getvalue()


def test_formats() -> None:
    assert [format_age(s) for s in (0.42, 12, 185, 7260, 2 * 86400 + 3600)] == [
        "0.4s",
        "12s",
        "3m05s",
        "2h01m",
        "2d01h",
    ]
    assert format_time(1_795_303_516_504) == "2026-11-21T23:25:16.504Z"
    assert format_time(0) == "-"
    assert health_line("", 1) == "SERVING         (server)"
    assert outcome_text(stopped_outcome()) == (
        "STOPPED: OPERATOR: maintenance (ticket=INC-42) via operator:alice -> dispatcher:host (confirmed in 1.42 ms)"
    )
    finished = ctl.SessionOutcome(state=ctl.SESSION_STATE_FAILED, reason="bad seq", error_code="PROTOCOL")
    assert outcome_text(finished) == "FAILED: bad seq [PROTOCOL]"


# -- JSON ------------------------------------------------------------------------------------


def test_json_line_uses_proto_names_enum_names_and_numbers() -> None:
    data = json.loads(json_line(session_info()))
    assert data["session_id"] == "sess-1" and data["state"] == "SESSION_STATE_ACTIVE"
    assert data["last_event_seq"] == 42 and data["packets_in"]["content"] == 10  # 64-bit as numbers
    assert data["packets_dropped"] == 0  # defaults included: a stable shape
    assert "outcome" not in data  # not set: the session has not ended
    assert json.loads(json_line({"last_seq": 3})) == {"last_seq": 3}


# -- stop ------------------------------------------------------------------------------------


def answer(result: Any, **fields: Any) -> StopAnswer:
    response = ctl.StopSessionResponse(session_id="sess-1", result=result, stop=stop_signal(), **fields)
    return StopAnswer("sess-1", response, None, 3.14)


def test_stop_lines_say_how_it_went_first() -> None:
    confirmed = answer(ctl.STOP_RESULT_CONFIRMED, stop_to_confirm_us=1420, outcome=stopped_outcome())
    assert stop_line(confirmed) == (
        "stopped sess-1: confirmed by the commander in 1.42 ms (stop_to_confirm; round trip 3.1 ms) "
        "path operator:alice -> dispatcher:host"
    )
    lost = answer(ctl.STOP_RESULT_NOT_CONFIRMED, outcome=stopped_outcome(reason="grace period passed"))
    assert stop_line(lost) == (
        "not confirmed sess-1: grace period passed (round trip 3.1 ms) path operator:alice -> dispatcher:host"
    )
    ended = answer(
        ctl.STOP_RESULT_ALREADY_ENDED,
        outcome=ctl.SessionOutcome(state=ctl.SESSION_STATE_FINISHED, reason="finished"),
    )
    assert stop_line(ended) == "already ended sess-1: FINISHED (finished)"
    failed = StopAnswer("sess-2", None, CtlError("no session sess-2 on x", EXIT_NOT_FOUND), 1.0)
    assert stop_line(failed) == "failed sess-2: no session sess-2 on x"
    assert stop_json(failed) == {"session_id": "sess-2", "error": "no session sess-2 on x", "exit_code": 4}
    data = stop_json(confirmed)
    assert data["result"] == "STOP_RESULT_CONFIRMED" and data["stop_to_confirm_us"] == 1420
    assert data["round_trip_ms"] == 3.14 and data["stop"]["path"] == ["operator:alice", "dispatcher:host"]

    tally = StopTally()
    for a in (confirmed, ended):
        tally.add(a)
    assert tally.ok and tally.line() == "1 confirmed, 0 not confirmed, 1 already ended"
    tally.add(lost)
    tally.add(failed)
    assert not tally.ok and tally.line() == "1 confirmed, 1 not confirmed, 1 already ended, 1 failed"


# -- watch / ask transcript ------------------------------------------------------------------


def test_event_lines() -> None:
    call = event(4, tool_call=pb.ToolCallRequest(tool_name="calculator", arguments_json='{"e": "2+3"}', call_id="c1"))
    assert event_line(call) == '#4 tool_call calculator {"e": "2+3"} [c1]'
    ok = event(5, tool_result=pb.ToolCallResult(tool_name="calculator", result_json="5", call_id="c1"))
    assert event_line(ok) == "#5 tool_result calculator ok 5 [c1] 0.00 ms"
    error = pb.ToolError(code=pb.TOOL_ERROR_CODE_TIMEOUT, message="too slow")
    failed = event(
        6, tool_result=pb.ToolCallResult(tool_name="gate", call_id="c2", error=error, execution_time_us=1500)
    )
    assert event_line(failed) == "#6 tool_result gate error TIMEOUT: too slow [c2] 1.50 ms"
    cancelled = pb.ToolError(code=pb.TOOL_ERROR_CODE_CANCELLED, message="session stopping: OPERATOR")
    dropped = event(6, tool_result_dropped=pb.ToolCallResult(tool_name="gate", call_id="c3", error=cancelled))
    assert event_line(dropped) == (
        "#6 tool_result_dropped gate error CANCELLED: session stopping: OPERATOR [c3] 0.00 ms"
    )
    assert event_line(event(7, stop=stop_signal())) == (
        "#7 stop OPERATOR: maintenance (ticket=INC-42) path operator:alice -> dispatcher:host"
    )
    confirm = pb.StopConfirm(stop_id="s1", last_seq=6, halt_us=50, discarded_packets=2)
    assert (
        event_line(event(8, stop_confirm=confirm)) == "#8 stop_confirm stop_id s1 halt 0.05 ms, last seq 6, 2 discarded"
    )
    assert event_line(event(9, error=pb.ErrorSignal(code="MODEL", message="boom"))) == "#9 error MODEL: boom"
    change = ctl.StateChange(state=ctl.SESSION_STATE_ACTIVE, reason="generating")
    assert event_line(event(10, state_change=change)) == "#10 state_change ACTIVE: generating"
    ended = ctl.StateChange(state=ctl.SESSION_STATE_STOPPED, outcome=stopped_outcome())
    assert str(event_line(event(11, state_change=ended))).startswith("#11 state_change STOPPED: OPERATOR: maintenance")
    assert event_line(event(12, content=pb.ContentChunk(text="hi"))) is None


def test_printer_streams_deltas_inline_and_events_on_their_own_lines() -> None:
    out = io.StringIO()
    printer = EventPrinter(out, color=False)
    printer.event(event(1, thought=pb.ThoughtChain(step_name="plan", delta="I will ")))
    printer.event(event(2, thought=pb.ThoughtChain(step_name="plan", delta="add.")))
    printer.event(event(3, content=pb.ContentChunk(text="The answer ")))
    printer.event(event(4, content=pb.ContentChunk(text="is \x1b[31m5")))
    printer.event(event(5, stop=stop_signal(path=[])))
    printer.event(event(6, content=pb.ContentChunk(text="line\n")))
    printer.line("last seq 6")
    assert out.getvalue() == (
        "thinking [plan] I will add.\n"
        "The answer is [31m5\n"
        "#5 stop OPERATOR: maintenance (ticket=INC-42) path (no path)\n"
        "line\n"
        "last seq 6\n"
    )


def test_printer_dims_thoughts_on_a_terminal() -> None:
    out = io.StringIO()
    printer = EventPrinter(out, color=True)
    printer.event(event(1, thought=pb.ThoughtChain(step_name="", delta="hmm")))
    printer.end_inline()
    assert out.getvalue() == "\x1b[2mthinking \x1b[0m\x1b[2mhmm\x1b[0m\n"
    assert safe_text("a\tb\nc\x07\x1b[2Jd\r") == "a\tb\nc[2Jd"


# -- CLI usage (no network) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stop", "--reason", "x"], "give either SESSION_ID or --all"),
        (["stop", "abc", "--all", "--reason", "x"], "give either SESSION_ID or --all"),
        (["stop", "abc"], "Missing option '--reason'"),
        (["stop", "abc", "--reason", " "], "must not be empty"),
        (["stop", "abc", "--reason", "x", "--code", "later"], "unknown stop code"),
        (["sessions", "--state", "sleepy"], "unknown state"),
        (["sessions", "--min-age", "10", "--max-age", "5"], "--min-age is more than --max-age"),
        (["watch", "abc", "--kind", "tokens"], "unknown event kind"),
        (["ask"], "give a QUESTION or --json-input"),
        (["ask", "--json-input", "[1]"], "must be a JSON object"),
        (["ask", "q", "--meta", "novalue"], "expected KEY=VALUE"),
        (["--timeout", "0", "sessions"], "--timeout must be more than 0"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    for line in ("3    the dispatcher is unreachable", "4    no such session", "130  interrupted"):
        assert line in result.output
