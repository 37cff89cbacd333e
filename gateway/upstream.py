"""The gateway's one channel to the dispatcher's control API, and each call's metadata.

The channel is grpc.aio (the gateway serves from one event loop) built from dispatcherctl's
`ClientConfig` and TLS credentials. Every call carries the HTTP caller's own
`authorization` header, so the dispatcher checks the caller's role, not ours, and `x-via`
hops (`http:<client address>,gateway:<id>`) so the paths of the stops it causes start at
the HTTP client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from starlette.requests import HTTPConnection

from dispatcherctl.client import channel_credentials
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, from_rpc_error
from shared import wire
from shared.keepalive import KeepaliveConfig

__all__ = ["TRACE_HEADERS", "VIA", "Metadata", "Upstream", "client_hop", "responses"]

VIA = "x-via"  # dispatcher/control/via.py reads it
Metadata = tuple[tuple[str, str], ...]
TRACE_HEADERS = ("traceparent", "tracestate")
_MAX_TRACE_HEADER = 512  # W3C: tracestate is at most 32 members; anything longer is not a trace header
_MAX_PAGES = 1000


def client_hop(connection: HTTPConnection) -> str:
    """`http:<address>:<port>` of the HTTP client (`http:unknown` behind a transport without one)."""
    client = connection.client
    if client is None:
        return "http:unknown"
    host = f"[{client.host}]" if ":" in client.host else client.host
    return f"http:{host}:{client.port}"


class Upstream:
    """The control-API stub on one channel; `close()` when the gateway stops."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.target = config.upstream.target
        options = KeepaliveConfig().client_options()
        credentials = channel_credentials(config.upstream)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(self.target, credentials, options=options)
        self.stub: Any = wire.SessionControlServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(grace=None)

    def metadata(self, connection: HTTPConnection) -> Metadata:
        """The caller's bearer token (if any), the hops in front of us, and the caller's W3C trace
        context (`traceparent`/`tracestate`), so the dispatcher's session span joins its trace."""
        metadata: list[tuple[str, str]] = [(VIA, f"{client_hop(connection)},{self.config.hop}")]
        authorization = connection.headers.get("authorization", "")
        if authorization:
            if not (authorization.isascii() and authorization.isprintable()):
                raise GatewayError(401, "UNAUTHENTICATED", "the Authorization header must be printable ASCII")
            metadata.insert(0, ("authorization", authorization))
        for header in TRACE_HEADERS:
            value = connection.headers.get(header, "")
            # A malformed trace header is dropped, not refused: tracing must never fail a request.
            if value and len(value) <= _MAX_TRACE_HEADER and value.isascii() and value.isprintable():
                metadata.append((header, value))
        return tuple(metadata)

    def error(self, exc: grpc.RpcError) -> GatewayError:
        return from_rpc_error(exc, self.target)

    async def unary(self, method: str, request: Any, metadata: Metadata, *, timeout_s: float | None = None) -> Any:
        """One unary call; a failure is a GatewayError with the mapped status."""
        call = getattr(self.stub, method)
        timeout = self.config.upstream.timeout_s if timeout_s is None else timeout_s
        try:
            return await call(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise self.error(exc) from exc

    async def list_sessions(self, request: Any, metadata: Metadata) -> AsyncIterator[Any]:
        """Every SessionInfo matching `request`, following the pages."""
        for _ in range(_MAX_PAGES):
            page = await self.unary("ListSessions", request, metadata)
            for info in page.sessions:
                yield info
            if not page.next_page_token:
                return
            following = wire.ctl.ListSessionsRequest()
            following.CopyFrom(request)
            following.page_token = page.next_page_token
            request = following
        raise GatewayError(502, "INTERNAL", f"ListSessions returned more than {_MAX_PAGES} pages")


async def responses(call: Any) -> AsyncIterator[Any]:
    """A server stream's messages by `read()` (grpc.aio forbids mixing it with `async for`,
    and the first message is read apart, before a response starts)."""
    while (message := await call.read()) is not grpc.aio.EOF:
        yield message
