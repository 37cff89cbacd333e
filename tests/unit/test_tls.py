"""TLS pieces without a network: the certificate reloader's decisions, the exposure rule, the
TLS settings, certificate principals in the tokens file, the client's one-line explanations."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.auth import AccessPolicy, Role, parse_token_lines
from dispatcher.config import TlsConfig
from dispatcher.peer_cert import own_leaf
from dispatcher.tls import CertificateReloader, _signature, exposure_problem, is_loopback, read_material
from shared.tls import channel_credentials, explain_connect_failure
from tests.certs import Pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def test_the_reloader_hands_grpc_new_material_only_when_the_files_change(pki: Pki) -> None:
    server = pki.server()
    reloader = CertificateReloader(str(server.cert), str(server.key))
    assert not reloader.check_files()  # unchanged: grpc keeps what it has
    renewed = pki.server("renewed")
    server.key.write_bytes(renewed.key.read_bytes())  # half-way through a rotation: key and cert disagree
    assert not reloader.check_files() and reloader.reloads == 0
    server.cert.write_bytes(renewed.cert.read_bytes())
    assert reloader.check_files() and reloader.reloads == 1
    assert reloader.material.cert_chain == renewed.cert.read_bytes()
    assert not reloader.check_files()


def test_sighup_rereads_files_that_look_unchanged(pki: Pki) -> None:
    server = pki.server()
    reloader = CertificateReloader(str(server.cert), str(server.key))
    renewed = pki.server("renewed")
    server.cert.write_bytes(renewed.cert.read_bytes())
    server.key.write_bytes(renewed.key.read_bytes())
    reloader._seen = _signature((str(server.cert), str(server.key)))  # as if times and sizes were kept
    assert not reloader.check_files()
    reloader.request_reload()
    assert reloader.check_files() and reloader.reloads == 1


def test_unreadable_or_mismatched_files_are_one_line_errors(pki: Pki, tmp_path: Path) -> None:
    server, other = pki.server(), pki.server("other")
    with pytest.raises(ValueError, match=r"cannot read TLS file .*missing\.pem"):
        read_material(str(tmp_path / "missing.pem"), str(server.key))
    with pytest.raises(ValueError, match="is not the private key of"):
        read_material(str(server.cert), str(other.key))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match=r"junk\.pem is not a PEM certificate file"):
        read_material(str(tmp_path / "junk.pem"), str(server.key))
    with pytest.raises(ValueError, match="is not an unencrypted PEM private key"):
        read_material(str(server.cert), str(server.cert))


def test_members_dial_each_other_by_a_name_their_certificate_carries(pki: Pki) -> None:
    loopback = pki.server()
    named = pki.issue("named", "dispatcher.example.org", "dispatcher-2.example.org")
    assert CertificateReloader(str(loopback.cert), str(loopback.key)).peer_name() is None
    assert CertificateReloader(str(named.cert), str(named.key)).peer_name() == "dispatcher.example.org"
    reloader = CertificateReloader(str(named.cert), str(named.key))
    assert reloader.own_leaf() == own_leaf(named.cert.read_bytes())


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [("127.0.0.1:1", True), ("127.3.4.5:1", True), ("localhost:1", True), ("[::1]:1", True),
     ("0.0.0.0:1", False), ("[::]:1", False), ("10.1.2.3:1", False), ("dispatcher.example.org:1", False)],
)  # fmt: skip
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_plaintext_without_tokens_is_refused_only_off_loopback() -> None:
    assert exposure_problem("127.0.0.1:0", tls=False, tokens=False, allow_insecure=False) is None
    problem = exposure_problem("0.0.0.0:50051", tls=False, tokens=False, allow_insecure=False)
    assert problem is not None and problem.startswith("refusing to serve 0.0.0.0:50051 in plaintext with no tokens")
    assert "\n" not in problem
    for kwargs in ({"tls": True}, {"tokens": True}, {"allow_insecure": True}):
        settings = {"tls": False, "tokens": False, "allow_insecure": False} | kwargs
        assert exposure_problem("0.0.0.0:50051", **settings) is None


def test_tls_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        TlsConfig(cert_file="a.pem")
    with pytest.raises(ValueError, match="--tls-client-ca needs --tls-require-client-cert"):
        TlsConfig(cert_file="a.pem", key_file="a.key", client_ca_file="ca.pem")
    with pytest.raises(ValueError, match="--tls-require-client-cert needs --tls-client-ca"):
        TlsConfig(cert_file="a.pem", key_file="a.key", require_client_cert=True)
    assert TlsConfig(cert_file="a", key_file="b", client_ca_file="c", require_client_cert=True).enabled
    assert not TlsConfig().enabled


def test_certificate_principals_in_the_tokens_file() -> None:
    lines = ["operator alice x509:spiffe://example.org/ops", "backend web x509:web.example.org"]
    tokens = parse_token_lines(lines, "tokens")
    policy = AccessPolicy(tokens)
    assert policy.enabled and policy.has_certificates
    assert policy.describe() == {"operator": 1, "backend": 1}
    assert tokens["x509:web.example.org"].role is Role.BACKEND
    with pytest.raises(ValueError, match="entry 1: x509: needs the certificate identity"):
        parse_token_lines(["operator bob x509:"], "tokens")
    # Without a bearer token, only a certificate can decide: the handler's context is needed.
    assert policy.needs_certificate("/southwest.ai.agent.v1.SessionControlService/ListSessions", ())
    assert not policy.needs_certificate("/grpc.health.v1.Health/Check", ())
    assert not policy.needs_certificate(
        "/southwest.ai.agent.v1.SessionControlService/ListSessions", (("authorization", "Bearer x"),)
    )


def test_client_tls_files_and_failures_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read --ca-file .*nope\.pem"):
        channel_credentials(str(tmp_path / "nope.pem"))
    with pytest.raises(ValueError, match="--cert-file and --key-file go together"):
        channel_credentials(cert_file="c.pem")
    grpc_says = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake failed "
        "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"
    )
    assert explain_connect_failure(grpc_says, tls=True) == (
        "TLS handshake failed: the dispatcher's certificate is not trusted by --ca-file (or the system roots)"
    )
    closed = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed"
    assert "may require TLS" in (explain_connect_failure(closed, tls=False) or "")
    assert "client certificate" in (explain_connect_failure(closed, tls=True) or "")
    assert "refused our client certificate" in (explain_connect_failure(closed, tls=True, client_cert=True) or "")
    assert explain_connect_failure("Connection refused", tls=False) is None
