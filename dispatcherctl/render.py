"""What `dispatcherctl` prints: tables, key/value views, result lines and JSON lines.

Pure functions build rows, pairs and lines from protobuf messages (unit-tested without a
network); `print_table` / `print_pairs` write them as a rich table on a terminal and as
plain aligned text otherwise. JSON is `MessageToDict` with the proto's field names, one
object per line.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from rich import box
from rich.console import Console
from rich.table import Table

from dispatcherctl.client import StopAnswer, health_status_name
from dispatcherctl.names import result_name, state_name, stop_code_name
from shared import wire

__all__ = [
    "SESSION_HEADERS",
    "StopTally",
    "decision_line",
    "decision_text",
    "format_age",
    "format_time",
    "health_line",
    "json_line",
    "message_to_dict",
    "oneline",
    "outcome_detail",
    "outcome_text",
    "plain_table",
    "print_pairs",
    "print_table",
    "session_pairs",
    "session_row",
    "stop_json",
    "stop_line",
]

SESSION_HEADERS: tuple[str, ...] = (
    "SESSION",
    "STATE",
    "COMMANDER",
    "STARTED BY",
    "AGE",
    "LAST ACTIVITY",
    "IN/OUT",
    "TOOLS RUN/DONE",
    "OUTCOME",
)
_NONE = "-"


# -- JSON ------------------------------------------------------------------------------------


def message_to_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data: proto field names, every field (defaults too), enum names,
    64-bit integers as numbers."""
    data: dict[str, Any] = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    return data


def json_line(value: Message | Mapping[str, Any]) -> str:
    """One JSON object on one line (no trailing newline)."""
    data = message_to_dict(value) if isinstance(value, Message) else dict(value)
    return json.dumps(data, ensure_ascii=False)


# -- small formats ---------------------------------------------------------------------------


def oneline(text: str) -> str:
    """`text` with every run of whitespace (newlines included) as one space."""
    return " ".join(text.split())


def format_age(seconds: float) -> str:
    """A duration for humans: `0.4s`, `12s`, `3m05s`, `2h01m`, `3d04h`."""
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_time(epoch_ms: int) -> str:
    """Epoch milliseconds as UTC ISO 8601 with milliseconds; `-` for 0 (not set)."""
    if epoch_ms <= 0:
        return _NONE
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def _ago(now_ms: int, epoch_ms: int) -> str:
    return f"{format_age((now_ms - epoch_ms) / 1000)} ago" if epoch_ms > 0 else _NONE


def _counts(counts: Mapping[str, int]) -> str:
    """`14: content 10, thought 3, tool_call 1` (largest first); `0` when empty."""
    total = sum(counts.values())
    if not total:
        return "0"
    parts = ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{total}: {parts}"


def _path(stop: Any) -> str:
    return " -> ".join(stop.path) or "(no path)"


def outcome_detail(outcome: Any) -> str:
    """How a session ended, after its state: the stop with its path, or the reason and error code."""
    if outcome.HasField("stop"):
        text = oneline(wire.stop_from_wire(outcome.stop).describe())
        if outcome.stop_confirmed:
            text += f" (confirmed in {outcome.stop_to_confirm_us / 1000:.2f} ms)"
        else:
            text += " (not confirmed)"
        return text
    text = oneline(outcome.reason)
    if outcome.error_code:
        text += f" [{outcome.error_code}]"
    return text.strip()


def outcome_text(outcome: Any) -> str:
    """How a session ended, in one line: `STOPPED: OPERATOR: maintenance via operator:alice -> dispatcher:h`."""
    detail = outcome_detail(outcome)
    return f"{state_name(outcome.state)}: {detail}" if detail else state_name(outcome.state)


def _outcome_cell(info: Any) -> str:
    """The sessions table's OUTCOME: code and reason, for ended sessions only."""
    if not info.HasField("outcome"):
        return ""
    outcome = info.outcome
    code = outcome.error_code or (stop_code_name(outcome.stop.code) if outcome.HasField("stop") else "")
    reason = oneline(outcome.reason or (outcome.stop.reason if outcome.HasField("stop") else ""))
    return f"{code}: {reason}" if code and reason else code or reason


# -- sessions --------------------------------------------------------------------------------


def session_row(info: Any, now_ms: int) -> list[str]:
    """One SessionInfo as the cells of SESSION_HEADERS."""
    return [
        info.session_id,
        state_name(info.state),
        info.commander or _NONE,
        info.started_by or _NONE,
        format_age((now_ms - info.started_at_ms) / 1000) if info.started_at_ms > 0 else _NONE,
        _ago(now_ms, info.last_activity_ms),
        f"{sum(info.packets_in.values())}/{sum(info.packets_out.values())}",
        f"{info.tool_calls_running}/{info.tool_calls_done}",
        _outcome_cell(info),
    ]


def session_pairs(response: Any, now_ms: int) -> list[tuple[str, str]]:
    """A GetSessionResponse as (label, value) lines, every field included."""
    info = response.session
    commander = info.commander or _NONE
    if info.commander_peer:
        commander += f" ({info.commander_peer})"
    agent = " ".join(part for part in (info.agent_name, info.agent_version) if part) or _NONE
    events = f"seq {info.first_event_seq}..{info.last_event_seq}" if info.last_event_seq else "none kept"
    pairs = [
        ("session", info.session_id),
        ("state", state_name(info.state)),
        ("commander", commander),
        ("agent", agent),
        ("started by", info.started_by or _NONE),
        ("dispatcher", info.dispatcher_id or _NONE),
        ("started", f"{format_time(info.started_at_ms)} ({_ago(now_ms, info.started_at_ms)})"),
        ("last activity", f"{format_time(info.last_activity_ms)} ({_ago(now_ms, info.last_activity_ms)})"),
        ("packets in", _counts(info.packets_in)),
        ("packets out", _counts(info.packets_out)),
        ("packets dropped", str(info.packets_dropped)),
        ("tool calls", f"{info.tool_calls_running} running, {info.tool_calls_done} done"),
        ("tokens", usage_text(info.usage) if info.HasField("usage") else _NONE),
        ("events", events),
    ]
    for i, call in enumerate(response.running_tool_calls):
        running = format_age((now_ms - call.started_at_ms) / 1000) if call.started_at_ms > 0 else "?"
        pairs.append(("running tools" if i == 0 else "", f"{call.call_id} {call.tool_name} (for {running})"))
    if info.HasField("outcome"):
        pairs.extend(_outcome_pairs(info.outcome, now_ms))
    return pairs


def usage_text(usage: Any) -> str:
    """A SessionUsage in one line: `120 prompt + 40 completion = 160 (8 reasoning) in 2 requests, gpt-x`."""
    counted = ", counted by the commander" if usage.estimated else ""
    return (
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion = {usage.total_tokens} "
        f"({usage.reasoning_tokens} reasoning) in {usage.model_requests} model request(s), "
        f"{oneline(usage.model) or 'model'}{counted}"
    )


def tool_rows(tools: Sequence[Any]) -> list[list[str]]:
    """ListTools' tools as table rows: name, approval, description, argument schema."""
    return [
        [tool.name, "approval" if tool.requires_approval else "", oneline(tool.description),
         oneline(tool.parameters_json_schema)]
        for tool in tools
    ]  # fmt: skip


TOOL_HEADERS = ("TOOL", "NEEDS", "DESCRIPTION", "ARGUMENTS (JSON SCHEMA)")


def _outcome_pairs(outcome: Any, now_ms: int) -> list[tuple[str, str]]:
    pairs = [
        ("outcome", state_name(outcome.state)),
        ("  reason", oneline(outcome.reason) or _NONE),
        ("  ended by", outcome.ended_by or _NONE),
        ("  status", outcome.status or _NONE),
        ("  error code", outcome.error_code or _NONE),
        ("  ended", f"{format_time(outcome.ended_at_ms)} ({_ago(now_ms, outcome.ended_at_ms)})"),
    ]
    if outcome.HasField("stop"):
        stop = outcome.stop
        stop_text = f"{stop_code_name(stop.code)}: {oneline(stop.reason)}"
        if stop.cause:
            stop_text += f" ({oneline(stop.cause)})"
        confirmed = (
            f"yes, {outcome.stop_to_confirm_us / 1000:.2f} ms after it was sent" if outcome.stop_confirmed else "no"
        )
        pairs += [("  stop", stop_text), ("  path", _path(stop)), ("  confirmed", confirmed)]
    return pairs


# -- stop ------------------------------------------------------------------------------------


def stop_line(answer: StopAnswer) -> str:
    """The line for one stop; its first words say how it went (stopped / not confirmed /
    already ended / failed), then the session id."""
    sid = answer.session_id
    if answer.error is not None:
        return f"failed {sid}: {answer.error.message}"
    response = answer.response
    result = response.result
    round_trip = f"round trip {answer.round_trip_ms:.1f} ms"
    if result == wire.ctl.STOP_RESULT_CONFIRMED:
        took = response.stop_to_confirm_us / 1000
        return (
            f"stopped {sid}: confirmed by the commander in {took:.2f} ms "
            f"(stop_to_confirm; {round_trip}) path {_path(response.stop)}"
        )
    outcome = response.outcome
    reason = oneline(outcome.reason) or "(no reason recorded)"
    if result == wire.ctl.STOP_RESULT_NOT_CONFIRMED:
        return f"not confirmed {sid}: {reason} ({round_trip}) path {_path(response.stop)}"
    if result == wire.ctl.STOP_RESULT_ALREADY_ENDED:
        return f"already ended {sid}: {state_name(outcome.state)} ({reason})"
    return f"failed {sid}: unexpected stop result {result_name(result)}"


def stop_json(answer: StopAnswer) -> dict[str, Any]:
    """The StopSessionResponse as data plus the client-measured `round_trip_ms`, or the error."""
    if answer.error is not None:
        return {"session_id": answer.session_id, "error": answer.error.message, "exit_code": answer.error.exit_code}
    return {**message_to_dict(answer.response), "round_trip_ms": round(answer.round_trip_ms, 3)}


class StopTally:
    """Counts `stop --all` answers for the summary line."""

    def __init__(self) -> None:
        self.confirmed = self.not_confirmed = self.already_ended = self.failed = 0

    def add(self, answer: StopAnswer) -> None:
        result = answer.response.result if answer.error is None else None
        if result == wire.ctl.STOP_RESULT_CONFIRMED:
            self.confirmed += 1
        elif result == wire.ctl.STOP_RESULT_NOT_CONFIRMED:
            self.not_confirmed += 1
        elif result == wire.ctl.STOP_RESULT_ALREADY_ENDED:
            self.already_ended += 1
        else:
            self.failed += 1

    @property
    def ok(self) -> bool:
        """Every stop was confirmed or found its session already ended."""
        return self.not_confirmed == 0 and self.failed == 0

    def line(self) -> str:
        text = f"{self.confirmed} confirmed, {self.not_confirmed} not confirmed, {self.already_ended} already ended"
        return text + (f", {self.failed} failed" if self.failed else "")

    def as_dict(self) -> dict[str, int]:
        return {
            "confirmed": self.confirmed,
            "not_confirmed": self.not_confirmed,
            "already_ended": self.already_ended,
            "failed": self.failed,
        }


# -- approve / deny --------------------------------------------------------------------------


def decision_text(decision: Any) -> str:
    """An ApprovalDecision in a few words: `approved by operator:alice (fine)`."""
    if decision.timed_out:
        return f"timed out ({oneline(decision.reason)})" if decision.reason else "timed out"
    verdict = "approved" if decision.approved else "denied"
    reason = oneline(decision.reason)
    return f"{verdict} by {decision.decided_by or _NONE}" + (f" ({reason})" if reason else "")


def decision_line(response: Any, call_id: str) -> str:
    """The line for one DecideToolCall; its first words say how it went (approved / denied /
    already decided / not awaiting approval), then the session and call ids."""
    where = f"{response.session_id} {call_id}"
    result = response.result
    if result == wire.ctl.DECIDE_RESULT_DECIDED:
        verdict = "approved" if response.decision.approved else "denied"
        return f"{verdict} {where}: {decision_text(response.decision)}"
    if result == wire.ctl.DECIDE_RESULT_ALREADY_DECIDED:
        return f"already decided {where}: {decision_text(response.decision)}"
    if result == wire.ctl.DECIDE_RESULT_NOT_AWAITING:
        return f"not awaiting approval {where}: it needs none, was stopped, or its session ended"
    return f"failed {where}: unexpected decide result {result}"


# -- health ----------------------------------------------------------------------------------


def health_line(service: str, status: int) -> str:
    return f"{health_status_name(status):<16}{service or '(server)'}"


# -- output ----------------------------------------------------------------------------------


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, header first; no trailing spaces."""
    cells = [list(headers), *([oneline(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO, *, tty: bool, width: int | None = None
) -> None:
    """A rich table on a terminal, `plain_table` otherwise.

    Cells are never cut or folded (ids are copied, reasons read in full): a table wider than
    the terminal (`width`, detected unless given) is printed at its own width and the
    terminal wraps its lines, as `ps` and `kubectl` do.
    """
    if not tty:
        out.write(plain_table(headers, rows) + "\n")
        return
    cells = [[oneline(cell) for cell in row] for row in rows]
    widths = [max(len(header), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    console = Console(file=out, highlight=False, markup=False, width=width)
    console.width = max(console.width, sum(widths) + 3 * len(widths))  # column padding and separators
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", show_edge=False, pad_edge=False)
    for header in headers:
        table.add_column(header, no_wrap=True)
    for row in cells:
        table.add_row(*row)
    console.print(table)


def print_pairs(pairs: Sequence[tuple[str, str]], out: TextIO, *, tty: bool) -> None:
    """`label  value` lines with the values aligned (labels bold on a terminal)."""
    if not tty:
        width = max((len(label) for label, _ in pairs), default=0)
        out.write("".join(f"{label.ljust(width)}  {value}".rstrip() + "\n" for label, value in pairs))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in pairs:
        grid.add_row(label, value)
    Console(file=out, highlight=False, markup=False).print(grid)
