"""Certificates made at test time: a CA (trustme), server and client certificates in files.

trustme issues DNS/IP identities; a URI identity (a SPIFFE id) is issued here with
`cryptography`, signed by the same CA's key.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertFiles", "Pki"]


@dataclass(frozen=True, slots=True)
class CertFiles:
    cert: Path
    key: Path


class Pki:
    """One CA and the files of what it issued, under `directory`."""

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.directory = directory
        self.name = name
        self.ca = trustme.CA()
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = directory / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def server(self, name: str = "server") -> CertFiles:
        """A certificate for 127.0.0.1 and localhost."""
        return self.issue(name, "127.0.0.1", "localhost")

    def issue(self, name: str, *identities: str) -> CertFiles:
        leaf = self.ca.issue_cert(*identities)
        files = CertFiles(self.directory / f"{self.name}-{name}.pem", self.directory / f"{self.name}-{name}.key")
        leaf.cert_chain_pems[0].write_to_path(str(files.cert))
        leaf.private_key_pem.write_to_path(str(files.key))
        return files

    def issue_uri(self, name: str, uri: str) -> CertFiles:
        """A client certificate whose only SAN is the URI `uri` (e.g. spiffe://example.org/ops)."""
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tests")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=True)
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        files = CertFiles(self.directory / f"{self.name}-{name}.pem", self.directory / f"{self.name}-{name}.key")
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return files
