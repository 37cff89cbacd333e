"""Session events as a live transcript (`watch`, `ask`): deltas inline, the rest one line each.

Content deltas are written as they arrive, without newlines, and flushed; thoughts the
same way behind a `thinking [step]` prefix (dim on a terminal). Tool calls, results,
stops, confirmations, errors and state changes get a line of their own starting with
`#SEQ KIND`, so scripts can grep them. Control characters in model output are dropped:
an answer must not drive the operator's terminal.
"""

from __future__ import annotations

import re
from typing import Any, TextIO

from dispatcherctl.names import state_name, stop_code_name
from dispatcherctl.render import decision_text, oneline, outcome_text
from shared import wire

__all__ = ["EventPrinter", "event_line", "safe_text"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keeps \t and \n
_MAX_JSON_CHARS = 300

_STYLE = {
    "thought": "2",
    "tool_call": "36",
    "tool_result": "36",
    "tool_result_dropped": "2;36",
    "stop": "1;33",
    "stop_confirm": "33",
    "error": "31",
    "state_change": "1",
    "approval_request": "1;35",
    "approval_decision": "35",
    "usage": "2",
}


def safe_text(text: str) -> str:
    """`text` without control characters other than tab and newline."""
    return _CONTROL.sub("", text)


def _short_json(text: str) -> str:
    text = oneline(safe_text(text))
    if len(text) > _MAX_JSON_CHARS:
        return f"{text[:_MAX_JSON_CHARS]}...({len(text) - _MAX_JSON_CHARS} more chars)"
    return text


def event_line(event: Any) -> str | None:
    """The own line of a tool call, result, approval request or decision, stop, confirmation,
    error or state change (`#12 tool_call calculator {...} [call_id]`); None for thought and
    content deltas."""
    kind = event.WhichOneof("event")
    head = f"#{event.seq} {kind}"
    if kind == "tool_call":
        call = event.tool_call
        return f"{head} {call.tool_name} {_short_json(call.arguments_json) or '{}'} [{call.call_id}]"
    if kind in ("tool_result", "tool_result_dropped"):
        result = getattr(event, kind)  # dropped: decided, never sent to the commander
        took = f"{result.execution_time_us / 1000:.2f} ms"
        if result.HasField("error") and result.error.code:
            error = f"{wire.tool_error_code_name(result.error.code)}: {oneline(safe_text(result.error.message))}"
            return f"{head} {result.tool_name} error {error} [{result.call_id}] {took}"
        return f"{head} {result.tool_name} ok {_short_json(result.result_json)} [{result.call_id}] {took}"
    if kind == "approval_request":
        request = event.approval_request
        args = _short_json(request.arguments_json) or "{}"
        waits = f"waits up to {request.timeout_ms / 1000:g} s"
        return f"{head} {request.tool_name} {args} [{request.call_id}] {waits} (dispatcherctl approve / deny)"
    if kind == "approval_decision":
        decision = event.approval_decision
        return f"{head} {decision_text(decision)} [{decision.call_id}]"
    if kind == "stop":
        stop = event.stop
        text = f"{head} {stop_code_name(stop.code)}: {oneline(stop.reason)}"
        if stop.cause:
            text += f" ({oneline(stop.cause)})"
        return text + f" path {' -> '.join(stop.path) or '(no path)'}"
    if kind == "stop_confirm":
        confirm = event.stop_confirm
        text = (
            f"{head} stop_id {confirm.stop_id or '-'} halt {confirm.halt_us / 1000:.2f} ms, "
            f"last seq {confirm.last_seq}, {confirm.discarded_packets} discarded"
        )
        if confirm.pending_tool_calls:
            text += ", pending " + " ".join(f"{p.call_id}:{p.tool_name}" for p in confirm.pending_tool_calls)
        return text
    if kind == "error":
        error = event.error
        return f"{head} {error.code or 'ERROR'}: {oneline(safe_text(error.message))}"
    if kind == "state_change":
        change = event.state_change
        if change.HasField("outcome"):
            return f"{head} {outcome_text(change.outcome)}"
        text = f"{head} {state_name(change.state)}"
        return text + (f": {oneline(change.reason)}" if change.reason else "")
    if kind == "usage":
        usage = event.usage
        counted = ", counted" if usage.estimated else ""
        return (f"{head} {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens"
                f" ({usage.reasoning_tokens} reasoning) {oneline(usage.model) or 'model'}{counted}")  # fmt: skip
    if kind in ("thought", "content"):
        return None
    return f"{head} (unknown event)"


class EventPrinter:
    """Writes events to `out` as they arrive; `color` adds ANSI styles (for a terminal)."""

    def __init__(self, out: TextIO, *, color: bool) -> None:
        self.out = out
        self.color = color
        self._mode = ""  # "thought" | "content" | "": the inline run in progress
        self._step = ""
        self._mid_line = False  # the last character written was not a newline

    def event(self, event: Any) -> None:
        kind = event.WhichOneof("event")
        if kind == "content":
            if self._mode != "content":
                self.end_inline()
                self._mode = "content"
            self._write(safe_text(event.content.text))
        elif kind == "thought":
            thought = event.thought
            if self._mode != "thought" or self._step != thought.step_name:
                self.end_inline()
                prefix = f"thinking [{thought.step_name}] " if thought.step_name else "thinking "
                self._write(self._style(prefix, _STYLE["thought"]))
                self._mode, self._step = "thought", thought.step_name
            self._write(self._style(safe_text(thought.delta), _STYLE["thought"]))
        else:
            text = event_line(event)
            if text is not None:
                self.line(text, _STYLE.get(kind or "", ""))

    def line(self, text: str, style: str = "") -> None:
        """`text` on a line of its own, ending any inline run first."""
        self.end_inline()
        self._write(self._style(text, style) + "\n")

    def end_inline(self) -> None:
        """Finish the inline run in progress with a newline, if the cursor is mid-line."""
        if self._mid_line:
            self._write("\n")
        self._mode = ""

    def _style(self, text: str, code: str) -> str:
        if not (self.color and code and text):
            return text
        body = text.rstrip("\n")  # the reset goes before a final newline: _mid_line reads the last char
        return f"\x1b[{code}m{body}\x1b[0m" + text[len(body) :]

    def _write(self, text: str) -> None:
        if not text:
            return
        self.out.write(text)
        self.out.flush()
        self._mid_line = not text.endswith("\n")
