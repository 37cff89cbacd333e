"""Bearer tokens with roles: who may call what.

Tokens are configured hashed (`sha256:<hex>`), one per line as `<role> <name> <hash>`,
in a file (`--tokens-file`) and/or `DISPATCHER_TOKENS` (lines or `;`-separated). With
no token configured the dispatcher runs in development mode: every caller may do
everything, and start-up says so loudly.

An interceptor refuses a call before its handler runs (UNAUTHENTICATED: no or unknown
token; PERMISSION_DENIED: wrong role); handlers then ask `principal(context)` who the
caller is, to record it in stop paths and to limit backends to their own sessions.
Health and reflection stay open: load balancers and generic tools probe them without
credentials, and they expose nothing that the published proto does not.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog

from dispatcher.boundary import await_first_write
from shared import wire

__all__ = ["AccessPolicy", "Principal", "Role", "hash_token", "parse_token_lines"]

log = structlog.get_logger("dispatcher.auth")

AUTHORIZATION = "authorization"
_BEARER = "bearer "


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
    """`<role> <name> sha256:<hex>` lines -> principals by hash. Raises ValueError, naming the line."""
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
        if not digest.startswith("sha256:") or len(digest) != 7 + 64:
            raise ValueError(f"{where}: the token must be given hashed, as sha256:<64 hex digits>")
        tokens[digest.lower()] = Principal(name, role)
    return tokens


class AccessPolicy:
    """Configured tokens; answers "who is this caller" and "may they call this"."""

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        self._tokens = dict(tokens)

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
        return bool(self._tokens)

    def describe(self) -> dict[str, int]:
        """Tokens per role, for the start-up log (never the tokens)."""
        counts: dict[str, int] = {}
        for principal in self._tokens.values():
            assert principal.role is not None
            counts[principal.role.value] = counts.get(principal.role.value, 0) + 1
        return counts

    def identify(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal | None:
        """The caller named by the metadata's bearer token; None when missing or unknown."""
        if not self._tokens:
            return ANONYMOUS
        for key, value in metadata or ():
            if key == AUTHORIZATION and isinstance(value, str) and value[:7].lower() == _BEARER:
                digest = hash_token(value[7:].strip())
                for known, principal in self._tokens.items():  # constant time per entry
                    if hmac.compare_digest(known, digest):
                        return principal
                return None
        return None

    def principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller of a call the interceptor let through."""
        return self.identify(context.invocation_metadata()) or ANONYMOUS

    def check(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> tuple[grpc.StatusCode, str] | None:
        """None when the call may proceed, else the status and message to refuse it with."""
        allowed = _ALLOWED.get(method)
        if allowed is None or not self._tokens:
            return None
        principal = self.identify(metadata)
        if principal is None:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown bearer token (send metadata 'authorization: Bearer <token>')",
            )
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
        denial = self._policy.check(details.method, details.invocation_metadata)
        if denial is None or handler is None:
            return handler
        code, message = denial
        log.warning("rpc.denied", method=details.method, code=code.name, detail=message)
        return _refusing_handler(handler, code, message)


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
