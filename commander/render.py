"""Readable terminal rendering of a session (and JSON lines for machines)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any, TextIO

from commander.events import (
    ContentEmitted,
    HandshakeDone,
    Observer,
    Resumed,
    SessionEvent,
    StopReceived,
    ThoughtEmitted,
    ToolCallSent,
    ToolResultReceived,
    UsageReported,
)
from commander.session import SessionResult
from shared.model import SessionState

__all__ = ["ConsoleRenderer", "JsonRenderer", "result_to_dict"]


class _Style:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text


class ConsoleRenderer(Observer):
    """Thoughts dimmed, tool calls and results on their own lines, the answer streamed."""

    def __init__(self, out: TextIO | None = None, *, color: bool | None = None, quiet: bool = False) -> None:
        self.out = out or sys.stdout
        self.quiet = quiet  # hide the thought and answer streams, keep tools, stops and the result
        self.style = _Style(self.out.isatty() if color is None else color)
        self._mode = ""  # "thought" | "content" | ""
        self._step = ""

    def __call__(self, event: SessionEvent) -> None:
        s = self.style
        if isinstance(event, HandshakeDone):
            mode = "compatibility mode (original contract)" if event.compat_mode else "native protocol"
            where = event.dispatcher_id or "dispatcher"
            self._line(s(f"● session {event.session_id} on {where} — {mode}", "1"))
        elif isinstance(event, (ThoughtEmitted, ContentEmitted)) and self.quiet:
            return
        elif isinstance(event, ThoughtEmitted):
            if self._mode != "thought" or self._step != event.step:
                self._line(s(f"  thinking [{event.step}] ", "2"), end="")
                self._mode, self._step = "thought", event.step
            self._write(s(event.delta, "2"))
        elif isinstance(event, ToolCallSent):
            self._line(s(f"  → tool {event.tool_name} {event.arguments_json} ({event.call_id})", "36"))
        elif isinstance(event, ToolResultReceived):
            took = f"{event.execution_time_us / 1000:.2f} ms"
            if event.error_code:
                self._line(s(f"  ← {event.tool_name} failed: {event.error_code}: {event.error_message} ({took})", "31"))
            else:
                self._line(s(f"  ← {event.tool_name} returned {event.result_json} ({took})", "36"))
        elif isinstance(event, ContentEmitted):
            if self._mode != "content":
                self._line(s("  answer: ", "1"), end="")
                self._mode = "content"
            self._write(event.text)
        elif isinstance(event, Resumed):
            self._line(s(f"  ↻ stream broke; resumed (resume {event.resumes}, dispatcher held seq "
                         f"{event.dispatcher_holds_seq})", "33"))  # fmt: skip
        elif isinstance(event, StopReceived):
            self._line(s(f"  ■ STOP received: {event.stop.code.name} — {event.stop.reason}", "1;33"))
        elif isinstance(event, UsageReported) and not self.quiet:
            counted = ", counted" if event.estimated else ""
            self._line(s(f"  usage: {event.prompt_tokens} prompt + {event.completion_tokens} completion tokens"
                         f" ({event.model or 'model'}{counted})", "2"))  # fmt: skip

    def result(self, result: SessionResult) -> None:
        s = self.style
        colour = {SessionState.FINISHED: "1;32", SessionState.STOPPED: "1;33", SessionState.EXPIRED: "1;33"}.get(
            result.state, "1;31"
        )
        self._line(s(f"{result.state.value}", colour) + f"  {result.reason}")
        if result.stop is not None:
            stop = result.stop
            self._line(f"  stop code:   {stop.code.name}")
            self._line(f"  reason:      {stop.reason}")
            if stop.cause:
                self._line(f"  cause:       {stop.cause}")
            self._line(f"  path:        {' → '.join(stop.path) or '(none given)'}")
            if result.stop_to_halt_ms is not None:
                self._line(
                    f"  stop→halt:   {result.stop_to_halt_ms:.3f} ms (stop received → agent cancelled, commander clock)"
                )
            if result.stop_to_abort_ms is not None:
                self._line(
                    f"  stop→abort:  {result.stop_to_abort_ms:.3f} ms (stop received → model request closed, "
                    "commander clock)"
                )
            if result.stop_to_confirm_ms is not None:
                self._line(
                    f"  stop→confirm: {result.stop_to_confirm_ms:.3f} ms (stop sent → confirmed, dispatcher clock)"
                )
            if result.pending_at_stop:
                fates = ", ".join(f"{p.call_id}:{p.tool_name}={p.fate}" for p in result.pending_at_stop)
                self._line(f"  tool calls abandoned: {fates}")
            self._line(f"  discarded unsent packets: {result.discarded_packets}")
        if result.usage.model_requests:
            u = result.usage
            self._line(f"  tokens: {u.prompt_tokens} prompt + {u.completion_tokens} completion"
                       f" ({u.reasoning_tokens} reasoning) in {u.model_requests} model request(s)")  # fmt: skip
        rate = result.packets_sent / result.duration_s if result.duration_s > 0 else 0.0
        self._line(
            f"  session {result.session_id} · {result.packets_sent} packets in {result.duration_s:.2f} s "
            f"({rate:,.0f} packets/s) · acked to seq {result.last_acked_seq} · {result.tool_calls} tool call(s) "
            f"· status {result.status_code}"
        )

    def _line(self, text: str, end: str = "\n") -> None:
        if self._mode:
            self.out.write("\n")
            self._mode = ""
        self.out.write(text + end)
        self.out.flush()

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class JsonRenderer(Observer):
    """One JSON object per event, then one for the result (`quiet`: no thought or content events)."""

    def __init__(self, out: TextIO | None = None, *, quiet: bool = False) -> None:
        self.out = out or sys.stdout
        self.quiet = quiet

    def __call__(self, event: SessionEvent) -> None:
        if self.quiet and isinstance(event, (ContentEmitted, ThoughtEmitted)):
            return
        payload: dict[str, Any] = {"event": type(event).__name__}
        if isinstance(event, StopReceived):
            payload["stop"] = _stop_dict(event.stop)
        else:
            payload.update(asdict(event))
        self._emit(payload)

    def result(self, result: SessionResult) -> None:
        self._emit({"event": "SessionResult", **result_to_dict(result)})

    def _emit(self, payload: dict[str, Any]) -> None:
        self.out.write(json.dumps(payload, ensure_ascii=False) + "\n")
        self.out.flush()


def _stop_dict(stop: Any) -> dict[str, Any]:
    return {
        "code": stop.code.name,
        "reason": stop.reason,
        "cause": stop.cause,
        "path": list(stop.path),
        "stop_id": stop.stop_id,
        "issued_at_ms": stop.issued_at_ms,
    }


def result_to_dict(result: SessionResult) -> dict[str, Any]:
    data = asdict(result)
    data["state"] = result.state.value
    data["stop"] = _stop_dict(result.stop) if result.stop else None
    data["assigned"] = (
        {"session_id": result.assigned.session_id, "started_by": result.assigned.started_by}
        if result.assigned is not None
        else None
    )
    return data
