"""`dispatcher serve --workers 2`: one port, two processes, one control plane.

Sessions land on whichever worker the kernel gives their connection; each worker also
serves the control API on a private address it advertises in --peer-dir. These tests
call a worker's private address about a session held by the *other* worker, so every
forwarded path runs deterministically.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest

from shared import wire
from tests.conftest import WAIT_S, RawSession
from tests.e2e.conftest import DispatcherFactory, wait_for

pytestmark = pytest.mark.anyio


def member_addresses(peer_dir: Path) -> dict[str, str]:
    """Worker instance -> its private control address, as advertised."""
    return {path.stem: path.read_text().strip() for path in peer_dir.glob("*.addr")}


async def open_on_both_workers(address: str, channels: list[grpc.aio.Channel]) -> dict[str, RawSession]:
    """Open sessions on fresh connections until each worker holds one (worker -> session)."""
    held: dict[str, RawSession] = {}
    for attempt in range(60):  # each connection goes to either worker: 60 misses in a row cannot happen
        # A local subchannel pool: each channel its own TCP connection (grpc shares them otherwise).
        channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        channels.append(channel)
        raw = RawSession(channel)
        welcome = await raw.hello(f"w-{attempt}")
        worker = welcome.dispatcher_id.removeprefix("dispatcher:")
        if worker in held:
            raw.call.cancel()
        else:
            held[worker] = raw
        if len(held) == 2:
            return held
    raise AssertionError(f"60 connections all went to {list(held)}")


async def test_a_session_is_found_and_stopped_from_the_other_worker(
    start_dispatcher: DispatcherFactory, tmp_path: Path
) -> None:
    peer_dir = tmp_path / "peers"
    group = start_dispatcher("--workers", "2", "--peer-dir", str(peer_dir), instance_id="grp")
    wait_for(lambda: len(member_addresses(peer_dir)) == 2, "both workers advertised", WAIT_S)
    members = member_addresses(peer_dir)
    assert set(members) == {"grp-w0", "grp-w1"}
    channels: list[grpc.aio.Channel] = []
    try:
        held = await open_on_both_workers(group.address, channels)
        for worker, raw in held.items():
            await raw.content(2, f"hello from {worker} ")
        w0_session = dict(await held["grp-w0"].call.initial_metadata())["x-session-id"]
        async with grpc.aio.insecure_channel(members["grp-w1"]) as w1:
            stub = wire.SessionControlServiceStub(w1)
            listed = await stub.ListSessions(wire.ctl.ListSessionsRequest())
            ids = {s.session_id: s.dispatcher_id for s in listed.sessions}
            assert {"dispatcher:grp-w0", "dispatcher:grp-w1"} <= set(ids.values()), ids
            shown = await stub.GetSession(wire.ctl.GetSessionRequest(session_id=w0_session))
            assert shown.session.dispatcher_id == "dispatcher:grp-w0"
            watch = stub.WatchSession(wire.ctl.WatchSessionRequest(session_id=w0_session))
            first = await asyncio.wait_for(watch.read(), WAIT_S)
            assert first.event.seq == 1 and first.event.session_id == w0_session
            watch.cancel()
            answer = asyncio.ensure_future(
                stub.StopSession(wire.ctl.StopSessionRequest(session_id=w0_session, reason="from w1"))
            )
            raw = held["grp-w0"]
            stop = (await raw.recv_kind("stop")).stop
            # the forwarding worker is named after the caller: the stop went through it
            assert list(stop.path) == ["operator:anonymous", "dispatcher:grp-w1", "dispatcher:grp-w0"]
            await raw.send(wire.pb.UpstreamPacket(seq=3, stop_confirm=wire.pb.StopConfirm(stop_id=stop.stop_id)))
            await raw.call.done_writing()
            response = await asyncio.wait_for(answer, WAIT_S)
            assert response.result == wire.ctl.STOP_RESULT_CONFIRMED and response.stop_to_confirm_us > 0
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetSession(wire.ctl.GetSessionRequest(session_id="nowhere"))
            assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    finally:
        for channel in channels:
            await channel.close()
    group.send_signal(signal.SIGTERM)
    assert group.wait_exit(30) == 0
    assert member_addresses(peer_dir) == {}, "workers withdraw their addresses when they stop"
