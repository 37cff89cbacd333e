"""AgentContext: what an agent may do during a session. No grpc import here.

`think` and `say` queue an upstream packet (waiting when the outbox is full: that is the
backpressure); `call_tool` sends a call and waits for the result the session core matches
to it (by call id, or by order in compatibility mode).
When a stop arrives the agent's task is cancelled: whatever it awaits (the LLM stream, a
tool result, a full outbox) raises cancellation at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import anyio
from opentelemetry.trace import Status, StatusCode

from commander.core import CommanderSession
from commander.events import ContentEmitted, Observer, ThoughtEmitted, ToolCallSent, UsageReported
from commander.tracing import child_span, session_tracer
from shared import wire
from shared.errors import ToolCallError
from shared.jsontext import JsonTextError, parse_json
from shared.model import StopInfo

__all__ = ["AgentContext", "ToolInfo"]

Send = Callable[[wire.pb.UpstreamPacket], Awaitable[None]]

# A dispatcher-side TIMEOUT result normally beats our own wait; this slack lets it.
_TIMEOUT_SLACK_S = 0.25


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """A tool the dispatcher runs for this session (from its Welcome): what a model is offered."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object
    requires_approval: bool = False


@dataclass(slots=True, eq=False)
class _Waiter:
    """One call_tool waiting for the result the session core matches to it."""

    done: anyio.Event = field(default_factory=anyio.Event)
    result: wire.pb.ToolCallResult | None = None


class AgentContext:
    """Handed to the agent; one per session.

    The session's state (its id, limits, compatibility mode, the stop, the tool calls) is the
    session core's (`commander.core`): this is the agent's view of it, plus the waiting.
    """

    def __init__(self, session: CommanderSession, *, send: Send, observer: Observer) -> None:
        self._session = session
        self._send = send
        self._observe = observer
        self._waiting: dict[str, _Waiter] = {}
        self._next_call = 0
        self._tools: tuple[ToolInfo, ...] | None = None
        self.stopped = anyio.Event()  # set when a stop arrives, as the agent's task is cancelled

    @property
    def session_id(self) -> str:
        return self._session.session_id

    @property
    def limits(self) -> wire.pb.SessionLimits | None:
        """What the dispatcher's Welcome allows; None in compatibility mode."""
        return self._session.limits

    @property
    def compat_mode(self) -> bool:
        """True when the dispatcher speaks the original contract (no Welcome, results by order)."""
        return self._session.compat_mode

    @property
    def stop(self) -> StopInfo | None:
        return self._session.stop

    @property
    def tool_calls(self) -> int:
        return self._session.tool_calls

    @property
    def tools(self) -> tuple[ToolInfo, ...]:
        """The tools this session may call, as the dispatcher's Welcome listed them (sorted by
        name); empty in compatibility mode or from a dispatcher that sends no catalog."""
        if self._tools is None:
            welcome = self._session.welcome
            self._tools = tuple(_tool_info(spec) for spec in welcome.tools) if welcome is not None else ()
        return self._tools

    # -- the agent's API ---------------------------------------------------------

    async def think(self, step: str, delta: str) -> None:
        """Stream a reasoning delta (ThoughtChain)."""
        await self._send(wire.pb.UpstreamPacket(thought=wire.pb.ThoughtChain(step_name=step, delta=delta)))
        self._observe(ThoughtEmitted(step, delta))

    async def say(self, text: str) -> None:
        """Stream a delta of the answer (ContentChunk)."""
        await self._send(wire.pb.UpstreamPacket(content=wire.pb.ContentChunk(text=text)))
        self._observe(ContentEmitted(text))

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[Any]:
        """A tracing span under the session's (the model request, a step of the agent's own):
        `with ctx.span("chat model-x", **{"gen_ai.request.model": "x"}) as span: ...`; `span` is
        None when tracing is off. The hook for model backends."""
        return child_span(name, **attributes)

    async def call_tool(self, name: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Run a tool on the dispatcher and return its parsed JSON result.

        Raises `ToolCallError` when the call comes back with a structured error (unknown
        tool, invalid arguments, timeout, failure) or no result arrives within `timeout`.
        With tracing on, the call is a span (`execute_tool NAME`) under the session's.
        """
        if session_tracer() is None:  # tracing off: no span work at all
            return await self._call_tool(name, args, timeout, None)
        attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}
        with child_span(f"execute_tool {name}", **attributes) as span:
            try:
                return await self._call_tool(name, args, timeout, span)
            except ToolCallError as exc:
                if span is not None:
                    span.set_attribute("error.type", exc.code)
                    span.set_status(Status(StatusCode.ERROR, exc.message))
                raise

    async def _call_tool(self, name: str, args: dict[str, Any] | None, timeout: float | None, span: Any) -> Any:
        self._next_call += 1
        call_id = f"call-{self._next_call}"
        arguments_json = json.dumps(args or {}, separators=(",", ":"), ensure_ascii=False)
        request = wire.pb.ToolCallRequest(
            tool_name=name,
            arguments_json=arguments_json,
            call_id=call_id,
            timeout_ms=int(timeout * 1000) if timeout else 0,
        )
        if span is not None:
            span.set_attribute("gen_ai.tool.call.id", call_id)
        waiter = self._waiting[call_id] = _Waiter()
        # Registered before it is queued: no result can find it missing, and calls are matched
        # by order (compatibility mode) in the order they are queued.
        self._session.on_tool_call_sent(call_id, name)
        try:
            await self._send(wire.pb.UpstreamPacket(tool_call=request))
            self._observe(ToolCallSent(call_id, name, arguments_json))
            if timeout:
                with anyio.move_on_after(timeout + _TIMEOUT_SLACK_S):
                    await waiter.done.wait()
            else:
                await waiter.done.wait()
        finally:
            del self._waiting[call_id]
            if waiter.result is None:
                self._session.on_tool_call_given_up(call_id)
        result = waiter.result
        if result is None:
            raise ToolCallError(name, call_id, "TIMEOUT", f"no result within {timeout:g} s")
        if result.HasField("error") and result.error.code:
            code = wire.tool_error_code_name(result.error.code)
            raise ToolCallError(name, call_id, code, result.error.message)
        if not result.result_json:
            return None
        try:
            return parse_json(result.result_json, "result_json")
        except JsonTextError as exc:  # the dispatcher's bug, told to the agent as a failed call
            raise ToolCallError(name, call_id, "MALFORMED_RESULT", str(exc)) from None

    async def report_usage(
        self,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        reasoning_tokens: int = 0,
        model: str = "",
        estimated: bool = False,
    ) -> None:
        """Report one model request's token usage (a Usage packet): the dispatcher sums them
        per session and enforces its token budgets on the sums."""
        usage = wire.pb.Usage(
            prompt_tokens=max(0, prompt_tokens),
            completion_tokens=max(0, completion_tokens),
            reasoning_tokens=max(0, reasoning_tokens),
            model=model,
            estimated=estimated,
        )
        if self._session.on_usage(usage):
            await self._send(wire.pb.UpstreamPacket(usage=usage))
        self._observe(UsageReported(usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens,
                                    model, estimated))  # fmt: skip

    def model_request_closed(self) -> None:
        """A model backend closed its HTTP request (response and connection): after a stop,
        the time from the stop's arrival to this call is the session's stop -> abort figure."""
        self._session.on_model_request_closed(time.perf_counter())

    # -- used by the session -----------------------------------------------------

    def deliver(self, call_id: str, result: wire.pb.ToolCallResult) -> None:
        """The session core matched `result` to `call_id`: wake that call."""
        waiter = self._waiting.get(call_id)
        if waiter is not None:
            waiter.result = result
            waiter.done.set()


def stamp(packet: wire.pb.UpstreamPacket, *, seq: int, session_id: str) -> None:
    packet.seq = seq
    packet.session_id = session_id
    packet.timestamp = time.time_ns() // 1_000_000


def _tool_info(spec: wire.pb.ToolSpec) -> ToolInfo:
    try:
        schema = json.loads(spec.parameters_json_schema) if spec.parameters_json_schema else {}
    except ValueError:
        schema = {}
    if not isinstance(schema, dict):  # a dispatcher's bug: offer the tool with any object
        schema = {}
    return ToolInfo(spec.name, spec.description, schema or {"type": "object"}, spec.requires_approval)
