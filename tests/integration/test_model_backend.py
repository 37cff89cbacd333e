"""The OpenAI-compatible model backend against a real local HTTP server speaking the streaming
wire format (tests/fake_openai.py) and a real in-process dispatcher.

Streamed content and reasoning, tool calls executed by the dispatcher and fed back, usage and
token budgets, a stop closing the model's response (the server sees the client go, nothing
written after the stop reaches the dispatcher), and every model error as a FAILED session with
a named reason on both sides.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import replace
from typing import Any

import anyio
import grpc
import pytest

from commander import CommanderConfig, ConnectionConfig, SessionResult, run_session
from commander.config import AgentConfig
from commander.events import ContentEmitted, Observer, SessionEvent, StopReceived
from commander.models.openai_chat import ModelSettings, OpenAIChatAgent
from dispatcher.app import Dispatcher
from shared import wire
from shared.model import SessionState, StopCode
from tests.conftest import running_dispatcher, test_config, wait_until
from tests.fake_openai import FakeOpenAI, Reply, content_chunks, running_fake_openai, tool_call_chunks, usage_chunk

pytestmark = pytest.mark.anyio


def settings(server: FakeOpenAI | str, **fields: Any) -> ModelSettings:
    base_url = server if isinstance(server, str) else server.base_url
    defaults: dict[str, Any] = {"model": "fake-model", "base_url": base_url, "request_timeout_s": 5.0,
                                "retry_backoff_s": 0.01}  # fmt: skip
    return ModelSettings(**{**defaults, **fields})


def config(address: str, *, tools: tuple[str, ...] = ()) -> CommanderConfig:
    return CommanderConfig(
        connection=ConnectionConfig(target=address, handshake_timeout_s=2.0),
        agent=AgentConfig(name="openai:fake-model", tools=tools),
    )


async def run_model(
    dispatcher: Dispatcher, model: ModelSettings, prompt: str = "Hi", *, tools: tuple[str, ...] = ()
) -> SessionResult:
    async with grpc.aio.insecure_channel(dispatcher.address) as channel:
        return await run_session(OpenAIChatAgent(model), prompt, channel=channel, config=config(dispatcher.address,
                                 tools=tools))  # fmt: skip


def events(dispatcher: Dispatcher, session_id: str) -> list[wire.ctl.SessionEvent]:
    journal = dispatcher.sessions.ended_journal(session_id)
    if journal is None:
        handle = dispatcher.sessions.get_open(session_id)
        assert handle is not None, session_id
        journal = handle.journal
    found = (journal.event(seq) for seq in range(journal.first_seq, journal.next_seq))
    return [event for event in found if event is not None]


def of(kind: str, found: list[wire.ctl.SessionEvent]) -> list[Any]:
    return [getattr(e, kind) for e in found if e.WhichOneof("event") == kind]


async def info(dispatcher: Dispatcher, session_id: str) -> wire.ctl.SessionInfo:
    async with grpc.aio.insecure_channel(dispatcher.address) as channel:
        control = wire.SessionControlServiceStub(channel)
        response = await control.GetSession(wire.ctl.GetSessionRequest(session_id=session_id))
        return response.session


async def test_content_and_reasoning_stream_to_the_dispatcher_and_usage_is_reported() -> None:
    reply = Reply(chunks=[*content_chunks("The answer", " is 42.", reasoning=("Let me", " think.")),
                          usage_chunk(12, 7, reasoning=3)])  # fmt: skip
    async with running_dispatcher() as dispatcher, running_fake_openai(reply) as server:
        result = await run_model(dispatcher, settings(server, system_prompt="Be brief.", temperature=0.2,
                                                      max_tokens=64))  # fmt: skip
        assert result.state is SessionState.FINISHED, result
        found = events(dispatcher, result.session_id)
        assert "".join(c.text for c in of("content", found)) == "The answer is 42."
        assert "".join(t.delta for t in of("thought", found)) == "Let me think."
        assert {t.step_name for t in of("thought", found)} == {"reasoning"}
        [usage] = of("usage", found)
        assert (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens) == (12, 7, 3)
        assert usage.model == "fake-model" and not usage.estimated
        shown = await info(dispatcher, result.session_id)  # an ended session keeps its usage
        assert (shown.usage.total_tokens, shown.usage.model_requests) == (19, 1)
        assert shown.agent_name == "openai:fake-model"
    [body] = server.requests
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("fake-model", 0.2, 64)
    # The dispatcher's catalog is the model's function list, schemas included.
    functions = {tool["function"]["name"]: tool["function"] for tool in body["tools"]}
    assert {"calculator", "clock", "echo", "sleep"} <= set(functions)
    assert functions["calculator"]["parameters"]["required"] == ["expression"]
    assert result.usage.completion_tokens == 7 and result.usage.model_requests == 1


async def test_parallel_tool_calls_run_on_the_dispatcher_and_their_results_go_back_to_the_model() -> None:
    first = Reply(chunks=[*tool_call_chunks(("call_a", "calculator", {"expression": "6 * 7"}),
                                            ("call_b", "echo", {"note": "hi"})), usage_chunk(20, 10)])  # fmt: skip
    second = Reply(chunks=[*content_chunks("It is 42."), usage_chunk(40, 4)])
    async with running_dispatcher() as dispatcher, running_fake_openai(first, second) as server:
        result = await run_model(dispatcher, settings(server, api_key="sk-test", headers={"X-Team": "blue"}))
        assert result.state is SessionState.FINISHED, result
        found = events(dispatcher, result.session_id)
        assert sorted(c.tool_name for c in of("tool_call", found)) == ["calculator", "echo"]
        assert len(of("tool_result", found)) == 2
        shown = await info(dispatcher, result.session_id)
        assert (shown.usage.prompt_tokens, shown.usage.completion_tokens, shown.usage.model_requests) == (60, 14, 2)
    assert len(server.requests) == 2
    assert server.headers[0]["authorization"] == "Bearer sk-test" and server.headers[0]["x-team"] == "blue"
    messages = server.requests[1]["messages"]
    assistant, *tool_messages = messages[1:]
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_a", "call_b"]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"expression": "6 * 7"}
    answers = {m["tool_call_id"]: json.loads(m["content"]) for m in tool_messages}
    assert all(m["role"] == "tool" for m in tool_messages)
    assert answers["call_a"]["value"] == 42 and answers["call_b"] == {"note": "hi"}


class StopClock(Observer):
    """When the stop reached the commander (the tests' clock), and every content delta emitted."""

    def __init__(self) -> None:
        self.stop_received_at: float | None = None
        self.emitted_after_stop = 0

    def __call__(self, event: SessionEvent) -> None:
        if isinstance(event, StopReceived) and self.stop_received_at is None:
            self.stop_received_at = time.monotonic()
        elif isinstance(event, ContentEmitted) and self.stop_received_at is not None:
            self.emitted_after_stop += 1


async def test_a_stop_closes_the_model_response_at_once_and_nothing_after_it_reaches_the_dispatcher() -> None:
    slow = Reply(chunks=content_chunks(*(f" t{n}" for n in range(2000))), delay_s=0.005)
    clock = StopClock()
    async with running_dispatcher() as dispatcher, running_fake_openai(slow) as server:
        async with anyio.create_task_group() as tg, grpc.aio.insecure_channel(dispatcher.address) as channel:
            results: list[SessionResult] = []

            async def session() -> None:
                agent = OpenAIChatAgent(settings(server))
                results.append(await run_session(agent, "Count", channel=channel, config=config(dispatcher.address),
                                                 session_id="stop-me", observer=clock))  # fmt: skip

            tg.start_soon(session)
            await wait_until(lambda: len(server.written) > 20, "the model streamed some tokens")
            control = wire.SessionControlServiceStub(channel)
            server.mark_stop()
            answer = await control.StopSession(
                wire.ctl.StopSessionRequest(session_id="stop-me", reason="enough", code=wire.pb.STOP_CODE_OPERATOR)
            )
            confirmed_at = time.monotonic()
        assert answer.result == wire.ctl.STOP_RESULT_CONFIRMED, answer
        [result] = results
        assert result.state is SessionState.STOPPED and result.stop is not None
        assert result.stop.code is StopCode.OPERATOR
        # The request was closed (the server saw the client go) before the stop was confirmed:
        # the halt includes the abort, and the abort was measured.
        assert server.disconnected.is_set() and clock.stop_received_at is not None
        assert server.disconnected_at is not None
        assert clock.stop_received_at <= server.disconnected_at <= confirmed_at
        assert result.stop_to_abort_ms is not None and 0 <= result.stop_to_abort_ms
        assert result.stop_to_halt_ms is not None and result.stop_to_abort_ms <= result.stop_to_halt_ms
        assert len(server.written) < 1000  # nowhere near the 2000 tokens: generation was cut off
        # Nothing the server wrote once the stop had reached the commander was emitted or reached
        # the dispatcher (the agent never read it).
        assert clock.emitted_after_stop == 0
        forwarded = "".join(c.text for c in of("content", events(dispatcher, "stop-me"))) + " "
        late = [w for w in server.written if w.at > clock.stop_received_at and w.data != "data: [DONE]"]
        for written in late:
            token = json.loads(written.data[5:])["choices"][0]["delta"].get("content", "")
            assert token and f"{token} " not in forwarded, (token, late)
        confirm = of("stop_confirm", events(dispatcher, "stop-me"))
        assert confirm and confirm[0].halt_us >= round(result.stop_to_abort_ms * 1000) - 1


async def test_a_completion_token_budget_stops_the_session_with_the_figures() -> None:
    reply = Reply(chunks=[*content_chunks("Long", " answer"), usage_chunk(5, 50)])
    budget = test_config(policy={"max_session_s": 60.0, "idle_timeout_s": 30.0, "max_completion_tokens": 10})
    async with running_dispatcher(budget) as dispatcher, running_fake_openai(reply) as server:
        result = await run_model(dispatcher, settings(server))
        assert result.state is SessionState.STOPPED and result.stop is not None, result
        assert result.stop.code is StopCode.BUDGET_EXCEEDED
        assert result.stop.cause == "budget=completion_tokens limit=10 used=50"
        shown = await info(dispatcher, result.session_id)
        assert shown.outcome.error_code == "BUDGET_EXCEEDED" and shown.usage.completion_tokens == 50


async def test_a_total_token_budget_counts_prompt_and_completion_over_the_model_requests() -> None:
    first = Reply(chunks=[*tool_call_chunks(("c1", "echo", {})), usage_chunk(60, 5)])
    second = Reply(chunks=[*content_chunks("Done"), usage_chunk(70, 5)])
    budget = test_config(policy={"max_session_s": 60.0, "idle_timeout_s": 30.0, "max_total_tokens": 100})
    async with running_dispatcher(budget) as dispatcher, running_fake_openai(first, second) as server:
        result = await run_model(dispatcher, settings(server))
    assert result.stop is not None and result.stop.cause == "budget=total_tokens limit=100 used=140", result


async def test_without_a_usage_chunk_usage_is_counted_and_marked_estimated() -> None:
    reply = Reply(chunks=content_chunks("a", "b", "c"))
    async with running_dispatcher() as dispatcher, running_fake_openai(reply) as server:
        result = await run_model(dispatcher, settings(server))
        [usage] = of("usage", events(dispatcher, result.session_id))
    assert usage.estimated and usage.completion_tokens == 3 and usage.prompt_tokens > 0


async def test_a_session_limited_to_some_tools_offers_only_those_and_refuses_the_others() -> None:
    first = Reply(chunks=tool_call_chunks(("c1", "calculator", {"expression": "1+1"})))
    second = Reply(chunks=content_chunks("ok"))
    async with running_dispatcher() as dispatcher, running_fake_openai(first, second) as server:
        result = await run_model(dispatcher, settings(server), tools=("echo", "nope"))
        assert result.state is SessionState.FINISHED, result
        assert any("UNKNOWN_TOOLS" in e and "nope" in e for e in result.errors), result.errors
        [refused] = of("tool_result", events(dispatcher, result.session_id))
    assert [t["function"]["name"] for t in server.requests[0]["tools"]] == ["echo"]
    assert refused.error.code == wire.pb.TOOL_ERROR_CODE_UNKNOWN_TOOL
    assert "'calculator' is not enabled for this session (enabled: echo)" in refused.error.message
    fed_back = json.loads(server.requests[1]["messages"][-1]["content"])
    assert fed_back["error"]["code"] == "UNKNOWN_TOOL"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("replies", "code", "requests", "detail"),
    [
        ([Reply(status=401, error_message="Incorrect API key provided")], "MODEL_UNAUTHORIZED", 1, "Incorrect API key"),
        ([Reply(status=404, error_message="The model `x` does not exist")], "MODEL_NOT_FOUND", 1, "does not exist"),
        ([Reply(status=500, error_message="boom")], "MODEL_UNAVAILABLE", 3, "HTTP 500: boom"),
        ([Reply(status=429, error_message="slow down", headers={"retry-after": "0"})], "MODEL_RATE_LIMITED", 3,
         "slow down"),
        ([Reply(status=400, error_message="bad temperature")], "MODEL_BAD_REQUEST", 1, "bad temperature"),
        ([Reply(chunks=["data: {not json"])], "MODEL_BAD_RESPONSE", 1, "not JSON"),
        ([Reply(chunks=["<html>oops</html>"])], "MODEL_BAD_RESPONSE", 1, "not a server-sent event"),
        ([Reply(chunks=["data: " + "x" * (1024 * 1024 + 10)])], "MODEL_BAD_RESPONSE", 1, "over 1048576 bytes"),
        ([Reply(chunks=content_chunks("cut", finish=False), done=False)], "MODEL_BAD_RESPONSE", 1, "before the model"),
        ([Reply(content_type="application/json")], "MODEL_BAD_RESPONSE", 1, "text/event-stream"),
        ([Reply(chunks=[{"error": {"message": "engine died"}}])], "MODEL_UNAVAILABLE", 1, "engine died"),
        ([Reply(chunks=content_chunks("slow"), delay_s=2.0)], "MODEL_TIMEOUT", 1, "no chunk within"),
    ],
)  # fmt: skip
async def test_each_model_error_fails_the_session_with_its_reason_on_both_sides(
    replies: list[Reply], code: str, requests: int, detail: str
) -> None:
    async with running_dispatcher() as dispatcher, running_fake_openai(*replies) as server:
        result = await run_model(dispatcher, settings(server, request_timeout_s=0.5))
        assert result.state is SessionState.FAILED, result
        assert result.error_code == code and detail in result.reason, result
        shown = await info(dispatcher, result.session_id)
        assert shown.outcome.error_code == code
        assert detail in shown.outcome.reason and code in shown.outcome.reason
    assert len(server.requests) == requests  # 429 and 5xx: retried (twice, by default) before failing


async def test_a_retry_after_a_500_that_succeeds_finishes_the_session() -> None:
    replies = [Reply(status=503, error_message="warming up"), Reply(chunks=content_chunks("fine"))]
    async with running_dispatcher() as dispatcher, running_fake_openai(*replies) as server:
        result = await run_model(dispatcher, settings(server))
    assert result.state is SessionState.FINISHED and len(server.requests) == 2, result


async def test_a_server_that_refuses_connections_is_model_unreachable() -> None:
    async with running_dispatcher() as dispatcher:
        result = await run_model(dispatcher, settings(f"http://127.0.0.1:{_free_port()}/v1"))
        shown = await info(dispatcher, result.session_id)
    assert result.state is SessionState.FAILED and result.error_code == "MODEL_UNREACHABLE", result
    assert shown.outcome.error_code == "MODEL_UNREACHABLE"


async def test_a_model_that_keeps_calling_tools_ends_after_max_steps() -> None:
    loop = Reply(chunks=tool_call_chunks(("c", "echo", {})))
    async with running_dispatcher() as dispatcher, running_fake_openai(loop) as server:
        result = await run_model(dispatcher, settings(server, max_steps=2))
    assert result.error_code == "MODEL_MAX_STEPS" and len(server.requests) == 2, result


async def test_list_tools_and_a_start_session_subset_of_unknown_tools() -> None:
    async with running_dispatcher() as dispatcher, grpc.aio.insecure_channel(dispatcher.address) as channel:
        control = wire.SessionControlServiceStub(channel)
        listed = await control.ListTools(wire.ctl.ListToolsRequest())
        by_name = {tool.name: tool for tool in listed.tools}
        assert [tool.name for tool in listed.tools] == sorted(by_name)
        assert json.loads(by_name["calculator"].parameters_json_schema)["required"] == ["expression"]
        assert by_name["calculator"].description
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await control.Ask(wire.ctl.AskRequest(input_text="hi", tools=["echo", "no_such_tool"]))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "no_such_tool" in (refused.value.details() or "")


async def test_start_session_with_a_tool_subset_reaches_the_welcome_of_a_pool_commander() -> None:
    reply = Reply(chunks=content_chunks("pooled"))
    async with running_dispatcher() as dispatcher, running_fake_openai(reply) as server:
        async with grpc.aio.insecure_channel(dispatcher.address) as channel, anyio.create_task_group() as tg:
            pool_config = replace(config(dispatcher.address), agent=AgentConfig(name="pool-model"))

            async def pool() -> None:
                await run_session(OpenAIChatAgent(settings(server)), "", channel=channel, config=pool_config,
                                  await_assignment=True)  # fmt: skip

            tg.start_soon(pool)
            await wait_until(lambda: dispatcher.sessions.free_commanders == 1, "the pool stream is parked")
            control = wire.SessionControlServiceStub(channel)
            answer = await control.Ask(wire.ctl.AskRequest(input_text="hi", tools=["clock"]))
        assert answer.answer == "pooled" and answer.outcome.state == wire.ctl.SESSION_STATE_FINISHED
    assert [t["function"]["name"] for t in server.requests[0]["tools"]] == ["clock"]
