"""AgentContext: what an agent may do during a session. No grpc import here.

`think` and `say` queue an upstream packet (waiting when the outbox is full: that is the
backpressure); `call_tool` sends a call and waits for the result with the same call id.
When a stop arrives the agent's task is cancelled: whatever it awaits (the LLM stream, a
tool result, a full outbox) raises cancellation at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from commander.events import ContentEmitted, Observer, ThoughtEmitted, ToolCallSent
from shared import wire
from shared.errors import ToolCallError
from shared.model import StopInfo

__all__ = ["AgentContext", "PendingCall"]

Send = Callable[[wire.pb.UpstreamPacket], Awaitable[None]]

# A dispatcher-side TIMEOUT result normally beats our own wait; this slack lets it.
_TIMEOUT_SLACK_S = 0.25


@dataclass(slots=True, eq=False)
class PendingCall:
    call_id: str
    tool_name: str
    done: anyio.Event = field(default_factory=anyio.Event)
    result: wire.pb.ToolCallResult | None = None
    abandoned: bool = False
    result_after_stop: bool = False


class AgentContext:
    """Handed to the agent; one per session."""

    def __init__(self, *, session_id: str, send: Send, observer: Observer) -> None:
        self.session_id = session_id
        self.limits: wire.pb.SessionLimits | None = None
        self.compat_mode = False
        self._send = send
        self._observe = observer
        self._pending: dict[str, PendingCall] = {}
        self._next_call = 0
        self.stop: StopInfo | None = None
        self.stopped = anyio.Event()
        self.tool_calls = 0

    # -- the agent's API ---------------------------------------------------------

    async def think(self, step: str, delta: str) -> None:
        """Stream a reasoning delta (ThoughtChain)."""
        await self._send(wire.pb.UpstreamPacket(thought=wire.pb.ThoughtChain(step_name=step, delta=delta)))
        self._observe(ThoughtEmitted(step, delta))

    async def say(self, text: str) -> None:
        """Stream a delta of the answer (ContentChunk)."""
        await self._send(wire.pb.UpstreamPacket(content=wire.pb.ContentChunk(text=text)))
        self._observe(ContentEmitted(text))

    async def call_tool(self, name: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Run a tool on the dispatcher and return its parsed JSON result.

        Raises `ToolCallError` when the call comes back with a structured error (unknown
        tool, invalid arguments, timeout, failure) or no result arrives within `timeout`.
        """
        self._next_call += 1
        call_id = f"call-{self._next_call}"
        arguments_json = json.dumps(args or {}, separators=(",", ":"), ensure_ascii=False)
        pending = PendingCall(call_id, name)
        self._pending[call_id] = pending
        request = wire.pb.ToolCallRequest(
            tool_name=name,
            arguments_json=arguments_json,
            call_id=call_id,
            timeout_ms=int(timeout * 1000) if timeout else 0,
        )
        self.tool_calls += 1
        try:
            await self._send(wire.pb.UpstreamPacket(tool_call=request))
            self._observe(ToolCallSent(call_id, name, arguments_json))
            if timeout:
                with anyio.move_on_after(timeout + _TIMEOUT_SLACK_S):
                    await pending.done.wait()
            else:
                await pending.done.wait()
        finally:
            if pending.result is None and self.compat_mode:
                # Results without call ids are matched by order: keep the slot so a late
                # result is consumed here instead of being handed to the next call.
                pending.abandoned = True
            elif not self.stop:
                self._pending.pop(call_id, None)
        result = pending.result
        if result is None:
            raise ToolCallError(name, call_id, "TIMEOUT", f"no result within {timeout:g} s")
        if result.HasField("error") and result.error.code:
            code = wire.tool_error_code_name(result.error.code)
            raise ToolCallError(name, call_id, code, result.error.message)
        return json.loads(result.result_json) if result.result_json else None

    # -- used by the session -----------------------------------------------------

    def resolve(self, result: wire.pb.ToolCallResult) -> PendingCall | None:
        """Hand a result to its waiting call: by call id, or the oldest call when it has none."""
        if result.call_id:
            pending = self._pending.get(result.call_id)
        else:
            pending = next(iter(self._pending.values()), None)
        if pending is None:
            return None
        if self.stop is not None:
            pending.result_after_stop = True
            return pending
        del self._pending[pending.call_id]
        if not pending.abandoned:
            pending.result = result
            pending.done.set()
        return pending

    def pending_calls(self) -> list[PendingCall]:
        return [p for p in self._pending.values() if p.result is None]

    def mark_stopped(self, stop: StopInfo) -> None:
        self.stop = stop
        self.stopped.set()


def stamp(packet: wire.pb.UpstreamPacket, *, seq: int, session_id: str) -> None:
    packet.seq = seq
    packet.session_id = session_id
    packet.timestamp = time.time_ns() // 1_000_000
