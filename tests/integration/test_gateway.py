"""The HTTP/SSE gateway against a real in-process dispatcher, real pool commanders and a real
uvicorn on a free loopback port, driven by real HTTP clients: httpx, httpx-sse and the
official OpenAI SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
import openai
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from dispatcher.auth import hash_token
from dispatcherctl.client import ClientConfig
from dispatcherctl.render import message_to_dict
from gateway.config import DEFAULT_MODEL, GatewayConfig
from gateway.server import GatewayServer
from shared import wire
from shared.model import SessionState, StopCode
from tests.certs import Pki
from tests.conftest import WAIT_S, Gate, RawSession, running_dispatcher, test_config, wait_until
from tests.integration.test_approval import approval_tools
from tests.integration.test_control import pool_commanders
from tests.integration.test_tls import tls_config

pytestmark = pytest.mark.anyio

GATEWAY_ID = "gw-test"


@asynccontextmanager
async def running_gateway(
    target: str, upstream: ClientConfig | None = None, **settings: Any
) -> AsyncIterator[GatewayServer]:
    """A real gateway (uvicorn) on a free loopback port in front of `target` (`upstream`: how it dials)."""
    upstream = upstream or ClientConfig(target=target)
    config = GatewayConfig(upstream=upstream, port=0, gateway_id=GATEWAY_ID, **settings)
    server = GatewayServer(config)
    task = asyncio.get_running_loop().create_task(server.run())
    try:
        await server.wait_started(task)
        yield server
    finally:
        server.exit()
        await asyncio.wait_for(task, WAIT_S)


@asynccontextmanager
async def gateway_client(server: GatewayServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as client:
        yield client


async def collect(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> list[ServerSentEvent]:
    """Every SSE event of one response, to its end."""
    async with aconnect_sse(client, method, url, **kw) as source:
        assert source.response.status_code == 200, await source.response.aread()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [event async for event in source.aiter_sse()]


def seqs(events: list[ServerSentEvent]) -> list[int]:
    """The journal seqs (`end` and `error` carry none; httpx-sse repeats the last one for them)."""
    return [int(e.id) for e in events if e.event not in ("end", "error")]


def assert_error(response: httpx.Response, status: int, code: str, words: str = "") -> dict[str, Any]:
    """A JSON error body with this status, never a traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["status"] == status and error["code"] == code, error
    assert words in error["message"], error
    assert "Traceback" not in response.text
    return error


def the_stop(results: list[Any]) -> Any:
    assert len(results) == 1
    result = results[0]
    assert result.state is SessionState.STOPPED and result.stop is not None, result
    return result.stop


# -- POST /v1/sessions ---------------------------------------------------------------


async def test_a_session_streams_one_sse_event_per_journal_event() -> None:
    async with running_dispatcher() as d, pool_commanders(d, 1), running_gateway(d.address) as gw:
        async with gateway_client(gw) as client:
            events = await collect(client, "POST", "/v1/sessions", json={"input": "What is 6 * 7?"})
        kinds = [e.event for e in events]
        assert kinds[0] == "state" and kinds[-2:] == ["state", "end"]
        assert {"thought", "content", "tool_call", "tool_result"} <= set(kinds)
        assert seqs(events) == list(range(1, len(events)))  # every event but `end` has its seq
        first = json.loads(events[0].data)
        session_id = first["session_id"]
        assert first["state_change"]["state"] == "SESSION_STATE_OPEN"
        answer = "".join(json.loads(e.data)["content"]["text"] for e in events if e.event == "content")
        assert "42" in answer
        end = json.loads(events[-1].data)
        assert end["session_id"] == session_id and end["outcome"]["state"] == "SESSION_STATE_FINISHED"


async def test_a_client_that_goes_away_stops_its_session_with_the_http_path_within_100_ms() -> None:
    async with (
        running_dispatcher() as d,
        pool_commanders(d, 1, tokens_per_s=200, answer_words=10_000) as results,
        running_gateway(d.address) as gw,
        gateway_client(gw) as client,
    ):
        async with aconnect_sse(client, "POST", "/v1/sessions", json={"input": "a long story"}) as source:
            async for event in source.aiter_sse():
                if event.event == "content":
                    break
            left_at_ms = time.time() * 1000
            # leaving the block closes the connection mid-answer, as a closed tab does
        await wait_until(lambda: len(results) == 1, "the commander's session ended")
        stop = the_stop(results)
        assert stop.code is StopCode.USER_CANCEL
        assert stop.path[0].startswith("http:127.0.0.1:") and stop.path[1] == f"gateway:{GATEWAY_ID}"
        assert stop.path[-1] == "dispatcher:test"
        assert stop.issued_at_ms - left_at_ms < 100, f"stopped {stop.issued_at_ms - left_at_ms:.0f} ms after"


async def test_a_kept_session_survives_its_client_and_resumes_with_last_event_id() -> None:
    async with (
        running_dispatcher() as d,
        pool_commanders(d, 1, tokens_per_s=300, answer_words=300) as results,
        running_gateway(d.address) as gw,
        gateway_client(gw) as client,
    ):
        seen: list[ServerSentEvent] = []
        body = {"input": "tell me", "on_disconnect": "keep"}
        async with aconnect_sse(client, "POST", "/v1/sessions", json=body) as source:
            session_id = source.response.headers["x-session-id"]
            async for event in source.aiter_sse():
                seen.append(event)
                if sum(e.event == "content" for e in seen) == 5:
                    break
        info = (await client.get(f"/v1/sessions/{session_id}")).json()["session"]
        assert info["state"] not in ("SESSION_STATE_STOPPED", "SESSION_STATE_CANCELLED")  # still going
        last = seen[-1].id
        rest = await collect(client, "GET", f"/v1/sessions/{session_id}/events", headers={"Last-Event-ID": last})
        assert rest[-1].event == "end"
        assert json.loads(rest[-1].data)["outcome"]["state"] == "SESSION_STATE_FINISHED"
        numbers = seqs(seen) + seqs(rest)
        assert numbers == list(range(1, len(numbers) + 1))  # no gap, no duplicate
        await wait_until(lambda: len(results) == 1, "the commander's session ended")
        assert results[0].state is SessionState.FINISHED
        again = await collect(client, "GET", f"/v1/sessions/{session_id}/events?from_seq=3")
        assert seqs(again) == list(range(3, len(numbers) + 1))  # an ended session replays, then ends
        assert again[-1].event == "end"


async def test_stop_answers_confirmed_with_its_path_and_times() -> None:
    async with (
        running_dispatcher() as d,
        pool_commanders(d, 1, tokens_per_s=200, answer_words=10_000) as results,
        running_gateway(d.address) as gw,
        gateway_client(gw) as client,
    ):
        body = {"input": "go on", "on_disconnect": "keep"}
        async with aconnect_sse(client, "POST", "/v1/sessions", json=body) as source:
            session_id = source.response.headers["x-session-id"]
            async for event in source.aiter_sse():
                if event.event == "content":
                    break
        response = await client.post(f"/v1/sessions/{session_id}/stop", json={"reason": "enough, thanks"})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["confirmed"] is True and answer["result"] == "STOP_RESULT_CONFIRMED"
        assert answer["stop_to_confirm_us"] > 0 and answer["round_trip_ms"] > 0
        assert answer["stop"]["path"][:2] == [answer["stop"]["path"][0], f"gateway:{GATEWAY_ID}"]
        assert answer["stop"]["path"][0].startswith("http:127.0.0.1:")
        await wait_until(lambda: len(results) == 1, "the commander's session ended")
        stop = the_stop(results)
        assert stop.code is StopCode.OPERATOR and stop.reason == "enough, thanks"
        again = (await client.post(f"/v1/sessions/{session_id}/stop", json={"reason": "again"})).json()
        assert again["confirmed"] is False and again["result"] == "STOP_RESULT_ALREADY_ENDED"


# -- list / get ----------------------------------------------------------------------


async def test_list_and_get_are_dispatcherctl_json() -> None:
    async with (
        running_dispatcher() as d,
        pool_commanders(d, 1),
        running_gateway(d.address) as gw,
        gateway_client(gw) as client,
        grpc.aio.insecure_channel(d.address) as ch,
    ):
        await collect(client, "POST", "/v1/sessions", json={"input": "hi", "session_id": "listed"})
        stub = wire.SessionControlServiceStub(ch)
        direct = await stub.GetSession(wire.ctl.GetSessionRequest(session_id="listed"))
        shown = (await client.get("/v1/sessions/listed")).json()
        assert shown == message_to_dict(direct)  # what `dispatcherctl show --json` prints
        listed = (await client.get("/v1/sessions", params={"state": "ended"})).json()["sessions"]
        assert [s["session_id"] for s in listed] == ["listed"] and listed[0] == shown["session"]
        assert (await client.get("/v1/sessions", params={"state": "live"})).json() == {"sessions": []}


async def test_the_session_table_stream_sends_changes_and_keepalive_comments() -> None:
    async with (
        running_dispatcher() as d,
        pool_commanders(d, 1),
        running_gateway(d.address, keepalive_s=0.05, list_refresh_s=0.05) as gw,
        gateway_client(gw) as client,
    ):
        async with client.stream("GET", "/v1/sessions?stream=true") as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            assert await anext(lines) == "event: sessions"
            assert json.loads((await anext(lines)).removeprefix("data: ")) == {"sessions": []}
            comment = await anext(line async for line in lines if line.startswith(":"))
            assert comment.startswith(": ping")  # an idle stream gets keep-alive comments
            await collect(client, "POST", "/v1/sessions", json={"input": "hi", "session_id": "tabled"})
            async for line in lines:
                if line.startswith("data: ") and '"tabled"' in line and "SESSION_STATE_FINISHED" in line:
                    break


async def wait_for_event(client: httpx.AsyncClient, session_id: str, kind: str) -> dict[str, Any]:
    """The session's first event of `kind`, read through the gateway."""
    async with aconnect_sse(client, "GET", f"/v1/sessions/{session_id}/events") as source:
        async for event in source.aiter_sse():
            if event.event == kind:
                data: dict[str, Any] = json.loads(event.data)
                return data
    raise AssertionError(f"no {kind} event")


async def test_a_call_waiting_for_approval_is_decided_over_http() -> None:
    async with (
        running_dispatcher(tools=approval_tools(Gate())) as d,
        running_gateway(d.address) as gw,
        gateway_client(gw) as client,
        grpc.aio.insecure_channel(d.address) as ch,
    ):
        raw = RawSession(ch)
        await raw.hello("ask-me")
        await raw.tool_call(2, "guarded", '{"x": 1}', call_id="c1")
        request = await wait_for_event(client, "ask-me", "approval_request")
        assert request["approval_request"]["call_id"] == "c1"
        url = "/v1/sessions/ask-me/tool-calls/c1/decision"
        assert_error(await client.post(url, json={"approve": "yes"}), 400, "INVALID_ARGUMENT", "'approve'")
        assert_error(await client.post(url, json={"approve": False}), 400, "INVALID_ARGUMENT", "reason")
        missing = "/v1/sessions/ask-me/tool-calls/nope/decision"
        assert_error(await client.post(missing, json={"approve": True}), 404, "NOT_FOUND")
        decided = (await client.post(url, json={"approve": True, "reason": "fine"})).json()
        assert decided["result"] == "DECIDE_RESULT_DECIDED"
        assert decided["decision"]["decided_by"].startswith("operator:") and decided["decision"]["approved"]
        result = await raw.recv_kind("tool_result")
        assert json.loads(result.tool_result.result_json)["ran"] is True
        again = (await client.post(url, json={"approve": False, "reason": "too late"})).json()
        assert again["result"] == "DECIDE_RESULT_ALREADY_DECIDED" and again["decision"]["approved"] is True
        raw.call.cancel()


# -- OpenAI-compatible -----------------------------------------------------------------


async def test_the_official_openai_sdk_streams_and_gets_whole_answers() -> None:
    async with (
        running_dispatcher() as d,
        pool_commanders(d, 3),  # each serves one session: stream, whole answer, stream with usage
        running_gateway(d.address) as gw,
    ):
        sdk = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="not-checked-in-development-mode")
        models = [m.id async for m in sdk.models.list()]
        assert models[0] == DEFAULT_MODEL
        stream = await sdk.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 2 + 2?"}],
            stream=True,
        )
        content, reasoning, finish = [], [], []
        async for chunk in stream:
            assert chunk.object == "chat.completion.chunk" and chunk.id.startswith("chatcmpl-")
            delta = chunk.choices[0].delta
            content.append(delta.content or "")
            reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
            finish.append(chunk.choices[0].finish_reason)
        assert "4" in "".join(content) and "calculator" in "".join(reasoning)
        assert finish[-1] == "stop" and not any(finish[:-1])
        whole = await sdk.chat.completions.create(
            model="any-name", messages=[{"role": "user", "content": "What is 3 + 4?"}]
        )
        assert whole.object == "chat.completion" and whole.model == "any-name"
        assert "7" in (whole.choices[0].message.content or "") and whole.choices[0].finish_reason == "stop"
        assert "calculator" in (whole.choices[0].message.model_extra or {})["reasoning_content"]
        # Usage: what the commander reported (the scripted agent counts its own), summed.
        assert whole.usage is not None and whole.usage.completion_tokens > 0
        assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
        counted = await sdk.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": "What is 2 + 2?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in counted]
        assert chunks[-1].choices == [] and chunks[-1].usage is not None  # OpenAI's usage chunk, last
        assert chunks[-1].usage.completion_tokens > 0
        assert all(chunk.usage is None for chunk in chunks[:-1])
        with pytest.raises(openai.BadRequestError) as bad:
            await sdk.chat.completions.create(model="m", messages=[{"role": "assistant", "content": "hi"}])
        assert "last message must be a user message" in str(bad.value)
        await sdk.close()


async def test_a_chat_client_that_goes_away_stops_its_session() -> None:
    async with (
        running_dispatcher() as d,
        pool_commanders(d, 1, tokens_per_s=200, answer_words=10_000) as results,
        running_gateway(d.address) as gw,
        gateway_client(gw) as client,
    ):
        body = {"model": "m", "messages": [{"role": "user", "content": "a long story"}]}
        request = asyncio.get_running_loop().create_task(client.post("/v1/chat/completions", json=body))
        await wait_until(lambda: d.sessions.registry.open_count == 1, "the session started")
        request.cancel()  # the non-streaming client gives up: its connection closes
        with pytest.raises(asyncio.CancelledError):
            await request
        await wait_until(lambda: len(results) == 1, "the commander's session ended")
        stop = the_stop(results)
        assert stop.code is StopCode.USER_CANCEL and stop.path[0].startswith("http:")


# -- errors ----------------------------------------------------------------------------


async def test_bad_requests_get_json_errors_with_their_status() -> None:
    async with (
        running_dispatcher() as d,
        running_gateway(d.address, max_body_bytes=4096) as gw,
        gateway_client(gw) as client,
        grpc.aio.insecure_channel(d.address) as ch,
    ):
        bystander = RawSession(ch)
        await bystander.hello("bystander")
        assert_error(await client.post("/v1/sessions", content=b"{nope"), 400, "INVALID_ARGUMENT", "not valid JSON")
        assert_error(await client.post("/v1/sessions", json=[1]), 400, "INVALID_ARGUMENT", "JSON object")
        assert_error(await client.post("/v1/sessions", json={}), 400, "INVALID_ARGUMENT", "'input' is required")
        bad_mode = {"input": "x", "on_disconnect": "later"}
        assert_error(await client.post("/v1/sessions", json=bad_mode), 400, "INVALID_ARGUMENT", "on_disconnect")
        bad_timeout = {"input": "x", "timeout_ms": -1}
        assert_error(await client.post("/v1/sessions", json=bad_timeout), 400, "INVALID_ARGUMENT", "timeout_ms")
        huge = {"input": "x" * 5000}
        assert_error(await client.post("/v1/sessions", json=huge), 413, "RESOURCE_EXHAUSTED", "at most 4096")
        no_pool = {"input": "x", "wait_for_commander_ms": 50}
        assert_error(await client.post("/v1/sessions", json=no_pool), 503, "UNAVAILABLE", "no free commander")
        busy = {"input": "x", "session_id": "bystander", "wait_for_commander_ms": 50}
        assert_error(await client.post("/v1/sessions", json=busy), 409, "ALREADY_EXISTS", "already in use")
        assert_error(await client.get("/v1/sessions/nope"), 404, "NOT_FOUND", "nope")
        assert_error(await client.get("/v1/sessions/nope/events"), 404, "NOT_FOUND", "nope")
        assert_error(await client.post("/v1/sessions/nope/stop", json={"reason": "r"}), 404, "NOT_FOUND")
        assert_error(await client.post("/v1/sessions/bystander/stop", json={}), 400, "INVALID_ARGUMENT", "reason")
        bad_code = {"reason": "r", "code": "sideways"}
        assert_error(await client.post("/v1/sessions/bystander/stop", json=bad_code), 400, "INVALID_ARGUMENT")
        headers = {"Last-Event-ID": "yesterday"}
        events = "/v1/sessions/bystander/events"
        assert_error(await client.get(events, headers=headers), 400, "INVALID_ARGUMENT", "Last-Event-ID")
        assert_error(await client.get(events, params={"from_seq": "99"}), 409, "OUT_OF_RANGE", "keeps events 1..")
        assert_error(await client.get(events, params={"kind": "gossip"}), 400, "INVALID_ARGUMENT", "event kind")
        assert_error(await client.get("/v1/sessions", params={"state": "odd"}), 400, "INVALID_ARGUMENT", "state")
        assert_error(await client.get("/v1/nothing-here"), 404, "NOT_FOUND", "no route GET /v1/nothing-here")
        assert_error(await client.delete("/v1/sessions"), 405, "METHOD_NOT_ALLOWED")
        chat = "/v1/chat/completions"
        assert_error(await client.post(chat, json={"messages": []}), 400, "INVALID_ARGUMENT", "messages")
        weird = {"messages": [{"role": "user", "content": 5}]}
        assert_error(await client.post(chat, json=weird), 400, "INVALID_ARGUMENT", "content")
        # The bystander never noticed.
        await bystander.content(2, "still here", is_finish=True)
        await bystander.call.done_writing()
        code, _, _ = await bystander.status()
        assert code is grpc.StatusCode.OK


async def test_tokens_pass_through_to_the_dispatchers_roles() -> None:
    tokens = {"alice": ("operator", "op-secret"), "web": ("backend", "web-secret"), "bot": ("commander", "c")}
    lines = ";".join(f"{role} {name} {hash_token(token)}" for name, (role, token) in tokens.items())
    config = test_config(auth={"tokens": lines}, pool={"wait_for_commander_ms": 50})
    async with running_dispatcher(config) as d, running_gateway(d.address) as gw, gateway_client(gw) as client:
        assert_error(await client.get("/v1/sessions"), 401, "UNAUTHENTICATED")
        wrong = {"Authorization": "Bearer guess"}
        assert_error(await client.get("/v1/sessions", headers=wrong), 401, "UNAUTHENTICATED")
        bot = {"Authorization": "Bearer c"}
        assert_error(await client.get("/v1/sessions", headers=bot), 403, "PERMISSION_DENIED")
        assert (await client.get("/v1/sessions", headers={"Authorization": "Bearer op-secret"})).json() == {
            "sessions": []
        }
        web = {"Authorization": "Bearer web-secret"}
        response = await client.post("/v1/sessions", json={"input": "x"}, headers=web)
        assert_error(response, 503, "UNAVAILABLE", "no free commander")  # allowed: only the pool is empty
        sdk = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="guess")
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.list()
        await sdk.close()


async def test_an_unreachable_dispatcher_is_503() -> None:
    async with running_dispatcher() as d:
        address = d.address
    assert address is not None
    async with running_gateway(address) as gw, gateway_client(gw) as client:
        assert_error(await client.get("/v1/sessions"), 503, "UNAVAILABLE", f"cannot reach the dispatcher at {address}")


async def test_a_client_too_slow_for_the_journal_gets_a_final_error_with_the_resume_point() -> None:
    config = test_config(session={"journal_max_events": 64})
    async with (
        running_dispatcher(config) as d,
        running_gateway(d.address, send_timeout_s=WAIT_S) as gw,
        gateway_client(gw) as client,
        grpc.aio.insecure_channel(d.address) as ch,
    ):
        raw = RawSession(ch)
        await raw.hello("fast")
        async with client.stream("GET", "/v1/sessions/fast/events") as response:
            lines = response.aiter_lines()
            assert await anext(lines) == "id: 1"  # then this client stops reading
            chunk = "x" * 4096  # 8000 x 4 KiB: more than every buffer between the journal and us
            for seq in range(2, 8002):
                await raw.content(seq, chunk)
            await raw.content(8002, "", is_finish=True)
            await raw.call.done_writing()
            code, _, _ = await raw.status()
            assert code is grpc.StatusCode.OK  # the commander was never slowed
            last_id, error = 0, None
            async for line in lines:
                if line.startswith("id: "):
                    last_id = int(line.removeprefix("id: "))
                elif line == "event: error":
                    error = json.loads((await anext(lines)).removeprefix("data: "))["error"]
        assert error is not None, "the stream ended without an error"
        assert error["code"] == "RESOURCE_EXHAUSTED" and "fell behind" in error["message"]
        assert error["resume_from_seq"] == last_id + 1


async def test_cors_is_off_unless_configured() -> None:
    async with running_dispatcher() as d:
        assert d.address is not None
        preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
        async with running_gateway(d.address) as gw, gateway_client(gw) as client:
            response = await client.options("/v1/sessions", headers=preflight)
            assert "access-control-allow-origin" not in response.headers
        async with running_gateway(d.address, cors_origins=("http://app.example",)) as gw, gateway_client(gw) as client:
            response = await client.options("/v1/sessions", headers=preflight)
            assert response.headers["access-control-allow-origin"] == "http://app.example"
            assert response.status_code == 200


async def test_a_malformed_via_header_is_refused_by_the_dispatcher() -> None:
    async with running_dispatcher() as d, grpc.aio.insecure_channel(d.address) as ch:
        raw = RawSession(ch)
        await raw.hello("via")
        stub = wire.SessionControlServiceStub(ch)
        for via in ("a b", ",".join(["h"] * 5), "x" * 200, "a,,b"):
            request = wire.ctl.StopSessionRequest(session_id="via", reason="r")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.StopSession(request, metadata=(("x-via", via),))
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "x-via" in (refused.value.details() or "")
        start = wire.ctl.StartSessionRequest(input_text="x", wait_for_commander_ms=50)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.StartSession(start, metadata=(("x-via", "a b"),)).read()
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert d.sessions.registry.get_open("via") is not None  # untouched
        raw.call.cancel()


async def test_the_gateway_dials_a_mutual_tls_dispatcher_with_its_certificate(tmp_path: Any) -> None:
    pki = Pki(tmp_path / "pki")
    gateway_cert = pki.issue_uri("gateway", "spiffe://example.org/gateway")
    config = tls_config(
        pki.server(), client_ca=pki.ca_file, auth={"tokens": "operator gw x509:spiffe://example.org/gateway"}
    )
    async with running_dispatcher(config) as d:
        assert d.address is not None
        upstream = ClientConfig(
            target=d.address, ca_file=str(pki.ca_file), cert_file=str(gateway_cert.cert), key_file=str(gateway_cert.key)
        )
        async with running_gateway(d.address, upstream) as gw, gateway_client(gw) as client:
            # No bearer token: the gateway's certificate is the principal (operator gw).
            listed = await client.get("/v1/sessions")
            assert listed.status_code == 200, listed.text
            assert listed.json()["sessions"] == []
        plain = ClientConfig(target=d.address, ca_file=str(pki.ca_file))  # TLS without a client certificate
        async with running_gateway(d.address, plain) as gw, gateway_client(gw) as client:
            refused = await client.get("/v1/sessions")
            assert refused.status_code == 503, refused.text  # the dispatcher is unreachable for it: a JSON error
            assert refused.json()["error"]["code"] == "UNAVAILABLE"
