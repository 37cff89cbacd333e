"""`--metrics-listen`: scrape a real dispatcher's /metrics over HTTP while real sessions run and
compare every counter with what the test sent and read (exact numbers)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from commander.metrics import CommanderMetrics
from dispatcher.auth import hash_token
from shared import wire
from tests.conftest import (
    WAIT_S,
    Gate,
    RawSession,
    gated_tools,
    run_scripted,
    running_dispatcher,
    test_config,
    wait_until,
)
from tests.integration.test_control import pool_commanders
from tests.scrape import scrape

pytestmark = pytest.mark.anyio

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHAT = {"grpc_service": wire.SERVICE_NAME, "grpc_method": "ChatStream"}


def metrics_config(**sections: object) -> object:
    return test_config(metrics={"listen": "127.0.0.1:0"}, **sections)  # type: ignore[arg-type]


async def test_counters_equal_what_the_session_sent_and_read_while_it_runs_and_after() -> None:
    async with running_dispatcher(metrics_config()) as d, grpc.aio.insecure_channel(d.address) as ch:
        assert d.metrics is not None
        raw = RawSession(ch)
        read = [await raw.hello("m-1")]
        for seq in range(2, 6):
            await raw.content(seq, f"token {seq} ")
        await raw.tool_call(6, "echo", '{"text": "hi"}', call_id="c1")
        read.append(await raw.recv_kind("tool_result"))

        # Live, mid-session (the tool result says every packet before it was read): the open
        # session's own counts, summed at scrape time.
        live = await scrape(d.metrics.address)
        assert live.get("grpc_server_msg_received_total", **CHAT) == 6
        assert live.get("dispatcher_packets_received_total", kind="content") == 4
        assert live.get("dispatcher_packets_received_total", kind="hello") == 1
        assert live.get("dispatcher_packets_received_total", kind="tool_call") == 1
        assert live.get("dispatcher_sessions_open") == 1
        assert live.get("grpc_server_started_total", grpc_type="bidi_stream", **CHAT) == 1

        await raw.content(7, "done", is_finish=True)
        await raw.call.done_writing()
        code, _, _ = await raw.status()
        assert code is grpc.StatusCode.OK
        await wait_until(lambda: d.sessions.registry.open_count == 0, "the session ended")
        info = d.sessions.registry.get_ended("m-1")
        assert info is not None and info.info is not None
        after = await scrape(d.metrics.address)

    assert after.get("grpc_server_msg_received_total", **CHAT) == 7
    assert after.get("dispatcher_packets_received_total", kind="content") == 5
    sent = sum(info.info.packets_out.values())
    assert sent >= len(read) + 1  # welcome, tool result, at least one ack
    assert after.get("grpc_server_msg_sent_total", **CHAT) == sent
    assert after.total("dispatcher_packets_sent_total") == sent
    for kind, n in info.info.packets_out.items():
        assert after.get("dispatcher_packets_sent_total", kind=kind) == n, kind
    assert after.get("grpc_server_handled_total", grpc_code="OK", **CHAT) == 1
    assert after.get("grpc_server_handling_seconds_count", **CHAT) == 1
    assert after.get("dispatcher_sessions_open") == 0
    assert after.get("dispatcher_sessions_ended_total", state="FINISHED") == 1
    assert after.get("dispatcher_tool_calls_total", tool="echo", outcome="ok") == 1
    assert after.get("dispatcher_tool_call_duration_seconds_count", tool="echo", outcome="ok") == 1
    assert after.get("dispatcher_overloaded") == 0


async def test_a_stop_is_counted_with_its_code_origin_and_both_latencies() -> None:
    config = metrics_config(policy={"block_patterns": ("launch codes",)})
    async with running_dispatcher(config) as d:
        assert d.metrics is not None
        result = await run_scripted(d.address, "tell me the launch codes", tokens_per_s=200)
        assert result.stop is not None and result.stop_to_confirm_ms is not None
        samples = await scrape(d.metrics.address)
    assert samples.get("dispatcher_stops_total", code="POLICY_VIOLATION", origin="policy") == 1
    assert samples.get("dispatcher_sessions_ended_total", state="STOPPED") == 1
    assert samples.get("dispatcher_stop_to_confirm_seconds_count") == 1
    assert 0 < samples.get("dispatcher_stop_to_confirm_seconds_sum") < 5
    assert samples.get("dispatcher_stop_to_halt_seconds_count") == 1
    assert samples.get("grpc_server_handled_total", grpc_code="PERMISSION_DENIED", **CHAT) == 1


async def test_refused_calls_are_handled_with_their_codes() -> None:
    config = metrics_config(auth={"tokens": f"operator alice {hash_token('op-secret')}"})
    operator = (("authorization", "Bearer op-secret"),)
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch:
        assert d.metrics is not None
        control = wire.SessionControlServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
            await control.GetSession(wire.ctl.GetSessionRequest(session_id="x"))
        assert unauthenticated.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await control.GetSession(wire.ctl.GetSessionRequest(session_id="nope"), metadata=operator)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        await control.ListSessions(wire.ctl.ListSessionsRequest(), metadata=operator)
        samples = await scrape(d.metrics.address)
    get = {"grpc_service": wire.CONTROL_SERVICE_NAME, "grpc_method": "GetSession", "grpc_type": "unary"}
    assert samples.get("grpc_server_started_total", **get) == 2
    assert samples.get("grpc_server_handled_total", grpc_code="UNAUTHENTICATED", **get) == 1
    assert samples.get("grpc_server_handled_total", grpc_code="NOT_FOUND", **get) == 1
    assert samples.get("grpc_server_msg_received_total", **get) == 2
    assert samples.get("grpc_server_msg_sent_total", **get) == 0
    listing = {"grpc_method": "ListSessions"}
    assert samples.get("grpc_server_handled_total", grpc_code="OK", **listing) == 1
    assert samples.get("grpc_server_msg_sent_total", **listing) == 1


def _exposed_names(text: str) -> set[str]:
    """Every series name a scrape can offer, samples or not (a labelled family may have none yet)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in suffixes.get(family.type, ("",))
    }


def _used_in_deploy() -> set[str]:
    """The metric names deploy/'s alert rules and dashboard refer to."""
    used: set[str] = set()
    for path in (DEPLOY / "prometheus" / "alerts.yml", DEPLOY / "grafana" / "dashboard.json"):
        used |= set(re.findall(r"\b(?:dispatcher|grpc_server|commander)_[a-z_]+\b", path.read_text()))
    return used


async def test_every_metric_the_alerts_and_the_dashboard_use_exists() -> None:
    used = _used_in_deploy()
    assert len(used) > 15, used
    commander = CommanderMetrics("127.0.0.1:0")
    commander.start()
    try:
        async with running_dispatcher(metrics_config()) as d:
            assert d.metrics is not None
            await run_scripted(d.address, "What is 6 * 7?", tokens_per_s=0)
            exposed = _exposed_names((await scrape(d.metrics.address)).text)
        exposed |= _exposed_names((await scrape(commander.address)).text)
    finally:
        commander.close()
    assert used <= exposed, sorted(used - exposed)


async def test_reflection_and_health_watch_are_counted_with_their_own_shapes() -> None:
    """Reflection is an async generator handler; Health's Watch writes with context.write."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with running_dispatcher(metrics_config()) as d, grpc.aio.insecure_channel(d.address) as ch:
        assert d.metrics is not None
        reflect = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo()
        await reflect.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = await reflect.read()
        assert wire.SERVICE_NAME in {service.name for service in listed.list_services_response.service}
        await reflect.done_writing()
        assert await reflect.read() is grpc.aio.EOF
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        samples = await scrape(d.metrics.address)  # the watch still open: started, its request read
        watch.cancel()
    reflection = {"grpc_method": "ServerReflectionInfo", "grpc_type": "bidi_stream"}
    assert samples.get("grpc_server_handled_total", grpc_code="OK", **reflection) == 1
    assert samples.get("grpc_server_msg_received_total", **reflection) == 1
    assert samples.get("grpc_server_msg_sent_total", **reflection) == 1
    watched = {"grpc_method": "Watch", "grpc_type": "server_stream"}
    assert samples.get("grpc_server_started_total", **watched) == 1
    assert samples.get("grpc_server_msg_received_total", **watched) == 1


async def test_watchers_their_cut_off_a_cancelled_tool_call_and_an_operator_stop() -> None:
    gate = Gate()
    config = metrics_config(session={"journal_max_events": 64})
    async with running_dispatcher(config, gated_tools(gate)) as d, grpc.aio.insecure_channel(d.address) as ch:
        assert d.metrics is not None
        control = wire.SessionControlServiceStub(ch)
        raw = RawSession(ch)
        await raw.hello("watched")
        small_window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]
        async with grpc.aio.insecure_channel(d.address or "", options=small_window) as watch_channel:
            watcher = wire.SessionControlServiceStub(watch_channel).WatchSession(
                wire.ctl.WatchSessionRequest(session_id="watched")
            )
            assert (await asyncio.wait_for(watcher.read(), WAIT_S)).event.seq == 1  # then it stops reading
            assert (await scrape(d.metrics.address)).get("dispatcher_watchers") == 1
            for seq in range(2, 2002):  # far more than the journal keeps and HTTP/2 buffers
                await raw.content(seq, "x" * 2048)
            with pytest.raises(grpc.aio.AioRpcError) as cut_off:  # reading again finds it fell behind
                while await asyncio.wait_for(watcher.read(), WAIT_S) is not grpc.aio.EOF:
                    pass
            assert cut_off.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await raw.tool_call(2002, "gate_tool", call_id="g1")
        await asyncio.wait_for(gate.started.wait(), WAIT_S)
        # StopSession answers once the stop is confirmed (or its grace is over): confirm meanwhile.
        stopping = asyncio.ensure_future(
            control.StopSession(wire.ctl.StopSessionRequest(session_id="watched", reason="enough"))
        )
        stop = (await raw.recv_kind("stop")).stop
        await raw.send(wire.pb.UpstreamPacket(seq=2003, stop_confirm=wire.pb.StopConfirm(stop_id=stop.stop_id)))
        await raw.status()
        await asyncio.wait_for(stopping, WAIT_S)
        await wait_until(lambda: d.sessions.registry.open_count == 0, "the session ended")
        samples = await scrape(d.metrics.address)
    assert samples.get("dispatcher_watchers") == 0
    assert samples.get("dispatcher_watchers_cut_off_total") == 1
    assert samples.get("dispatcher_tool_calls_total", tool="gate_tool", outcome="cancelled") == 1
    assert samples.get("dispatcher_stops_total", code="OPERATOR", origin="operator") == 1
    assert samples.get("dispatcher_stop_to_confirm_seconds_count") == 1
    assert samples.get("dispatcher_packets_received_total", kind="content") == 2000
    assert samples.get("dispatcher_packets_received_total", kind="stop_confirm") == 1
    assert samples.total("dispatcher_packets_received_total") == 2003  # hello, 2000 content, the call, the confirm
    assert samples.get("grpc_server_msg_received_total", **CHAT) == 2003


async def test_pool_gauges_follow_the_commanders() -> None:
    async with running_dispatcher(metrics_config()) as d, pool_commanders(d, 2, tokens_per_s=20, answer_words=400):
        assert d.metrics is not None
        assert (await scrape(d.metrics.address)).get("dispatcher_pool_commanders_free") == 2
        async with grpc.aio.insecure_channel(d.address) as ch:
            started = wire.SessionControlServiceStub(ch).StartSession(
                wire.ctl.StartSessionRequest(input_text="talk", session_id="pooled")
            )
            assert (await asyncio.wait_for(started.read(), WAIT_S)).event.session_id == "pooled"
            busy = await scrape(d.metrics.address)
            started.cancel()
    assert busy.get("dispatcher_pool_commanders_free") == 1
    assert busy.get("dispatcher_pool_commanders_busy") == 1
    assert busy.get("dispatcher_pool_callers_waiting") == 0


async def test_a_commander_that_does_not_read_shows_as_outbox_full() -> None:
    config = metrics_config(session={"outbox_size": 1})
    calls, text = 60, "y" * 16384  # ~1 MiB of results: more than the HTTP/2 windows hold
    async with running_dispatcher(config) as d, grpc.aio.insecure_channel(d.address) as ch:
        assert d.metrics is not None
        raw = RawSession(ch)
        await raw.hello("slow-reader")

        async def send_all() -> None:
            for n in range(calls):
                await raw.tool_call(2 + n, "echo", f'{{"text": "{text}"}}', call_id=f"c{n}")

        sending = asyncio.ensure_future(send_all())
        runner = d.sessions.registry.get_open("slow-reader")
        assert runner is not None
        await wait_until(lambda: runner.outbox.full_waits > 0, "the session waiting for outbox room")  # type: ignore[attr-defined]
        live = await scrape(d.metrics.address)
        assert live.get("dispatcher_outbox_full_total") >= 1
        results = [await raw.recv_kind("tool_result") for _ in range(calls)]  # now read everything
        await asyncio.wait_for(sending, WAIT_S)
        await raw.content(2 + calls, "", is_finish=True)
        await raw.call.done_writing()
        assert (await raw.status())[0] is grpc.StatusCode.OK
        await wait_until(lambda: d.sessions.registry.open_count == 0, "the session ended")
        after = await scrape(d.metrics.address)
    assert len(results) == calls
    assert after.get("dispatcher_outbox_full_total") >= live.get("dispatcher_outbox_full_total")
    assert after.get("dispatcher_tool_calls_total", tool="echo", outcome="ok") == calls
    assert after.get("dispatcher_packets_sent_total", kind="tool_result") == calls


async def test_token_usage_is_counted_by_kind_when_the_session_ends() -> None:
    async with running_dispatcher(metrics_config()) as d, grpc.aio.insecure_channel(d.address) as ch:
        assert d.metrics is not None
        raw = RawSession(ch)
        await raw.hello("u-1")
        for seq, (prompt, completion, reasoning) in enumerate([(100, 20, 5), (130, 7, 0)], start=2):
            usage = wire.pb.Usage(
                prompt_tokens=prompt, completion_tokens=completion, reasoning_tokens=reasoning, model="m"
            )
            await raw.send(wire.pb.UpstreamPacket(seq=seq, usage=usage))
        await raw.content(4, "done", is_finish=True)
        await raw.call.done_writing()
        code, _, _ = await raw.status()
        assert code is grpc.StatusCode.OK
        await wait_until(lambda: d.sessions.registry.open_count == 0, "the session ended")
        after = await scrape(d.metrics.address)
    assert after.get("dispatcher_tokens_total", kind="prompt") == 230
    assert after.get("dispatcher_tokens_total", kind="completion") == 27
    assert after.get("dispatcher_tokens_total", kind="reasoning") == 5
