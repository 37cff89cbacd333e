"""Sessions started with `"on_disconnect": "keep"`: their StartSession calls, held here.

A session started through the control plane lives as long as its StartSession call (the
call ending first stops it). For a resumable session the HTTP client must be free to go, so
the call is not the response's: one holder task per session reads it (state changes only,
so it costs one message per state) until the session ends, and the client's stream is a
WatchSession, which it may drop and resume at will. Only `POST .../stop` (or the session's
own end, or the gateway stopping) ends such a session. Holders are bounded in number and
owned here: `aclose()` cancels and awaits every one.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import structlog

from gateway.errors import GatewayError
from gateway.upstream import Metadata, Upstream, responses

__all__ = ["KeptSessions"]

log = structlog.get_logger("gateway")

_CLOSE_WAIT_S = 2.0


class KeptSessions:
    def __init__(self, upstream: Upstream, limit: int) -> None:
        self._upstream = upstream
        self._limit = limit
        self._holders: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    def __len__(self) -> int:
        return len(self._holders)

    async def start(self, request: Any, metadata: Metadata) -> Any:
        """Start the session and hold its call; the first event (OPEN, naming the session)."""
        if self._closing:
            raise GatewayError(503, "UNAVAILABLE", "the gateway is shutting down")
        if len(self._holders) >= self._limit:
            raise GatewayError(503, "UNAVAILABLE", f"{self._limit} resumable sessions held already; try later")
        call = self._upstream.stub.StartSession(request, metadata=metadata)
        try:
            first = (await call.read()).event
        except grpc.aio.AioRpcError as exc:
            raise self._upstream.error(exc) from exc
        except BaseException:
            call.cancel()
            raise
        session_id = first.session_id
        self._holders[session_id] = asyncio.get_running_loop().create_task(
            self._hold(session_id, call), name=f"gateway-keep-{session_id}"
        )
        return first

    async def _hold(self, session_id: str, call: Any) -> None:
        try:
            async for _ in responses(call):
                pass
            log.info("gateway.kept_session_ended", session_id=session_id)
        except grpc.aio.AioRpcError as exc:
            log.info("gateway.kept_session_ended", session_id=session_id, code=exc.code().name)
        finally:
            call.cancel()
            self._holders.pop(session_id, None)

    async def aclose(self) -> None:
        """Cancel every holder (their sessions are stopped: their caller is gone) and await them."""
        self._closing = True
        holders = list(self._holders.values())
        for task in holders:
            task.cancel()
        if holders:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*holders, return_exceptions=True), _CLOSE_WAIT_S)
