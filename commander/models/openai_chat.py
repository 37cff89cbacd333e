"""An agent driven by a real model over the OpenAI Chat Completions streaming API.

OpenAI, vLLM, Ollama, llama.cpp's server, LM Studio and most gateways serve it: one POST to
`{base_url}/chat/completions` with `stream: true` answers with server-sent events, one JSON
chunk per `data:` line and `data: [DONE]` at the end. Mapping onto the session:

- `delta.content` -> `ctx.say`; `delta.reasoning_content` / `delta.reasoning` (vLLM, DeepSeek,
  Ollama, llama.cpp) -> `ctx.think("reasoning", ...)`;
- `delta.tool_calls` fragments, assembled by `index`, -> one `ctx.call_tool` each, run by the
  dispatcher; the calls of one model turn run concurrently; their results go back to the
  model as `tool` messages and the next request is made, until the model finishes (or
  `max_steps` requests);
- the usage chunk (`stream_options.include_usage`) -> `ctx.report_usage`, counted when the
  server sends none.

A stop cancels the agent while it awaits the next chunk: the response is closed at once, and
closing a response that was not read to its end closes its connection (nothing is drained),
so the server sees the client go and stops generating. `ctx.model_request_closed()` marks the
moment, for the session's stop -> abort figure.

Failures end the session FAILED with a named reason (`AgentFailure`, the ErrorSignal code):
MODEL_UNAUTHORIZED (401/403), MODEL_NOT_FOUND (404), MODEL_BAD_REQUEST (other 4xx),
MODEL_RATE_LIMITED (429) and MODEL_UNAVAILABLE (5xx, or the connection lost mid-stream), both
retried with backoff while no token has been streamed; MODEL_TIMEOUT, MODEL_UNREACHABLE
(connection refused, DNS), MODEL_BAD_RESPONSE (a chunk that is not JSON, a stream that ends
before the model finished), MODEL_MAX_STEPS.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import structlog

from commander.context import AgentContext, ToolInfo
from shared.errors import AgentFailure, ToolCallError

__all__ = ["ModelSettings", "OpenAIChatAgent"]

log = structlog.get_logger("commander.model")

# An error body is read for its message only: a server that streams megabytes of it is cut.
_MAX_ERROR_BODY = 16 * 1024
_MAX_RETRY_AFTER_S = 30.0
_MAX_LINE_BYTES = 1024 * 1024  # one SSE line: a chunk is a few hundred bytes
_CLOSE_TIMEOUT_S = 1.0  # closing a socket never waits on the peer; this is a safety bound
# OpenAI's rule for function names; MCP tools are named PREFIX.tool, which it refuses.
_FUNCTION_NAME = re.compile(r"[^a-zA-Z0-9_-]")


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """What `--model openai:NAME` and its options say (commander.config.ModelConfig, resolved)."""

    model: str
    base_url: str = "https://api.openai.com/v1"
    api_key: str = ""
    temperature: float | None = None
    max_tokens: int = 0
    system_prompt: str = ""
    request_timeout_s: float = 60.0
    headers: Mapping[str, str] = field(default_factory=dict)
    max_steps: int = 8
    retries: int = 2
    retry_backoff_s: float = 0.5

    @classmethod
    def from_config(cls, config: Any) -> ModelSettings:
        """From a `ModelConfig`: reads the API key's variable and the system prompt file."""
        system = config.system_prompt
        if config.system_prompt_file:
            with open(config.system_prompt_file, encoding="utf-8") as file:
                system = file.read()
        headers = {}
        for header in config.headers:
            name, _, value = header.partition(":")
            headers[name.strip()] = value.strip()
        return cls(
            model=config.model.removeprefix("openai:"),
            base_url=config.base_url,
            api_key=os.environ.get(config.api_key_env, "") if config.api_key_env else "",
            temperature=config.temperature if config.temperature >= 0 else None,
            max_tokens=config.max_tokens,
            system_prompt=system,
            request_timeout_s=config.request_timeout_s,
            headers=headers,
            max_steps=config.max_steps,
            retries=config.retries,
            retry_backoff_s=config.retry_backoff_s,
        )


@dataclass(slots=True)
class _ToolCall:
    """One tool call of a model turn, assembled from its streamed fragments."""

    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(slots=True)
class _Turn:
    """What one streamed model response said."""

    content: list[str] = field(default_factory=list)
    calls: dict[int, _ToolCall] = field(default_factory=dict)
    finish_reason: str = ""
    usage: dict[str, Any] | None = None
    model: str = ""
    deltas: int = 0  # chunks that carried text or tool arguments: the count when no usage comes
    done: bool = False  # `data: [DONE]` arrived


class OpenAIChatAgent:
    """An `Agent`: `await OpenAIChatAgent(settings)(ctx, prompt)`; one instance serves any
    number of sessions (each gets its own HTTP client)."""

    agent_version = "openai-chat/1"

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.agent_name = f"openai:{settings.model}"

    async def __call__(self, ctx: AgentContext, prompt: str) -> None:
        s = self.settings
        messages: list[dict[str, Any]] = []
        if s.system_prompt:
            messages.append({"role": "system", "content": s.system_prompt})
        messages.append({"role": "user", "content": prompt})
        functions, by_function = _functions(ctx.tools)
        headers = {"accept": "text/event-stream", **s.headers}
        if s.api_key:
            headers["authorization"] = f"Bearer {s.api_key}"
        client = httpx2.AsyncClient(timeout=httpx2.Timeout(s.request_timeout_s), headers=headers)
        try:
            for _step in range(s.max_steps):
                turn = await self._request(client, ctx, messages, functions)
                await self._report_usage(ctx, turn, messages)
                if not turn.calls:
                    return
                calls = [turn.calls[index] for index in sorted(turn.calls)]
                messages.append(_assistant_message(turn, calls))
                messages.extend(await _run_calls(ctx, calls, by_function))
            raise AgentFailure("MODEL_MAX_STEPS", f"the model still called tools after {s.max_steps} requests")
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT_S):
                await client.aclose()

    # -- one request ----------------------------------------------------------------------

    async def _request(
        self,
        client: httpx2.AsyncClient,
        ctx: AgentContext,
        messages: list[dict[str, Any]],
        functions: list[dict[str, Any]],
    ) -> _Turn:
        """One streamed model response, retried (429, 5xx, connection lost) before its first token."""
        s = self.settings
        body: dict[str, Any] = {
            "model": s.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if functions:
            body["tools"] = functions
        if s.temperature is not None:
            body["temperature"] = s.temperature
        if s.max_tokens:
            body["max_tokens"] = s.max_tokens
        url = s.base_url.rstrip("/") + "/chat/completions"
        attempt = 0
        while True:
            turn = _Turn()
            try:
                # The model request is a span under the session's (OTel GenAI names); None when off.
                with ctx.span(f"chat {s.model}", **_span_attributes(s.model, attempt)) as span:
                    await self._stream(client, url, body, ctx, turn)
                    if span is not None and turn.usage is not None:
                        span.set_attributes(_usage_attributes(turn.usage))
                return turn
            except _Retryable as exc:
                if turn.deltas or attempt >= s.retries:
                    raise exc.failure from None
                delay = max(s.retry_backoff_s * 2**attempt, exc.retry_after_s)
                attempt += 1
                log.warning("model.retrying", code=exc.failure.code, detail=exc.failure.message,
                            attempt=attempt, retry_in_s=round(delay, 3))  # fmt: skip
                await anyio.sleep(delay)

    async def _stream(
        self, client: httpx2.AsyncClient, url: str, body: dict[str, Any], ctx: AgentContext, turn: _Turn
    ) -> None:
        try:
            request = client.build_request("POST", url, json=body)
            try:
                response = await client.send(request, stream=True)
            except BaseException:
                # Cancelled by a stop before the answer's headers: httpcore has closed the
                # connection (shielded) before the cancellation reaches us.
                ctx.model_request_closed()
                raise
        except httpx2.TimeoutException as exc:
            raise AgentFailure(
                "MODEL_TIMEOUT", f"{url}: no answer within {self.settings.request_timeout_s:g} s"
            ) from exc
        except httpx2.ConnectError as exc:
            raise AgentFailure("MODEL_UNREACHABLE", f"{url}: {exc or type(exc).__name__}") from exc
        except httpx2.TransportError as exc:
            raise _Retryable(AgentFailure("MODEL_UNAVAILABLE", f"{url}: {exc or type(exc).__name__}")) from exc
        try:
            if response.status_code != 200:
                raise await _status_failure(response)
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                raise AgentFailure(
                    "MODEL_BAD_RESPONSE", f"expected a text/event-stream answer, got {content_type or 'no type'!r}"
                )
            async for chunk in _chunks(response):
                await _on_chunk(ctx, turn, chunk)
                if turn.done:
                    break
            if not turn.done and not turn.finish_reason:
                raise AgentFailure("MODEL_BAD_RESPONSE", "the stream ended before the model finished (no [DONE])")
        except httpx2.TimeoutException as exc:
            silence = self.settings.request_timeout_s
            raise AgentFailure("MODEL_TIMEOUT", f"no chunk within {silence:g} s (--request-timeout-s)") from exc
        except httpx2.TransportError as exc:
            raise _Retryable(AgentFailure("MODEL_UNAVAILABLE", f"connection lost mid-stream: {exc!r}")) from exc
        finally:
            # Also when a stop cancels us: shielded, or the close itself would be cancelled
            # before it reached the socket. An unfinished response closes its connection.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT_S):
                await response.aclose()
            ctx.model_request_closed()

    async def _report_usage(self, ctx: AgentContext, turn: _Turn, messages: Sequence[dict[str, Any]]) -> None:
        usage = turn.usage
        model = turn.model or self.settings.model
        if usage is not None:
            details = usage.get("completion_tokens_details") or {}
            await ctx.report_usage(
                prompt_tokens=_int(usage.get("prompt_tokens")),
                completion_tokens=_int(usage.get("completion_tokens")),
                reasoning_tokens=_int(details.get("reasoning_tokens") if isinstance(details, dict) else 0),
                model=model,
            )
            return
        # No usage chunk (an older server): count. Prompt: ~4 characters a token; completion:
        # servers stream about one token per chunk.
        prompt_chars = len(json.dumps(messages, ensure_ascii=False))
        await ctx.report_usage(
            prompt_tokens=-(-prompt_chars // 4), completion_tokens=turn.deltas, model=model, estimated=True
        )


class _Retryable(Exception):
    """A failure worth another try while no token was streamed (429, 5xx, connection lost)."""

    def __init__(self, failure: AgentFailure, retry_after_s: float = 0.0) -> None:
        super().__init__(str(failure))
        self.failure = failure
        self.retry_after_s = retry_after_s


async def _status_failure(response: httpx2.Response) -> Exception:
    """A non-200 answer as the failure it names (retryable for 429 and 5xx)."""
    detail = await _error_detail(response)
    status = response.status_code
    text = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status in (401, 403):
        return AgentFailure("MODEL_UNAUTHORIZED", f"{text} (check --api-key-env)")
    if status == 404:
        return AgentFailure("MODEL_NOT_FOUND", f"{text} (check the model name and --base-url)")
    if status == 429:
        return _Retryable(AgentFailure("MODEL_RATE_LIMITED", text), _retry_after(response))
    if status >= 500:
        return _Retryable(AgentFailure("MODEL_UNAVAILABLE", text), _retry_after(response))
    return AgentFailure("MODEL_BAD_REQUEST", text)


async def _error_detail(response: httpx2.Response) -> str:
    """The message of an error body (`{"error": {"message": ...}}` or text), bounded."""
    raw = b""
    async for part in response.aiter_bytes():
        raw += part
        if len(raw) >= _MAX_ERROR_BODY:
            break
    text = raw[:_MAX_ERROR_BODY].decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:500]
    if isinstance(error, str):
        return error[:500]
    return text[:500]


def _retry_after(response: httpx2.Response) -> float:
    try:
        return min(_MAX_RETRY_AFTER_S, max(0.0, float(response.headers.get("retry-after", "0"))))
    except ValueError:
        return 0.0  # an HTTP date: the backoff decides


async def _chunks(response: httpx2.Response) -> AsyncIterator[dict[str, Any] | None]:
    """The stream's JSON chunks (None for `[DONE]`); anything else than SSE `data:` lines of
    JSON objects is MODEL_BAD_RESPONSE."""
    async for line in _lines(response):
        if not line or line.startswith(":"):
            continue  # the blank line between events; a comment (keep-alive)
        if not line.startswith("data:"):
            if line.partition(":")[0] in ("event", "id", "retry"):
                continue  # other SSE fields carry nothing for us
            raise AgentFailure("MODEL_BAD_RESPONSE", f"not a server-sent event line: {line[:200]!r}")
        data = line[5:].strip()
        if data == "[DONE]":
            yield None
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise AgentFailure("MODEL_BAD_RESPONSE", f"a chunk is not JSON: {data[:200]!r}") from None
        if not isinstance(chunk, dict):
            raise AgentFailure("MODEL_BAD_RESPONSE", f"a chunk is not a JSON object: {data[:200]!r}")
        yield chunk


async def _lines(response: httpx2.Response) -> AsyncIterator[str]:
    """The body's lines; one longer than _MAX_LINE_BYTES (a broken or hostile server) is
    MODEL_BAD_RESPONSE instead of unbounded memory."""
    buffer = bytearray()
    async for part in response.aiter_bytes():
        buffer += part
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            if end - start > _MAX_LINE_BYTES:
                break
            yield buffer[start:end].rstrip(b"\r").decode("utf-8", "replace")
            start = end + 1
        del buffer[:start]
        if len(buffer) > _MAX_LINE_BYTES and buffer.find(b"\n", 0, _MAX_LINE_BYTES + 1) < 0:
            raise AgentFailure("MODEL_BAD_RESPONSE", f"a line of the stream is over {_MAX_LINE_BYTES} bytes")
    if buffer:
        yield buffer.rstrip(b"\r").decode("utf-8", "replace")


async def _on_chunk(ctx: AgentContext, turn: _Turn, chunk: dict[str, Any] | None) -> None:
    if chunk is None:
        turn.done = True
        return
    if "error" in chunk:  # an error event in the middle of the stream (vLLM, gateways)
        error = chunk["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise AgentFailure("MODEL_UNAVAILABLE", f"the server reported an error mid-stream: {str(message)[:500]}")
    if isinstance(chunk.get("model"), str):
        turn.model = chunk["model"]
    if isinstance(chunk.get("usage"), dict):
        turn.usage = chunk["usage"]
    choices = chunk.get("choices") or []
    if not isinstance(choices, list):
        raise AgentFailure("MODEL_BAD_RESPONSE", "a chunk's choices is not a list")
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue  # we ask for one choice (n=1)
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise AgentFailure("MODEL_BAD_RESPONSE", "a chunk's delta is not an object")
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            turn.deltas += 1
            await ctx.think("reasoning", reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            turn.deltas += 1
            turn.content.append(content)
            await ctx.say(content)
        for fragment in delta.get("tool_calls") or ():
            _add_fragment(turn, fragment)
        if choice.get("finish_reason"):
            turn.finish_reason = str(choice["finish_reason"])


def _add_fragment(turn: _Turn, fragment: Any) -> None:
    """Tool calls stream as fragments keyed by `index`: the first has the id and the name,
    the arguments JSON comes in pieces."""
    if not isinstance(fragment, dict):
        raise AgentFailure("MODEL_BAD_RESPONSE", "a tool_calls fragment is not an object")
    index = fragment.get("index", len(turn.calls))
    if not isinstance(index, int):
        raise AgentFailure("MODEL_BAD_RESPONSE", f"a tool_calls fragment has index {index!r}")
    call = turn.calls.setdefault(index, _ToolCall())
    if fragment.get("id"):
        call.id = str(fragment["id"])
    function = fragment.get("function") or {}
    if isinstance(function, dict):
        if function.get("name"):
            call.name += str(function["name"])
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # a server that sends the object itself, whole
            call.arguments += json.dumps(arguments)
            turn.deltas += 1
        elif arguments:
            call.arguments += str(arguments)
            turn.deltas += 1


def _functions(tools: Sequence[ToolInfo]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The dispatcher's catalog as the model's function list, and function name -> tool name
    (a tool name OpenAI would refuse, e.g. `fs.read_file`, is offered as `fs_read_file`)."""
    functions: list[dict[str, Any]] = []
    by_function: dict[str, str] = {}
    for tool in tools:
        name = _FUNCTION_NAME.sub("_", tool.name)[:64]
        while name in by_function:
            name = name[:60] + f"_{len(by_function)}"
        by_function[name] = tool.name
        function: dict[str, Any] = {"name": name, "parameters": tool.parameters}
        if tool.description:
            function["description"] = tool.description
        functions.append({"type": "function", "function": function})
    return functions, by_function


def _assistant_message(turn: _Turn, calls: Sequence[_ToolCall]) -> dict[str, Any]:
    for number, call in enumerate(calls):
        call.id = call.id or f"call_{number}"
    return {
        "role": "assistant",
        "content": "".join(turn.content) or None,
        "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in calls
        ],
    }


async def _run_calls(
    ctx: AgentContext, calls: Sequence[_ToolCall], by_function: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Run one turn's calls on the dispatcher at once; their `tool` messages, in call order."""
    answers: list[str] = [""] * len(calls)

    async def run(number: int, call: _ToolCall) -> None:
        answers[number] = await _run_call(ctx, call, by_function)

    async with anyio.create_task_group() as tg:
        for number, call in enumerate(calls):
            tg.start_soon(run, number, call)
    return [
        {"role": "tool", "tool_call_id": call.id, "content": answer}
        for call, answer in zip(calls, answers, strict=True)
    ]


async def _run_call(ctx: AgentContext, call: _ToolCall, by_function: Mapping[str, str]) -> str:
    """One call's answer for the model: the result's JSON, or an error it can read and act on."""
    try:
        args = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError as exc:
        return json.dumps({"error": {"code": "INVALID_ARGUMENTS", "message": f"arguments are not JSON: {exc}"}})
    if not isinstance(args, dict):
        return json.dumps({"error": {"code": "INVALID_ARGUMENTS", "message": "arguments must be a JSON object"}})
    try:
        result = await ctx.call_tool(by_function.get(call.name, call.name), args)
    except ToolCallError as exc:
        return json.dumps({"error": {"code": exc.code, "message": exc.message}}, ensure_ascii=False)
    return json.dumps(result, ensure_ascii=False)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _span_attributes(model: str, attempt: int) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": model,
        "model.attempt": attempt + 1,
    }


def _usage_attributes(usage: dict[str, Any]) -> dict[str, int]:
    """The usage chunk's counts as the GenAI span attributes (only the integers it carried)."""
    names = {"prompt_tokens": "gen_ai.usage.input_tokens", "completion_tokens": "gen_ai.usage.output_tokens"}
    return {names[key]: value for key, value in usage.items() if key in names and isinstance(value, int)}
