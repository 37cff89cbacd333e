"""The chaos suite's fault proxy with real sockets: each mode observable from the peers.

A real echo server on 127.0.0.1:0 is the target; a real client connects through the proxy.
Negative checks ("no byte arrives while blackholed") are bounded windows that must pass
empty; every positive check waits on the data itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from commander import CommanderConfig, ConnectionConfig, run_session
from commander.transport import open_channel
from scripts.chaos.agent import NumberedAgent, Plan
from scripts.chaos.proxy import FaultProxy, Mode, parse_address, parse_mode
from shared.keepalive import KeepaliveConfig
from shared.model import SessionState
from tests.conftest import WAIT_S, run_scripted, running_dispatcher, test_config, wait_until

pytestmark = pytest.mark.anyio

QUIET_WINDOW_S = 0.3  # how long "nothing arrives" is watched for


@dataclass
class EchoServer:
    """Echoes every byte back; records what it got and how each connection ended."""

    port: int = 0
    accepted: int = 0
    received: bytearray = field(default_factory=bytearray)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    ends: list[str] = field(default_factory=list)
    echo: bool = True

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while chunk := await reader.read(65536):
                self.received += chunk
                self.arrived.set()
                if self.echo:
                    writer.write(chunk)
                    await writer.drain()
            self.ends.append("eof")
        except ConnectionResetError:
            self.ends.append("reset")
        finally:
            writer.close()


_CLIENTS: list[asyncio.StreamWriter] = []


@contextlib.asynccontextmanager
async def proxied(echo: bool = True) -> AsyncIterator[tuple[EchoServer, FaultProxy]]:
    target = EchoServer(echo=echo)
    server = await asyncio.start_server(target.handle, "127.0.0.1", 0)
    target.port = server.sockets[0].getsockname()[1]
    try:
        async with FaultProxy(("127.0.0.1", target.port)) as proxy:
            yield target, proxy
    finally:
        while _CLIENTS:
            _CLIENTS.pop().close()
        server.close()
        await server.wait_closed()


async def dial(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection through the proxy (closed when `proxied` ends)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy.port), WAIT_S)
    _CLIENTS.append(writer)
    return reader, writer


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), WAIT_S)


async def test_pass_forwards_both_ways_and_counts_bytes() -> None:
    async with proxied() as (target, proxy):
        reader, writer = await dial(proxy)
        writer.write(b"hello through the proxy")
        assert await read_exactly(reader, 23) == b"hello through the proxy"
        assert proxy.counters.connections == 1 and proxy.counters.open == 1
        assert proxy.counters.bytes_up == 23 and proxy.counters.bytes_down == 23
        writer.close()
        await wait_until(lambda: proxy.counters.open == 0, "the closed connection leaves the proxy")
        assert target.ends == ["eof"]  # a FIN travels as a FIN


async def test_reset_gives_both_peers_econnreset_and_resets_new_connections_at_once() -> None:
    async with proxied() as (target, proxy):
        reader, writer = await dial(proxy)
        writer.write(b"x")
        assert await read_exactly(reader, 1) == b"x"

        proxy.set_mode(Mode.reset())
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), WAIT_S)
        await wait_until(lambda: target.ends == ["reset"], "the target sees the RST too")
        assert proxy.counters.resets == 1

        # While the mode lasts, a new connection is reset as soon as it is accepted.
        reader, writer = await dial(proxy)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), WAIT_S)
        assert proxy.counters.resets == 2 and target.accepted == 1  # never dialled onward

        proxy.set_mode(Mode.passing())
        reader, writer = await dial(proxy)
        writer.write(b"back")
        assert await read_exactly(reader, 4) == b"back"
        writer.close()


async def test_reset_current_resets_open_connections_and_keeps_the_mode() -> None:
    async with proxied() as (_, proxy):
        reader, _writer = await dial(proxy)
        await wait_until(lambda: proxy.counters.open == 1, "the connection is open")
        assert proxy.reset_current() == 1
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), WAIT_S)
        assert proxy.mode == Mode.passing()
        reader, writer = await dial(proxy)
        writer.write(b"ok")
        assert await read_exactly(reader, 2) == b"ok"
        writer.close()


async def test_a_blackhole_forwards_nothing_holds_the_stream_and_delivers_it_intact_when_the_link_returns() -> None:
    async with proxied() as (target, proxy):
        reader, writer = await dial(proxy)
        writer.write(b"before ")
        assert await read_exactly(reader, 7) == b"before "
        up_before, down_before = proxy.counters.bytes_up, proxy.counters.bytes_down

        proxy.set_mode(Mode.blackhole())
        target.arrived.clear()
        writer.write(b"during the outage")
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(target.arrived.wait(), QUIET_WINDOW_S)
        assert not target.arrived.is_set(), "a byte crossed the blackhole"
        assert (proxy.counters.bytes_up, proxy.counters.bytes_down) == (up_before, down_before)
        assert proxy.counters.open == 1 and target.ends == []  # nothing closed, nothing told

        proxy.set_mode(Mode.passing())
        assert await read_exactly(reader, 17) == b"during the outage"  # late, intact, in order
        assert bytes(target.received) == b"before during the outage"
        writer.close()


async def test_a_connection_made_during_a_blackhole_reaches_the_target_only_when_the_link_returns() -> None:
    async with proxied() as (target, proxy):
        proxy.set_mode(Mode.blackhole())
        reader, writer = await dial(proxy)  # the client's connect succeeds: the proxy accepts
        writer.write(b"hi")
        await wait_until(lambda: proxy.counters.connections == 1, "the proxy accepted")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(target.arrived.wait(), QUIET_WINDOW_S)
        assert target.accepted == 0
        proxy.set_mode(Mode.passing())
        assert await read_exactly(reader, 2) == b"hi"
        assert target.accepted == 1
        writer.close()


async def test_a_peer_closing_during_a_blackhole_is_passed_on_once_the_link_returns() -> None:
    async with proxied() as (target, proxy):
        reader, writer = await dial(proxy)
        writer.write(b"x")
        assert await read_exactly(reader, 1) == b"x"
        proxy.set_mode(Mode.blackhole())
        writer.transport.abort()  # the client gives up (as a keepalive timeout would)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(wait_until(lambda: bool(target.ends), "")), QUIET_WINDOW_S)
        assert target.ends == [], "the close crossed the blackhole"
        proxy.set_mode(Mode.passing())
        await wait_until(lambda: bool(target.ends), "the late close reaches the target")
        await wait_until(lambda: proxy.counters.open == 0, "the connection leaves the proxy")


async def test_delay_adds_its_latency_each_way() -> None:
    async with proxied() as (_, proxy):
        reader, writer = await dial(proxy)
        writer.write(b"warm")
        await read_exactly(reader, 4)
        proxy.set_mode(Mode.delay(100))
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"ping")
        assert await read_exactly(reader, 4) == b"ping"
        round_trip = loop.time() - started
        assert round_trip >= 0.2, round_trip  # 100 ms up + 100 ms down
        assert round_trip < 0.2 + WAIT_S / 2, round_trip
        writer.close()


async def test_throttle_bounds_the_rate_over_the_bytes_received() -> None:
    rate = 100_000.0
    size = 100_000
    async with proxied(echo=False) as (target, proxy):
        proxy.set_mode(Mode.throttle(rate))
        _, writer = await dial(proxy)
        loop = asyncio.get_running_loop()
        writer.write(b"a")  # the first byte opens the window
        await wait_until(lambda: len(target.received) >= 1, "the first byte arrives", WAIT_S)
        started = loop.time()
        writer.write(b"b" * size)
        await wait_until(lambda: len(target.received) >= size + 1, "every byte arrives", WAIT_S)
        elapsed = loop.time() - started
        burst = rate / 50  # one paced slice may go at once
        assert elapsed >= (size - burst) / rate * 0.95, f"{size} bytes in {elapsed:.3f} s: faster than {rate:g} B/s"
        assert elapsed < size / rate * 4, f"{size} bytes in {elapsed:.3f} s: far slower than {rate:g} B/s"
        assert proxy.counters.bytes_up == size + 1
        writer.close()


async def test_closing_the_proxy_resets_what_is_open_and_leaves_no_task() -> None:
    async with proxied() as (_, proxy):
        reader, _writer = await dial(proxy)
        proxy.set_mode(Mode.blackhole())  # its tasks wait on the link: aclose must still end them
        await wait_until(lambda: proxy.counters.open == 1, "the connection is open")
        await proxy.aclose()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), WAIT_S)
        assert proxy.counters.open == 0


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("pass", Mode.passing()),
        ("reset", Mode.reset()),
        ("blackhole", Mode.blackhole()),
        ("delay 200", Mode.delay(200)),
        ("delay(50)", Mode.delay(50)),
        ("throttle 10000", Mode.throttle(10_000)),
    ],
)
def test_modes_parse(text: str, mode: Mode) -> None:
    assert parse_mode(text) == mode


@pytest.mark.parametrize("text", ["", "drop", "delay", "delay x", "delay -5", "throttle 0", "pass 3"])
def test_bad_modes_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_mode(text)


# -- gRPC through the proxy ----------------------------------------------------------------------

FAST_KEEPALIVE = {"time_ms": 1000, "timeout_ms": 1000}


def no_resume() -> dict[str, Any]:
    """Today's behaviour, whichever build: a lost stream ends the session (no redial)."""
    return {"resume_timeout_s": 0} if "resume_timeout_s" in ConnectionConfig.__dataclass_fields__ else {}


async def test_a_grpc_session_streams_through_a_delaying_and_throttling_proxy() -> None:
    async with running_dispatcher() as dispatcher:
        async with FaultProxy(parse_address(dispatcher.address)) as proxy:
            proxy.set_mode(Mode.delay(5))
            result = await run_scripted(proxy.address, "What is 6*7?")
            assert result.state is SessionState.FINISHED, result
            proxy.set_mode(Mode.throttle(200_000))
            result = await run_scripted(proxy.address, "What is 6*7?")
            assert result.state is SessionState.FINISHED, result
            assert proxy.counters.connections >= 1 and proxy.counters.bytes_down > 0  # channels share a subchannel


async def test_grpc_keepalive_finds_a_blackholed_link_within_its_bound() -> None:
    config = test_config(keepalive={**FAST_KEEPALIVE, "min_ping_interval_ms": 500})
    async with running_dispatcher(config) as dispatcher:
        async with FaultProxy(parse_address(dispatcher.address)) as proxy:
            commander = CommanderConfig(
                connection=ConnectionConfig(target=proxy.address, handshake_timeout_s=2.0, **no_resume()),
                keepalive=KeepaliveConfig(**FAST_KEEPALIVE),
            )
            agent = NumberedAgent(Plan(chunks=400, rate=40.0, tools=0))
            loop = asyncio.get_running_loop()
            outcome: dict[str, Any] = {}

            async def session() -> None:
                async with open_channel(commander.connection, commander.keepalive) as channel:
                    outcome["result"] = await run_session(agent, "", channel=channel, config=commander)
                outcome["ended_at"] = loop.time()

            task = asyncio.create_task(session())
            try:
                await wait_until(lambda: proxy.counters.bytes_up > 2000, "the answer is streaming")
                proxy.set_mode(Mode.blackhole())
                cut_at = loop.time()
                await asyncio.wait_for(asyncio.shield(task), 10)
            finally:
                proxy.set_mode(Mode.passing())
                task.cancel()
            detected_s = outcome["ended_at"] - cut_at
            # keepalive time + timeout, plus up to one more PING period of timer slack
            assert detected_s < (FAST_KEEPALIVE["time_ms"] + FAST_KEEPALIVE["timeout_ms"]) / 1000 + 1.5, detected_s
            assert outcome["result"].state is not SessionState.FINISHED
