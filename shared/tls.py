"""Client-side TLS shared by every client of ours (commander, dispatcherctl, the conformance kit).

`channel_credentials` reads the PEM files (a file that does not read is a one-line ValueError
naming the option); `explain_connect_failure` turns grpc core's long connection-failure text into
the one cause an operator can act on: an untrusted certificate, a plaintext port, a port that
wants TLS, a client certificate missing.
"""

from __future__ import annotations

from pathlib import Path

import grpc

__all__ = ["channel_credentials", "explain_connect_failure"]


def _read(path: str, option: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {option} {path}: {exc.strerror or exc}") from exc


def channel_credentials(ca_file: str = "", cert_file: str = "", key_file: str = "") -> grpc.ChannelCredentials:
    """TLS credentials: the server checked against `ca_file` (else the system roots); with
    `cert_file` and `key_file`, our client certificate for mutual TLS."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("--cert-file and --key-file go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "--ca-file"),
        private_key=_read(key_file, "--key-file"),
        certificate_chain=_read(cert_file, "--cert-file"),
    )


# What grpc core says (client side) -> what it means, by the TLS setting of the client.
_TLS_CAUSES = (
    ("CERTIFICATE_VERIFY_FAILED", "the dispatcher's certificate is not trusted by --ca-file (or the system roots)"),
    ("WRONG_VERSION_NUMBER", "the dispatcher does not speak TLS on this port (drop --tls)"),
    ("CERTIFICATE_REQUIRED", "the dispatcher requires a client certificate (--cert-file, --key-file)"),
    ("peer name", "the dispatcher's certificate does not name this target (check the host in --target)"),
    ("Peer name", "the dispatcher's certificate does not name this target (check the host in --target)"),
)


def explain_connect_failure(details: str, *, tls: bool, client_cert: bool = False) -> str | None:
    """The cause of a failed connection set-up in one line, when it is a TLS matter; else None."""
    if tls:
        for marker, cause in _TLS_CAUSES:
            if marker in details:
                return f"TLS handshake failed: {cause}"
        if "Socket closed" in details or "Connection reset" in details:
            if client_cert:
                return "TLS handshake failed: the dispatcher refused our client certificate (is it signed by its CA?)"
            return (
                "TLS handshake failed: the connection was closed; the dispatcher may require a client "
                "certificate (--cert-file, --key-file)"
            )
        return None
    if "Socket closed" in details or "Connection reset" in details:
        return "the connection was closed during set-up: the dispatcher may require TLS (--tls --ca-file FILE)"
    return None
