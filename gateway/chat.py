"""OpenAI-compatible `POST /v1/chat/completions` and `GET /v1/models`.

The request runs on the commander pool like `POST /v1/sessions`: the last user message is
the input, earlier messages go along as context (`input_json` `{"messages": [...]}`). The
answer is Chat Completions: `chat.completion` objects, or with `"stream": true`
`chat.completion.chunk`s with `delta.content` for the answer and `delta.reasoning_content`
for thoughts, then `data: [DONE]`. The session's tool calls run on the dispatcher, so they
are not `tool_calls` (a client would think it has to run them). `usage` is the sum of the
session's Usage events (what the commander reported): in the whole answer, and in a last chunk
with no choices when the request asks for it (`stream_options.include_usage`), as OpenAI does.
A client that goes away, streaming or not, stops the session (USER_CANCEL, the path starting
at the client).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import grpc
import structlog
from sse_starlette.event import ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dispatcherctl.names import stop_code_name
from dispatcherctl.render import message_to_dict
from gateway.bodies import bad_request, optional_int, optional_str, read_json_object
from gateway.errors import GatewayError
from gateway.events import internal_event, outcome_of
from gateway.sessions import event_stream
from gateway.state import GatewayState, state_of
from gateway.upstream import Metadata, responses
from shared import wire

__all__ = ["chat_completions", "finish_reason", "list_models", "split_messages"]

log = structlog.get_logger("gateway")

_CHAT_KINDS = (
    wire.ctl.EVENT_KIND_THOUGHT,
    wire.ctl.EVENT_KIND_CONTENT,
    wire.ctl.EVENT_KIND_STATE_CHANGE,
    wire.ctl.EVENT_KIND_USAGE,
)


class _Usage:
    """The session's Usage events summed, in the Chat Completions `usage` shape."""

    def __init__(self) -> None:
        self.prompt = self.completion = self.reasoning = 0
        self.seen = False

    def add(self, usage: Any) -> None:
        self.seen = True
        self.prompt += usage.prompt_tokens
        self.completion += usage.completion_tokens
        self.reasoning += usage.reasoning_tokens

    def as_json(self) -> dict[str, Any] | None:
        if not self.seen:
            return None
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        }
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def _text_of(content: Any, where: str) -> str:
    """A message's content: a string, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise bad_request(f"{where}: each content part must be an object")
            if part.get("type") == "text":
                if not isinstance(part.get("text"), str):
                    raise bad_request(f"{where}: a text part needs a string 'text'")
                parts.append(part["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise bad_request(f"{where}: 'content' must be a string or a list of parts")


def split_messages(messages: Any) -> tuple[str, list[dict[str, str]]]:
    """The last user message's text and the messages before it (role and text)."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list")
    context: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise bad_request(f"messages[{i}] must be an object with a 'role' of {', '.join(sorted(_ROLES))}")
        context.append({"role": message["role"], "content": _text_of(message.get("content"), f"messages[{i}]")})
    last = context.pop()
    if last["role"] != "user" or not last["content"]:
        raise bad_request("the last message must be a user message with text")
    return last["content"], context


def finish_reason(outcome: Any) -> str:
    """How the session ended, as a Chat Completions finish reason."""
    if outcome is None or outcome.state == wire.ctl.SESSION_STATE_FINISHED:
        return "stop"
    code = stop_code_name(outcome.stop.code) if outcome.HasField("stop") else ""
    if code == "POLICY_VIOLATION":
        return "content_filter"
    if code in ("BUDGET_EXCEEDED", "TIMEOUT", "IDLE_TIMEOUT"):
        return "length"
    return "stop"


class _Completion:
    """The pieces every answer object shares."""

    def __init__(self, session_id: str, model: str) -> None:
        self.id = f"chatcmpl-{session_id}"
        self.session_id = session_id
        self.model = model
        self.created = int(time.time())

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> ServerSentEvent:
        data = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return ServerSentEvent(data=json.dumps(data, ensure_ascii=False, separators=(",", ":")))

    def usage_chunk(self, usage: dict[str, Any]) -> ServerSentEvent:
        data = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        }
        return ServerSentEvent(data=json.dumps(data, ensure_ascii=False, separators=(",", ":")))

    def whole(self, answer: str, thoughts: str, outcome: Any, usage: dict[str, Any] | None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": answer}
        if thoughts:
            message["reasoning_content"] = thoughts
        extra = {"usage": usage} if usage is not None else {}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(outcome), "logprobs": None}],
            "session_outcome": message_to_dict(outcome) if outcome is not None else None,
            **extra,
        }


async def chat_completions(request: Request) -> Response:
    state = state_of(request)
    body = await read_json_object(request, state.config.max_body_bytes)
    text, context = split_messages(body.get("messages"))
    model = optional_str(body, "model") or state.config.models[0]
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object")
    include_usage = options.get("include_usage", False) is True
    start = wire.ctl.StartSessionRequest(
        input_text=text,
        input_json=json.dumps({"messages": context}, ensure_ascii=False) if context else "",
        metadata={"openai.model": model},
        kinds=_CHAT_KINDS,
        timeout_ms=optional_int(body, "timeout_ms"),
        wait_for_commander_ms=state.config.wait_for_commander_ms,
    )
    metadata = state.upstream.metadata(request)
    call = state.upstream.stub.StartSession(start, metadata=metadata)
    try:
        first = (await call.read()).event  # a refusal (no commander, no permission) is an HTTP status
    except grpc.aio.AioRpcError as exc:
        raise state.upstream.error(exc) from exc
    except BaseException:
        call.cancel()
        raise
    completion = _Completion(first.session_id, model)
    if stream:
        return event_stream(state, _chunks(call, completion, state, include_usage), first.session_id)
    return await _whole(request, call, completion, state)


async def _chunks(
    call: Any, completion: _Completion, state: GatewayState, include_usage: bool
) -> AsyncIterator[ServerSentEvent]:
    usage = _Usage()
    try:
        yield completion.chunk({"role": "assistant", "content": ""})
        outcome = None
        async for response in responses(call):
            event = response.event
            kind = event.WhichOneof("event")
            if kind == "content" and event.content.text:
                yield completion.chunk({"content": event.content.text})
            elif kind == "thought" and event.thought.delta:
                yield completion.chunk({"reasoning_content": event.thought.delta})
            elif kind == "usage":
                usage.add(event.usage)
            elif (outcome := outcome_of(event)) is not None:
                break
        extra = {"session_outcome": message_to_dict(outcome)} if outcome is not None else {}
        yield completion.chunk({}, finish_reason(outcome), **extra)
        if include_usage and (summed := usage.as_json()) is not None:
            yield completion.usage_chunk(summed)
    except grpc.aio.AioRpcError as exc:
        error = state.upstream.error(exc)
        log.info("gateway.stream_failed", session_id=completion.session_id, code=error.code)
        yield ServerSentEvent(data=json.dumps(error.body()))
    except Exception as exc:  # a bug of ours: the stream ends with an error event, the traceback is logged
        yield internal_event(exc, completion.session_id)
    except BaseException:
        log.info("gateway.client_left", session_id=completion.session_id)
        raise
    finally:
        call.cancel()
    yield ServerSentEvent(data="[DONE]")


async def _whole(request: Request, call: Any, completion: _Completion, state: GatewayState) -> Response:
    """The whole answer in one object. The client is watched meanwhile: one that goes away
    cancels the call, and so stops the session, as a streaming client does."""
    answer: list[str] = []
    thoughts: list[str] = []
    outcome: Any = None
    usage = _Usage()
    finished = False
    failed: grpc.aio.AioRpcError | None = None

    async def collect(scope: anyio.CancelScope) -> None:
        nonlocal outcome, finished, failed
        try:
            async for response in responses(call):
                event = response.event
                kind = event.WhichOneof("event")
                if kind == "content":
                    answer.append(event.content.text)
                elif kind == "thought":
                    thoughts.append(event.thought.delta)
                elif kind == "usage":
                    usage.add(event.usage)
                elif (ended := outcome_of(event)) is not None:
                    outcome = ended
                    break
        except grpc.aio.AioRpcError as exc:
            failed = exc
        finished = True
        scope.cancel()

    async def watch_client(scope: anyio.CancelScope) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        log.info("gateway.client_left", session_id=completion.session_id)
        scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, tg.cancel_scope)
            tg.start_soon(watch_client, tg.cancel_scope)
    finally:
        call.cancel()
    if failed is not None:
        raise state.upstream.error(failed) from failed
    if not finished:
        raise GatewayError(499, "CANCELLED", "the client went away")  # nobody reads this answer
    return JSONResponse(completion.whole("".join(answer), "".join(thoughts), outcome, usage.as_json()))


async def list_models(request: Request) -> Response:
    """The configured model names, then the agent names of pool sessions the caller can see."""
    state = state_of(request)
    metadata: Metadata = state.upstream.metadata(request)
    names = list(state.config.models)
    async for info in state.upstream.list_sessions(wire.ctl.ListSessionsRequest(), metadata):
        if info.started_by and info.agent_name and info.agent_name not in names:
            names.append(info.agent_name)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "southwest-agent-runtime"} for name in names]
    return JSONResponse({"object": "list", "data": data})
