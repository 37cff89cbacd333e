"""Keepalive against a real dispatcher: the server's ping policy refuses abusive clients,
a silent LLM-style stream outlives every idle timer, and the shipped defaults agree.

Every time here is configured short; the whole file runs in a few seconds.

What grpcio 1.85 C-core actually does (observed with GRPC_TRACE=http_keepalive,http2_ping):
- A client never sends more than one PING per second, whatever `grpc.keepalive_time_ms` says
  (`NextAllowedPingInterval()` in chttp2 writing.cc returns 1 s for clients; the trace shows
  "Ping delayed ... minimum wait:1000ms"). So a server `min_ping_interval_ms` <= 1000 can never be
  violated by a grpcio client: the abuse test uses 1500 ms.
- Strikes only count while the server sends no DATA/HEADERS on the connection: each DATA or
  HEADERS frame the server writes resets them (`ResetPingStrikes`). The dispatcher sends its
  Welcome/Ack right after the Hello, then nothing while the commander is silent, so a silent session
  is exactly the "pings without data" case.
- On the client, the refused call ends UNAVAILABLE with details "Too many pings" (debug string
  "UNAVAILABLE:Too many pings"); the GOAWAY debug data "too_many_pings" only reaches the C-core log:
  `Received a GOAWAY with error code ENHANCE_YOUR_CALM and debug data equal to "too_many_pings"`.
"""

from __future__ import annotations

import time

import anyio
import grpc
import pytest

from commander import CommanderConfig, ConnectionConfig, run_session
from commander.models import ScriptedAgent
from commander.transport import open_channel
from dispatcher.config import DispatcherConfig
from shared.keepalive import KeepaliveConfig
from shared.model import SessionState
from tests.conftest import WAIT_S, RawSession, running_dispatcher, test_config, wait_until

pytestmark = [pytest.mark.anyio]

# Server pings must not interfere with the client-ping tests: one hour.
NO_SERVER_PINGS_MS = 3_600_000


def options(**keepalive: int) -> dict[str, int]:
    return dict(KeepaliveConfig(**keepalive).client_options())


async def finish_ok(raw: RawSession, seq: int) -> None:
    """A tool call answered, then is_finish and half-close: the stream must end OK."""
    await raw.tool_call(seq, "echo", '{"alive":true}', call_id=f"c{seq}")
    result = await raw.recv_kind("tool_result")
    assert result.tool_result.result_json == '{"alive":true}'
    await raw.content(seq + 1, "done", is_finish=True)
    await raw.call.done_writing()
    code, details, _ = await raw.status()
    assert code is grpc.StatusCode.OK, details


async def test_a_client_pinging_too_often_is_refused_and_a_polite_one_is_not() -> None:
    # 1500 ms, not 1000: grpcio clients cap themselves at one PING per second (module docstring),
    # so 1000 ms would never be violated. max_ping_strikes=1 -> GOAWAY on the second strike.
    server = KeepaliveConfig(time_ms=NO_SERVER_PINGS_MS, min_ping_interval_ms=1500, max_ping_strikes=1)
    config = test_config(keepalive={"time_ms": NO_SERVER_PINGS_MS, "min_ping_interval_ms": 1500, "max_ping_strikes": 1})
    assert config.keepalive == server
    abusive = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    polite = KeepaliveConfig(time_ms=2000)
    assert not server.accepts_client(KeepaliveConfig(time_ms=100))
    assert server.accepts_client(polite)

    async with (
        running_dispatcher(config) as dispatcher,
        grpc.aio.insecure_channel(dispatcher.address, options=polite.client_options()) as good_channel,
        grpc.aio.insecure_channel(dispatcher.address, options=abusive) as bad_channel,
    ):
        good = RawSession(good_channel)
        await good.hello("polite")
        bad = RawSession(bad_channel)
        await bad.hello("abusive")
        # Both sessions are silent now: the server sends nothing, every client PING is judged.
        started = time.monotonic()
        with anyio.fail_after(WAIT_S):
            code = await bad.call.code()
        elapsed = time.monotonic() - started
        assert code is grpc.StatusCode.UNAVAILABLE
        details = await bad.call.details()
        assert details == "Too many pings", details
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await bad.call.read()
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "Too many pings" in (info.value.debug_error_string() or "")
        # ~2 s: a ping at once (BDP/keepalive), strikes at +1 s and +2 s.
        assert elapsed < 5.0, f"GOAWAY took {elapsed:.1f} s"

        # The dispatcher noticed the abusive commander is gone and ended its session.
        await wait_until(
            lambda: dispatcher.sessions.registry.get_ended("abusive") is not None, "abusive session not ended"
        )
        ended = dispatcher.sessions.registry.get_ended("abusive")
        assert ended is not None and ended.outcome.state is SessionState.CANCELLED, ended

        # The polite session was silent just as long on its own connection and still works.
        assert dispatcher.sessions.registry.get_open("polite") is not None
        await finish_ok(good, 2)


async def test_a_silent_stream_outlives_connection_idle_and_keepalive_timers() -> None:
    config = test_config(
        server={"max_connection_idle_ms": 300},
        keepalive={"time_ms": 200, "timeout_ms": 1000, "min_ping_interval_ms": 100},
        policy={"idle_timeout_s": 60.0},
    )
    client = KeepaliveConfig(time_ms=500, timeout_ms=1000)
    assert config.keepalive.accepts_client(client)
    async with (
        running_dispatcher(config) as dispatcher,
        grpc.aio.insecure_channel(dispatcher.address, options=client.client_options()) as channel,
    ):
        raw = RawSession(channel)
        await raw.hello("silent")
        # ~7x max_connection_idle and ~9 server pings (each must be answered within 1 s), without a
        # single message either way. (The client's own 500 ms pings never fire: each server PING it
        # receives counts as read activity and resets its keepalive timer.)
        await anyio.sleep(2.0)  # sleep-ok: the silence under test
        assert dispatcher.sessions.registry.get_open("silent") is not None
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        await finish_ok(raw, 2)
    ended = dispatcher.sessions.registry.get_ended("silent")
    assert ended is not None and ended.outcome.state is SessionState.FINISHED


def test_default_client_and_server_keepalive_agree() -> None:
    server, client = DispatcherConfig().keepalive, CommanderConfig().keepalive
    assert server == KeepaliveConfig() and client == KeepaliveConfig()
    assert server.accepts_client(client)
    channel_options = dict(ConnectionConfig().channel_options(client))
    assert channel_options["grpc.keepalive_time_ms"] >= server.min_ping_interval_ms
    assert channel_options["grpc.http2.max_pings_without_data"] == 0  # keeps pinging through long silences
    # A client allowed to ping with no call open needs a server that allows it too.
    assert channel_options["grpc.keepalive_permit_without_calls"] <= int(server.permit_without_calls)
    # A dead peer is noticed within one ping period plus the ack timeout, well before LLM-scale silences end.
    assert server.time_ms + server.timeout_ms <= 60_000


async def test_a_session_with_default_keepalive_on_both_sides_finishes() -> None:
    async with running_dispatcher() as dispatcher:
        assert dispatcher.config.keepalive == KeepaliveConfig()
        config = CommanderConfig(connection=ConnectionConfig(target=dispatcher.address, handshake_timeout_s=2.0))
        async with open_channel(config.connection, config.keepalive) as channel:
            result = await run_session(ScriptedAgent(tokens_per_s=0), "What is 6*7?", channel=channel, config=config)
    assert result.state is SessionState.FINISHED, result
    assert result.status_code == "OK" and not result.compat_mode


async def test_pinging_with_no_call_open_is_refused_by_a_server_that_does_not_permit_it() -> None:
    # The grpc behaviour behind accepts_client: with no stream open and permit_without_calls off,
    # the server allows one PING per 2 h (chttp2 ping_abuse_policy, "transport_idle"), so a client
    # with permit_without_calls=1 is GOAWAYed however slowly it pings.
    config = test_config(
        keepalive={
            "time_ms": NO_SERVER_PINGS_MS,
            "permit_without_calls": False,
            "min_ping_interval_ms": 1000,
            "max_ping_strikes": 1,
        }
    )
    client = KeepaliveConfig(time_ms=1000)  # pings every ~1 s with no call open
    async with (
        running_dispatcher(config) as dispatcher,
        grpc.aio.insecure_channel(dispatcher.address, options=client.client_options()) as channel,
    ):
        with anyio.fail_after(WAIT_S):
            await channel.channel_ready()
            # GOAWAY too_many_pings after ~3 s: the READY connection is dropped, the channel goes IDLE.
            await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
        assert channel.get_state() is not grpc.ChannelConnectivity.READY


def test_accepts_client_rejects_a_client_that_pings_without_calls_when_the_server_forbids_it() -> None:
    server = KeepaliveConfig(permit_without_calls=False)
    client = KeepaliveConfig(time_ms=server.min_ping_interval_ms, permit_without_calls=True)
    assert not server.accepts_client(client)
