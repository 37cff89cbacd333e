"""Bearer tokens with roles: who may call what.

Tokens are configured hashed (`sha256:<hex>`), one per line as `<role> <name> <hash>`,
in a file (`--tokens-file`) and/or `DISPATCHER_TOKENS` (lines or `;`-separated). With
mutual TLS a line `<role> <name> x509:<identity>` names a client certificate instead: the
caller whose verified certificate carries that SAN (a DNS name, a URI such as a SPIFFE id)
or common name has that role, as if it had sent a token (dispatcher/peer_cert.py). With
nothing configured the dispatcher runs in development mode: every caller may do
everything, and start-up says so loudly.

An interceptor refuses a call before its handler runs (UNAUTHENTICATED: no or unknown
token; PERMISSION_DENIED: wrong role); handlers then ask `principal(context)` who the
caller is, to record it in stop paths and to limit backends to their own sessions. The
interceptor sees only the metadata, not the connection: a call without a bearer token,
when certificate principals are configured, is checked by a thin wrapper of its handler
that reads the peer's certificate first (once per call, never per message).
Health and reflection stay open: load balancers and generic tools probe them without
credentials, and they expose nothing that the published proto does not.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog

from dispatcher.boundary import await_first_write
from dispatcher.peer_cert import caller_identities
from shared import wire

__all__ = ["AccessPolicy", "Principal", "Role", "hash_token", "parse_token_lines"]

log = structlog.get_logger("dispatcher.auth")

AUTHORIZATION = "authorization"
_BEARER = "bearer "
X509 = "x509:"


class Role(enum.Enum):
    COMMANDER = "commander"
    BACKEND = "backend"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one RPC. `role` None = development mode (no tokens configured)."""

    name: str
    role: Role | None

    @property
    def hop(self) -> str:
        """How the caller appears in a stop's path and in `started_by`: "<role>:<name>"."""
        return f"{self.role.value if self.role else 'operator'}:{self.name}"

    @property
    def is_operator(self) -> bool:
        return self.role in (None, Role.OPERATOR)

    def may_manage(self, started_by: str) -> bool:
        """Operators manage every session; a backend only those it started."""
        return self.is_operator or (self.role is Role.BACKEND and started_by == self.hop)


ANONYMOUS = Principal("anonymous", None)

_CONTROL = f"/{wire.CONTROL_SERVICE_NAME}/"
# Which roles may call each method; methods not listed (health, reflection) are open.
_ALLOWED: dict[str, frozenset[Role]] = {
    f"/{wire.SERVICE_NAME}/ChatStream": frozenset({Role.COMMANDER, Role.OPERATOR}),
    **{
        _CONTROL + method: frozenset({Role.OPERATOR, Role.BACKEND})
        for method in (
            "ListSessions",
            "GetSession",
            "StopSession",
            "WatchSession",
            "StartSession",
            "Ask",
            "DecideToolCall",
            "ListTools",
        )
    },
}


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def parse_token_lines(lines: Iterable[str], source: str) -> dict[str, Principal]:
    """`<role> <name> sha256:<hex>` (or `x509:<identity>`) lines -> principals by hash (or by
    `x509:<identity>`). Raises ValueError, naming the line."""
    tokens: dict[str, Principal] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{source} entry {number}"
        if len(parts) != 3:
            raise ValueError(f"{where}: expected '<role> <name> sha256:<hex>', got {len(parts)} fields")
        role_name, name, digest = parts
        try:
            role = Role(role_name.lower())
        except ValueError:
            raise ValueError(f"{where}: unknown role {role_name!r} (commander, backend, operator)") from None
        if digest.startswith(X509):
            if len(digest) == len(X509):
                raise ValueError(f"{where}: x509: needs the certificate identity (a SAN or common name)")
            tokens[digest] = Principal(name, role)  # identities are compared exactly
            continue
        if not digest.startswith("sha256:") or len(digest) != 7 + 64:
            raise ValueError(f"{where}: the token must be given hashed, as sha256:<64 hex digits> (or x509:<identity>)")
        tokens[digest.lower()] = Principal(name, role)
    return tokens


class AccessPolicy:
    """Configured tokens; answers "who is this caller" and "may they call this"."""

    def __init__(
        self, tokens: Mapping[str, Principal], *, group_leaf: Callable[[], bytes | None] | None = None
    ) -> None:
        self._certificates = {key[len(X509) :]: p for key, p in tokens.items() if key.startswith(X509)}
        self._tokens = {key: p for key, p in tokens.items() if not key.startswith(X509)}
        self._everyone = dict(tokens)
        # The group's own certificate (leaf PEM), to believe the caller a member forwards for.
        self.group_leaf = group_leaf

    @classmethod
    def load(cls, *, tokens_file: str, tokens_env: str) -> AccessPolicy:
        tokens: dict[str, Principal] = {}
        if tokens_file:
            tokens |= parse_token_lines(Path(tokens_file).read_text().splitlines(), tokens_file)
        if tokens_env:
            tokens |= parse_token_lines(tokens_env.replace(";", "\n").splitlines(), "DISPATCHER_TOKENS")
        return cls(tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._everyone)

    @property
    def has_certificates(self) -> bool:
        return bool(self._certificates)

    def describe(self) -> dict[str, int]:
        """Tokens per role, for the start-up log (never the tokens)."""
        counts: dict[str, int] = {}
        for principal in self._everyone.values():
            assert principal.role is not None
            counts[principal.role.value] = counts.get(principal.role.value, 0) + 1
        return counts

    def identify(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal | None:
        """The caller named by the metadata's bearer token; None when missing or unknown."""
        if not self._everyone:
            return ANONYMOUS
        for key, value in metadata or ():
            if key == AUTHORIZATION and isinstance(value, str) and value[:7].lower() == _BEARER:
                digest = hash_token(value[7:].strip())
                for known, principal in self._tokens.items():  # constant time per entry
                    if hmac.compare_digest(known, digest):
                        return principal
                return None
        return None

    def identify_certificate(self, context: Any) -> Principal | None:
        """The principal configured for the caller's client certificate (mutual TLS), if any."""
        if not self._certificates:
            return None
        for identity in caller_identities(context, self.group_leaf):
            principal = self._certificates.get(identity)
            if principal is not None:
                return principal
        return None

    def principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller of a call the interceptor let through."""
        metadata = context.invocation_metadata()
        found = self.identify(metadata)
        if found is None and not _has_bearer(metadata):
            found = self.identify_certificate(context)
        return found or ANONYMOUS

    def needs_certificate(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        """Whether only the peer's certificate can decide this call (no bearer token sent)."""
        return method in _ALLOWED and self.has_certificates and not _has_bearer(metadata)

    def check(
        self, method: str, metadata: Iterable[tuple[str, Any]] | None, context: Any = None
    ) -> tuple[grpc.StatusCode, str] | None:
        """None when the call may proceed, else the status and message to refuse it with.
        `context` (the call's, once it runs) lets a client certificate name the caller."""
        allowed = _ALLOWED.get(method)
        if allowed is None or not self._everyone:
            return None
        principal = self.identify(metadata)
        if principal is None and context is not None and not _has_bearer(metadata):
            principal = self.identify_certificate(context)
        if principal is None:
            message = "missing or unknown bearer token (send metadata 'authorization: Bearer <token>')"
            if self.has_certificates:
                message += " and no client certificate named in the tokens file"
            return grpc.StatusCode.UNAUTHENTICATED, message
        assert principal.role is not None
        if principal.role not in allowed:
            roles = ", ".join(sorted(role.value for role in allowed))
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"{principal.hop} may not call {method.rsplit('/', 1)[-1]} (allowed roles: {roles})",
            )
        return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls the AccessPolicy denies, with the right status, before any handler runs."""

    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None:
            return None
        if self._policy.needs_certificate(details.method, details.invocation_metadata):
            return _certificate_checked(handler, self._policy, details.method)
        denial = self._policy.check(details.method, details.invocation_metadata)
        if denial is None:
            return handler
        code, message = denial
        log.warning("rpc.denied", method=details.method, code=code.name, detail=message)
        return _refusing_handler(handler, code, message)


def _has_bearer(metadata: Iterable[tuple[str, Any]] | None) -> bool:
    return any(key == AUTHORIZATION for key, _ in metadata or ())


def _certificate_checked(
    handler: grpc.RpcMethodHandler[Any, Any], policy: AccessPolicy, method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler`, run only once the peer's certificate passes `policy` (the interceptor cannot see
    the connection; the handler's context can). Every method of ours is unary or an async generator."""

    async def denied(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[grpc.StatusCode, str] | None:
        denial = policy.check(method, context.invocation_metadata(), context)
        if denial is not None:
            log.warning("rpc.denied", method=method, code=denial[0].name, detail=denial[1])
        return denial

    kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.response_streaming:
        behavior: Any = handler.stream_stream if handler.request_streaming else handler.unary_stream
        assert behavior is not None

        async def checked_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            denial = await denied(context)
            if denial is not None:
                if handler.request_streaming:
                    await await_first_write(request)
                await context.abort(*denial)
            async for response in behavior(request, context):
                yield response

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(checked_stream, **kwargs)
        return grpc.unary_stream_rpc_method_handler(checked_stream, **kwargs)
    unary: Any = handler.unary_unary
    assert unary is not None and not handler.request_streaming

    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        denial = await denied(context)
        if denial is not None:
            await context.abort(*denial)
        return await unary(request, context)

    return grpc.unary_unary_rpc_method_handler(checked, **kwargs)


def _refusing_handler(
    like: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `like` that only aborts with `code`."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if like.request_streaming:
            await await_first_write(request)
        await context.abort(code, message)
        yield  # pragma: no cover - abort raises; this only makes it an async generator

    kwargs = {
        "request_deserializer": like.request_deserializer,
        "response_serializer": like.response_serializer,
    }
    if like.request_streaming and like.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **kwargs)
    if like.request_streaming:  # pragma: no cover - the contract has no client-streaming method
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    if like.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
