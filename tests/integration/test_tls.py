"""TLS and mutual TLS on a real dispatcher (127.0.0.1:0) with certificates made at test time
(trustme): whole sessions over TLS, client certificates required and naming principals, a
plaintext client and a wrong CA refused, certificates rotated under a running server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import pytest

from commander import CommanderConfig, ConnectionConfig, run_session
from commander.models import ScriptedAgent
from commander.transport import open_channel
from dispatcher.config import DispatcherConfig
from shared import wire
from shared.keepalive import KeepaliveConfig
from shared.model import SessionState
from shared.tls import channel_credentials
from tests.certs import CertFiles, Pki
from tests.conftest import WAIT_S, RawSession, running_dispatcher, test_config

pytestmark = [pytest.mark.anyio]

OPS_ID = "spiffe://example.org/ops"
AGENT_ID = "spiffe://example.org/agent"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def tls_config(server: CertFiles, *, client_ca: Path | None = None, **sections: Any) -> DispatcherConfig:
    tls: dict[str, Any] = {"cert_file": str(server.cert), "key_file": str(server.key)}
    if client_ca is not None:
        tls |= {"client_ca_file": str(client_ca), "require_client_cert": True}
    return test_config(tls=tls, **sections)


def secure(address: str, ca: Path, client: CertFiles | None = None) -> grpc.aio.Channel:
    credentials = channel_credentials(str(ca), str(client.cert) if client else "", str(client.key) if client else "")
    # A local subchannel pool: a new channel is a new connection (a new TLS handshake).
    return grpc.aio.secure_channel(address, credentials, options=[("grpc.use_local_subchannel_pool", 1)])


async def list_sessions(channel: grpc.aio.Channel) -> Any:
    return await wire.SessionControlServiceStub(channel).ListSessions(wire.ctl.ListSessionsRequest(), timeout=WAIT_S)


async def connect_error(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_sessions(channel)
    return caught.value


async def test_a_whole_session_over_tls_with_the_commanders_channel(pki: Pki) -> None:
    async with running_dispatcher(tls_config(pki.server())) as dispatcher:
        assert dispatcher.address is not None
        connection = ConnectionConfig(target=dispatcher.address, ca_file=str(pki.ca_file), handshake_timeout_s=2.0)
        assert connection.uses_tls  # --ca-file implies --tls
        async with open_channel(connection, KeepaliveConfig()) as channel:
            result = await run_session(
                ScriptedAgent(tokens_per_s=0), "What is 6*7?", channel=channel,
                config=CommanderConfig(connection=connection),
            )  # fmt: skip
    assert result.state is SessionState.FINISHED, result
    assert result.tool_calls == 1 and not result.compat_mode


async def test_plaintext_and_a_wrong_ca_are_refused_at_the_handshake(pki: Pki, tmp_path: Path) -> None:
    other = Pki(tmp_path / "other", "other")
    async with running_dispatcher(tls_config(pki.server())) as dispatcher:
        assert dispatcher.address is not None
        async with grpc.aio.insecure_channel(dispatcher.address) as plain:
            error = await connect_error(plain)
            assert error.code() is grpc.StatusCode.UNAVAILABLE
        async with secure(dispatcher.address, other.ca_file) as wrong:
            error = await connect_error(wrong)
            assert error.code() is grpc.StatusCode.UNAVAILABLE
            assert "CERTIFICATE_VERIFY_FAILED" in (error.details() or ""), error.details()
        async with secure(dispatcher.address, pki.ca_file) as right:  # the server is unharmed
            assert (await list_sessions(right)).sessions == []


async def test_mutual_tls_requires_a_certificate_from_the_client_ca(pki: Pki, tmp_path: Path) -> None:
    stranger = Pki(tmp_path / "stranger", "stranger").issue("client", "client.example.org")
    client = pki.issue("client", "client.example.org")
    async with running_dispatcher(tls_config(pki.server(), client_ca=pki.ca_file)) as dispatcher:
        assert dispatcher.address is not None
        async with secure(dispatcher.address, pki.ca_file) as anonymous:
            assert (await connect_error(anonymous)).code() is grpc.StatusCode.UNAVAILABLE
        async with secure(dispatcher.address, pki.ca_file, stranger) as foreign:
            assert (await connect_error(foreign)).code() is grpc.StatusCode.UNAVAILABLE
        async with secure(dispatcher.address, pki.ca_file, client) as channel:  # no tokens: development mode
            raw = RawSession(channel)
            welcome = await raw.hello("mtls-session")
            await raw.content(2, "over mutual TLS", is_finish=True)
            code, _details, trailers = await raw.status()
    assert welcome.session_id == "mtls-session"
    assert code is grpc.StatusCode.OK and trailers["x-session-state"] == "FINISHED"


async def test_a_client_certificates_san_is_a_principal_with_a_role(pki: Pki) -> None:
    ops, agent = pki.issue_uri("ops", OPS_ID), pki.issue_uri("agent", AGENT_ID)
    nobody = pki.issue_uri("nobody", "spiffe://example.org/nobody")
    tokens = f"operator alice x509:{OPS_ID};commander agent-7 x509:{AGENT_ID}"
    config = tls_config(pki.server(), client_ca=pki.ca_file, auth={"tokens": tokens})
    async with running_dispatcher(config) as dispatcher:
        assert dispatcher.address is not None
        async with secure(dispatcher.address, pki.ca_file, agent) as channel:
            raw = RawSession(channel)  # no bearer token: the certificate names the commander
            await raw.hello("san-session")
            await raw.content(2, "hello")
            denied = await connect_error(channel)  # a commander may not list sessions
            assert denied.code() is grpc.StatusCode.PERMISSION_DENIED, denied
            assert "commander:agent-7 may not call ListSessions" in (denied.details() or "")
            async with secure(dispatcher.address, pki.ca_file, ops) as operator:
                listed = await list_sessions(operator)
                [info] = listed.sessions
                assert info.session_id == "san-session" and info.commander == "agent-7"
                stopping = asyncio.ensure_future(
                    wire.SessionControlServiceStub(operator).StopSession(
                        wire.ctl.StopSessionRequest(session_id="san-session", reason="by certificate"), timeout=WAIT_S
                    )
                )
                stop = (await raw.recv_kind("stop")).stop
                assert stop.path[0] == "operator:alice"  # the certificate's principal, in the stop path
                await raw.send(wire.pb.UpstreamPacket(seq=3, stop_confirm=wire.pb.StopConfirm(stop_id=stop.stop_id)))
                assert (await stopping).result == wire.ctl.STOP_RESULT_CONFIRMED
        async with secure(dispatcher.address, pki.ca_file, nobody) as channel:
            error = await connect_error(channel)
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "no client certificate named in the tokens file" in (error.details() or "")
            # Claiming to be forwarded for the operator by a member works only with the group's certificate.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await wire.SessionControlServiceStub(channel).ListSessions(
                    wire.ctl.ListSessionsRequest(), metadata=(("x-dispatcher-forwarded-peer", OPS_ID),), timeout=WAIT_S
                )
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_rotated_certificates_serve_new_connections_and_old_ones_keep_going(pki: Pki, tmp_path: Path) -> None:
    server = pki.server()
    successor = Pki(tmp_path / "next", "next")
    async with running_dispatcher(tls_config(server)) as dispatcher:
        assert dispatcher.address is not None and dispatcher.tls is not None
        async with secure(dispatcher.address, pki.ca_file) as old:
            raw = RawSession(old)
            await raw.hello("before-rotation")
            # Rotate: the new pair (another CA's) replaces the files, as a certificate manager would.
            renewed = successor.server()
            os.replace(renewed.key, server.key)
            os.replace(renewed.cert, server.cert)
            async with secure(dispatcher.address, successor.ca_file) as new:
                assert (await list_sessions(new)).sessions  # the new certificate, on a new connection
            assert dispatcher.tls.reloads == 1
            async with secure(dispatcher.address, pki.ca_file) as stale:  # the old CA no longer verifies it
                assert "CERTIFICATE_VERIFY_FAILED" in ((await connect_error(stale)).details() or "")
            # The connection made before the rotation goes on with its session.
            await raw.content(2, "still here", is_finish=True)
            code, _details, trailers = await raw.status()
    assert code is grpc.StatusCode.OK and trailers["x-session-state"] == "FINISHED"


async def test_a_half_written_rotation_keeps_the_old_certificate(pki: Pki) -> None:
    server = pki.server()
    async with running_dispatcher(tls_config(server)) as dispatcher:
        assert dispatcher.address is not None and dispatcher.tls is not None
        server.cert.write_text("-----BEGIN CERTIFICATE-----\ntruncated")  # caught mid-copy
        async with secure(dispatcher.address, pki.ca_file) as channel:
            assert (await list_sessions(channel)).sessions == []
        assert dispatcher.tls.reloads == 0
        dispatcher.reload_tls()  # SIGHUP's handler: reread even though nothing changed since
        async with secure(dispatcher.address, pki.ca_file) as channel:
            assert (await list_sessions(channel)).sessions == []
