"""TLS and mutual TLS end to end: `dispatcher serve --tls-*` as a subprocess, `commander run` and
`dispatcherctl` as subprocesses with certificates made at test time (trustme), the refusal to
serve plaintext on a public address, certificate rotation on SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from shared import wire
from shared.tls import channel_credentials
from tests.certs import CertFiles, Pki
from tests.conftest import WAIT_S, RawSession
from tests.e2e.conftest import (
    BIN,
    DISPATCHER,
    ENV,
    EXIT_TIMEOUT_S,
    READY_TIMEOUT_S,
    DispatcherFactory,
    DispatcherProcess,
    run_cli,
    run_commander,
    wait_for,
)

DISPATCHERCTL = BIN / "dispatcherctl"
OPS_ID = "spiffe://example.org/ops"
AGENT_ID = "spiffe://example.org/agent-7"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def tls_flags(server: CertFiles) -> tuple[str, ...]:
    return ("--tls-cert", str(server.cert), "--tls-key", str(server.key))


def client_flags(ca: Path, client: CertFiles | None = None) -> tuple[str, ...]:
    cert = ("--cert-file", str(client.cert), "--key-file", str(client.key)) if client else ()
    return ("--ca-file", str(ca), *cert)


def ctl(dispatcher: DispatcherProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(str(DISPATCHERCTL), "--target", dispatcher.address, *args)


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def one_line_error(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    assert result.returncode == exit_code, shown(result)
    assert "Traceback" not in result.stderr and result.stdout == "", shown(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, shown(result)
    return lines[0]


def test_commander_and_dispatcherctl_over_tls(start_dispatcher: DispatcherFactory, pki: Pki) -> None:
    dispatcher = start_dispatcher(*tls_flags(pki.server()))
    assert dispatcher.wait_for_event("dispatcher.serving")["tls"] == "on"
    run = run_commander(dispatcher.address, "What is 6*7?", "--json", "--quiet", *client_flags(pki.ca_file))
    assert run.returncode == 0, run.stdout
    [result] = [json.loads(line) for line in run.stdout.splitlines() if '"SessionResult"' in line]
    listed = ctl(dispatcher, *client_flags(pki.ca_file), "sessions", "--json")
    assert listed.returncode == 0, shown(listed)
    assert result["session_id"] in listed.stdout


def test_mutual_tls_with_certificate_principals(start_dispatcher: DispatcherFactory, pki: Pki, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"operator alice x509:{OPS_ID}\ncommander agent-7 x509:{AGENT_ID}\n")
    dispatcher = start_dispatcher(
        *tls_flags(pki.server()), "--tls-client-ca", str(pki.ca_file), "--tls-require-client-cert",
        "--tokens-file", str(tokens),
    )  # fmt: skip
    assert dispatcher.wait_for_event("dispatcher.serving")["tls"] == "mutual"
    ops, agent = pki.issue_uri("ops", OPS_ID), pki.issue_uri("agent", AGENT_ID)

    run = run_commander(dispatcher.address, "What is 6*7?", "--json", "--quiet", *client_flags(pki.ca_file, agent))
    assert run.returncode == 0, run.stdout
    [result] = [json.loads(line) for line in run.stdout.splitlines() if '"SessionResult"' in line]

    shown_session = ctl(dispatcher, *client_flags(pki.ca_file, ops), "show", result["session_id"], "--json")
    assert shown_session.returncode == 0, shown(shown_session)
    assert json.loads(shown_session.stdout)["session"]["commander"] == "agent-7"  # named by its certificate

    denied = one_line_error(ctl(dispatcher, *client_flags(pki.ca_file, agent), "sessions"), 5)
    assert denied.startswith("permission denied: commander:agent-7 may not call ListSessions"), denied
    no_cert = one_line_error(ctl(dispatcher, *client_flags(pki.ca_file), "sessions"), 3)
    assert "client certificate" in no_cert, no_cert


def test_a_plaintext_client_and_a_wrong_ca_fail_with_one_clear_line(
    start_dispatcher: DispatcherFactory, pki: Pki, tmp_path: Path
) -> None:
    dispatcher = start_dispatcher(*tls_flags(pki.server()))
    plain = one_line_error(ctl(dispatcher, "sessions"), 3)
    assert plain == (
        f"cannot reach dispatcher at {dispatcher.address}: the connection was closed during set-up: "
        "the dispatcher may require TLS (--tls --ca-file FILE)"
    ), plain
    other = Pki(tmp_path / "other", "other")
    wrong = one_line_error(ctl(dispatcher, "--ca-file", str(other.ca_file), "sessions"), 3)
    assert wrong == (
        f"cannot reach dispatcher at {dispatcher.address}: TLS handshake failed: the dispatcher's certificate "
        "is not trusted by --ca-file (or the system roots)"
    ), wrong

    run = run_commander(dispatcher.address, "hi", "--quiet")
    assert run.returncode == 1, run.stdout
    assert "Traceback" not in run.stdout
    first = run.stdout.splitlines()[0]
    assert first.startswith("FAILED") and first.endswith(
        f"cannot reach dispatcher at {dispatcher.address}: the connection was closed during set-up: "
        "the dispatcher may require TLS (--tls --ca-file FILE)"
    ), run.stdout
    run = run_commander(dispatcher.address, "hi", "--quiet", "--ca-file", str(other.ca_file))
    assert run.returncode == 1 and "is not trusted by --ca-file" in run.stdout.splitlines()[0], run.stdout


def test_sighup_rotates_the_certificate_for_new_connections(
    start_dispatcher: DispatcherFactory, pki: Pki, tmp_path: Path
) -> None:
    server = pki.server()
    dispatcher = start_dispatcher(*tls_flags(server))
    successor = Pki(tmp_path / "next", "next")
    renewed = successor.server()
    mtimes = (server.cert.stat().st_mtime_ns, server.key.stat().st_mtime_ns)
    server.cert.write_bytes(renewed.cert.read_bytes())
    server.key.write_bytes(renewed.key.read_bytes())
    for path, mtime in zip((server.cert, server.key), mtimes, strict=True):
        os.utime(path, ns=(mtime, mtime))  # a copy that kept the old times: only SIGHUP tells
    dispatcher.send_signal(signal.SIGHUP)
    dispatcher.wait_for_event("tls.reload_requested")
    health = ctl(dispatcher, "--ca-file", str(successor.ca_file), "health")
    assert health.returncode == 0, shown(health)
    dispatcher.wait_for_event("tls.reloaded")
    assert dispatcher.proc.poll() is None


def test_plaintext_without_tokens_on_a_public_address_is_refused(tmp_path: Path) -> None:
    refused = run_cli(str(DISPATCHER), "serve", "--listen", "0.0.0.0:0")
    line = one_line_error(refused, 2)
    assert line.startswith("dispatcher: refusing to serve 0.0.0.0:0 in plaintext with no tokens:"), line
    assert "--allow-insecure" in line

    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [str(DISPATCHER), "serve", "--listen", "0.0.0.0:0", "--allow-insecure", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=ENV,
    )  # fmt: skip
    try:
        wait_for(lambda: ready.exists() and ready.read_text().endswith("\n"), "the ready file", READY_TIMEOUT_S)
        assert ready.read_text().startswith("0.0.0.0:")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=EXIT_TIMEOUT_S) == 0


async def sessions_on_both_workers(
    address: str, ca: Path, client: CertFiles | None, channels: list[grpc.aio.Channel]
) -> dict[str, RawSession]:
    held: dict[str, RawSession] = {}
    for attempt in range(60):  # each new connection lands on either worker: 60 misses cannot happen
        channel = secure_channel(address, ca, client)
        channels.append(channel)
        raw = RawSession(channel)
        worker = (await raw.hello(f"tls-{attempt}")).dispatcher_id.removeprefix("dispatcher:")
        if worker in held:
            raw.call.cancel()
        else:
            held[worker] = raw
        if len(held) == 2:
            return held
    raise AssertionError(f"60 connections all went to {list(held)}")


@pytest.mark.anyio
async def test_a_tls_worker_group_forwards_between_members(
    start_dispatcher: DispatcherFactory, pki: Pki, tmp_path: Path
) -> None:
    peer_dir = tmp_path / "peers"
    group = start_dispatcher(
        "--workers", "2", "--peer-dir", str(peer_dir), *tls_flags(pki.server()), "--tls-peer-ca", str(pki.ca_file),
        instance_id="grp",
    )  # fmt: skip
    wait_for(lambda: len(list(peer_dir.glob("*.addr"))) == 2, "both workers advertised")
    members = {path.stem: path.read_text().strip() for path in peer_dir.glob("*.addr")}
    channels: list[grpc.aio.Channel] = []
    try:
        held = await sessions_on_both_workers(group.address, pki.ca_file, None, channels)
        w0_session = dict(await held["grp-w0"].call.initial_metadata())["x-session-id"]
        async with secure_channel(members["grp-w1"], pki.ca_file, None) as w1:
            found = await wire.SessionControlServiceStub(w1).GetSession(
                wire.ctl.GetSessionRequest(session_id=w0_session), timeout=WAIT_S
            )
        assert found.session.dispatcher_id == "dispatcher:grp-w0"
    finally:
        for channel in channels:
            await channel.close()


@pytest.mark.anyio
async def test_a_worker_group_forwards_a_certificate_callers_identity_over_mutual_tls(
    start_dispatcher: DispatcherFactory, pki: Pki, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"operator alice x509:{OPS_ID}\ncommander agent-7 x509:{AGENT_ID}\n")
    peer_dir = tmp_path / "peers"
    group = start_dispatcher(
        "--workers", "2", "--peer-dir", str(peer_dir), *tls_flags(pki.server()),
        "--tls-client-ca", str(pki.ca_file), "--tls-require-client-cert", "--tokens-file", str(tokens),
        instance_id="grp",
    )  # fmt: skip
    wait_for(lambda: len(list(peer_dir.glob("*.addr"))) == 2, "both workers advertised")
    members = {path.stem: path.read_text().strip() for path in peer_dir.glob("*.addr")}
    ops, agent = pki.issue_uri("ops", OPS_ID), pki.issue_uri("agent", AGENT_ID)
    channels: list[grpc.aio.Channel] = []
    try:
        held = await sessions_on_both_workers(group.address, pki.ca_file, agent, channels)
        w0_session = dict(await held["grp-w0"].call.initial_metadata())["x-session-id"]
        # Asked on w1's own port, about w0's session: w1 forwards with its certificate and our identity.
        async with secure_channel(members["grp-w1"], pki.ca_file, ops) as w1:
            stub = wire.SessionControlServiceStub(w1)
            found = await stub.GetSession(wire.ctl.GetSessionRequest(session_id=w0_session), timeout=WAIT_S)
            assert found.session.dispatcher_id == "dispatcher:grp-w0"
            listed = await stub.ListSessions(wire.ctl.ListSessionsRequest(), timeout=WAIT_S)
            assert {s.commander for s in listed.sessions} == {"agent-7"}
            assert w0_session in {s.session_id for s in listed.sessions}  # merged from both workers
            stopping = asyncio.ensure_future(
                stub.StopSession(wire.ctl.StopSessionRequest(session_id=w0_session, reason="from w1"), timeout=WAIT_S)
            )
            raw = held["grp-w0"]
            stop = (await raw.recv_kind("stop")).stop
            # the caller (its own identity, not the member's), then the member that forwarded the stop
            assert list(stop.path) == ["operator:alice", "dispatcher:grp-w1", "dispatcher:grp-w0"]
            await raw.send(wire.pb.UpstreamPacket(seq=2, stop_confirm=wire.pb.StopConfirm(stop_id=stop.stop_id)))
            assert (await stopping).result == wire.ctl.STOP_RESULT_CONFIRMED
        # The commander's certificate may not, forwarded or not.
        async with secure_channel(members["grp-w1"], pki.ca_file, agent) as w1:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await wire.SessionControlServiceStub(w1).GetSession(
                    wire.ctl.GetSessionRequest(session_id=w0_session), timeout=WAIT_S
                )
            assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        for channel in channels:
            await channel.close()


def secure_channel(address: str, ca: Path, client: CertFiles | None) -> grpc.aio.Channel:
    credentials = channel_credentials(str(ca), str(client.cert) if client else "", str(client.key) if client else "")
    return grpc.aio.secure_channel(address, credentials, options=[("grpc.use_local_subchannel_pool", 1)])


def test_a_bad_tls_file_is_one_line_at_start_up(pki: Pki, tmp_path: Path) -> None:
    server, other = pki.server(), pki.server("other")
    missing = one_line_error(run_cli(str(DISPATCHER), "serve", "--tls-cert", str(tmp_path / "no.pem"),
                                     "--tls-key", str(server.key)), 2)  # fmt: skip
    assert missing == f"dispatcher: cannot read TLS file {tmp_path / 'no.pem'}: No such file or directory", missing
    flags = ("--workers", "2", "--tls-cert", str(server.cert), "--tls-key", str(other.key))
    mismatched = one_line_error(run_cli(str(DISPATCHER), "serve", *flags), 2)
    assert mismatched == f"dispatcher: {other.key} is not the private key of {server.cert}", mismatched
    lonely = run_cli(str(DISPATCHER), "serve", "--tls-client-ca", str(pki.ca_file))  # a usage error, as for any setting
    assert lonely.returncode == 2 and "Error: --tls-client-ca needs --tls-require-client-cert" in lonely.stderr
