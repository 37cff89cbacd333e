"""TLS and mutual TLS for the dispatcher's ports, with certificates that rotate without a restart.

grpc reads the server's certificate material through a *fetcher* that the C core calls on every
new connection (`grpc.dynamic_ssl_server_credentials`): returning None keeps what it has, a new
`ServerCertificateConfiguration` is used from that handshake on. Connections already open keep
the certificate they were made with. Our fetcher looks at the files' (mtime, size, inode) — a few
`stat` calls per new connection, never per message — and reloads when they changed or when SIGHUP
asked for it (`request_reload`). A half-written or mismatched pair (a rotation caught in the middle)
is logged once and the previous material stays in use; the next connection tries again.

The fetcher runs on a grpc core thread holding the GIL: it must not touch the event loop, and
it does not (plain file reads and a flag).

With `--tls-require-client-cert` every connection must present a certificate that
`--tls-client-ca` verifies (grpc Python can require and verify a client certificate, or not ask
for one; it cannot ask for an optional one). The certificate's identity then names the caller
(`dispatcher/auth.py`, `x509:` principals).
"""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dispatcher.peer_cert import own_leaf

__all__ = ["CertificateReloader", "TlsMaterial", "exposure_problem", "is_loopback", "read_material"]

log = structlog.get_logger("dispatcher.tls")


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """One consistent read of the files: the chain, its key and (mTLS) the client roots."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None


def _certificates(data: bytes, path: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{path} is not a PEM certificate file: {exc}") from None


def read_material(cert_file: str, key_file: str, client_ca_file: str = "") -> TlsMaterial:
    """Read and check the PEM files: ValueError naming the file when one is missing, is not
    PEM, or the key is not the certificate's (a rotation caught between two copies)."""
    try:
        chain = Path(cert_file).read_bytes()
        key = Path(key_file).read_bytes()
        roots = Path(client_ca_file).read_bytes() if client_ca_file else None
    except OSError as exc:
        raise ValueError(f"cannot read TLS file {exc.filename}: {exc.strerror or exc}") from exc
    leaf = _certificates(chain, cert_file)[0]
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{key_file} is not an unencrypted PEM private key: {exc}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(serialization.Encoding.PEM, public) != leaf.public_key().public_bytes(
        serialization.Encoding.PEM, public
    ):
        raise ValueError(f"{key_file} is not the private key of {cert_file}")
    if roots is not None:
        _certificates(roots, client_ca_file)
    return TlsMaterial(chain, key, roots)


def _signature(paths: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((-1, -1, -1))
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class CertificateReloader:
    """The fetcher behind the server credentials; one per process, shared by its ports."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = "", *, require_client_cert: bool = False):
        self._paths = tuple(p for p in (cert_file, key_file, client_ca_file) if p)
        self._files = (cert_file, key_file, client_ca_file)
        self._require = require_client_cert
        self._lock = threading.Lock()  # the fetcher runs on grpc's threads, reload requests on the loop
        self.material = read_material(*self._files)  # a start-up error when unreadable
        self._seen = _signature(self._paths)
        self._forced = False
        self.reloads = 0  # material handed to grpc after start-up (tests and logs read it)

    def request_reload(self) -> None:
        """Reread the files for the next connection even if they look unchanged (SIGHUP)."""
        with self._lock:
            self._forced = True
        log.info("tls.reload_requested", files=list(self._paths))

    def own_leaf(self) -> bytes:
        """Our certificate (the chain's first), as peer_cert compares it."""
        return own_leaf(self.material.cert_chain)

    def peer_name(self) -> str | None:
        """The name members check each other's certificate against when dialling 127.0.0.1:
        None when the certificate covers 127.0.0.1 itself, else its first DNS name."""
        return _dial_name(self.material.cert_chain)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for one port (grpc takes each object for one port only); every port's
        fetcher follows the same material."""
        served = [self.reloads]  # what this port's grpc has: the reload count it was given

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            """Called by grpc for each new connection: None = keep the current material."""
            with self._lock:
                self._refresh()
                if served[0] == self.reloads:
                    return None
                served[0] = self.reloads
                return self._configuration(self.material)

        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self.material),
            fetch,  # type: ignore[arg-type]  # grpc documents None as "keep the current one"
            require_client_authentication=self._require,
        )

    def _configuration(self, material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.private_key, material.cert_chain)], root_certificates=material.client_ca
        )

    def _refresh(self) -> None:
        """Reread the files when they changed (or SIGHUP asked); called with the lock held."""
        signature = _signature(self._paths)
        if signature == self._seen and not self._forced:
            return
        self._seen, self._forced = signature, False
        try:
            material = read_material(*self._files)
        except ValueError as exc:  # mid-rotation: keep serving the old pair, try again on the next change
            log.warning("tls.reload_failed", detail=str(exc))
            return
        if material != self.material:
            self.material = material
            self.reloads += 1
            log.info("tls.reloaded", files=list(self._paths), reloads=self.reloads)

    def check_files(self) -> bool:
        """Check the files now, as a new connection would; True when the material changed (tests)."""
        with self._lock:
            before = self.reloads
            self._refresh()
            return self.reloads != before


def _dial_name(chain: bytes) -> str | None:
    try:
        certificate = x509.load_pem_x509_certificate(own_leaf(chain))
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    if ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress):
        return None
    dns = names.get_values_for_type(x509.DNSName)
    return dns[0] if dns else None


def is_loopback(listen: str) -> bool:
    """Whether HOST of HOST:PORT can only be reached from this machine."""
    host = listen.rsplit(":", 1)[0].strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve to anything: treated as public


def exposure_problem(listen: str, *, tls: bool, tokens: bool, allow_insecure: bool) -> str | None:
    """Why serving `listen` like this is refused (one line), or None when it is fine."""
    if tls or tokens or allow_insecure or is_loopback(listen):
        return None
    return (
        f"refusing to serve {listen} in plaintext with no tokens: anyone who can reach it may open, watch and "
        "stop every session, and bearer tokens would cross the network in clear. Give --tls-cert/--tls-key "
        "and/or --tokens-file, listen on 127.0.0.1, or pass --allow-insecure"
    )
