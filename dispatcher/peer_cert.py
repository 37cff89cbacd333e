"""What a caller's client certificate says about it (mutual TLS), read from grpc's auth context.

grpc.aio fills `context.auth_context()` from the verified peer certificate: `x509_subject_alternative_name`
(every SAN, DNS names and URIs such as SPIFFE ids), `x509_common_name`, `x509_pem_cert` (the leaf,
PEM). Without TLS, or without a client certificate, none of these is there.

Members of a worker group forward control calls to each other (dispatcher/cluster/peers.py); the
member's own connection presents the group's certificate, so the original caller's identities travel
in `x-dispatcher-forwarded-peer` and are believed only from a peer that presents our own certificate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["FORWARDED_PEER", "caller_identities", "own_leaf", "peer_identities"]

FORWARDED_PEER = "x-dispatcher-forwarded-peer"
_SAN = "x509_subject_alternative_name"
_CN = "x509_common_name"
_PEM = "x509_pem_cert"


def _auth_values(context: Any, key: str) -> list[str]:
    try:
        found = context.auth_context().get(key, ())
    except (AttributeError, RuntimeError):  # not a server context, or the call is over
        return []
    return [value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value) for value in found]


def peer_identities(context: Any) -> list[str]:
    """The identities the peer's verified certificate claims: every SAN, then the CN."""
    return _auth_values(context, _SAN) + _auth_values(context, _CN)


def own_leaf(chain: bytes) -> bytes:
    """The first certificate of a PEM chain, normalised for comparison."""
    end = b"-----END CERTIFICATE-----"
    head, sep, _ = chain.partition(end)
    return (head + sep).strip() if sep else chain.strip()


def caller_identities(context: Any, group_leaf: Callable[[], bytes | None] | None) -> list[str]:
    """Who called: the peer certificate's identities, or, for a call forwarded by a member of our
    group (its certificate is ours), the identities of the caller it forwards for."""
    if group_leaf is not None:
        leaf = group_leaf()
        pem = _auth_values(context, _PEM)
        if leaf is not None and pem and own_leaf(pem[0].encode()) == leaf:
            for key, value in context.invocation_metadata() or ():
                if key == FORWARDED_PEER and isinstance(value, str):
                    return [part for part in value.split(",") if part]
    return peer_identities(context)
