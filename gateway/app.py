"""The gateway's ASGI app: routes, the error boundary, CORS, and the lifespan that owns the
upstream channel and the held (resumable) sessions."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.chat import chat_completions, list_models
from gateway.config import GatewayConfig
from gateway.console import console_page
from gateway.errors import GatewayError, error_response, internal_error
from gateway.kept import KeptSessions
from gateway.sessions import (
    decide_tool_call,
    get_session,
    list_sessions,
    resume_events,
    start_session,
    stop_session,
)
from gateway.state import GatewayState
from gateway.upstream import Upstream

__all__ = ["build_app"]

log = structlog.get_logger("gateway")

Handler = Callable[[Request], Awaitable[Response]]


def guarded(handler: Handler) -> Handler:
    """The error boundary: a GatewayError is its status and JSON body; anything else is a bug
    of ours, a 500 with a reference (the traceback is logged with it), never a traceback."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as error:
            log.info("gateway.refused", session_id=request.path_params.get("session_id", ""), status=error.status,
                     code=error.code, message=error.message, route=f"{request.method} {request.url.path}")  # fmt: skip
            return error_response(error)
        except Exception as exc:
            return error_response(internal_error(exc, request.path_params.get("session_id", "")))

    return wrapper


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) in the same JSON shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "INVALID_ARGUMENT")
    message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
    return error_response(GatewayError(exc.status_code, code, message), headers=exc.headers)


def build_app(config: GatewayConfig) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        upstream = Upstream(config)
        kept = KeptSessions(upstream, config.max_kept_sessions)
        app.state.gateway = GatewayState(config=config, upstream=upstream, kept=kept)
        try:
            yield
        finally:
            await kept.aclose()
            await upstream.close()

    routes = [
        Route("/", guarded(console_page), methods=["GET"]),
        Route("/v1/sessions", guarded(start_session), methods=["POST"]),
        Route("/v1/sessions", guarded(list_sessions), methods=["GET"]),
        Route("/v1/sessions/{session_id}", guarded(get_session), methods=["GET"]),
        Route("/v1/sessions/{session_id}/events", guarded(resume_events), methods=["GET"]),
        Route("/v1/sessions/{session_id}/stop", guarded(stop_session), methods=["POST"]),
        Route(
            "/v1/sessions/{session_id}/tool-calls/{call_id}/decision", guarded(decide_tool_call), methods=["POST"]
        ),
        Route("/v1/chat/completions", guarded(chat_completions), methods=["POST"]),
        Route("/v1/models", guarded(list_models), methods=["GET"]),
    ]
    middleware = []
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type", "last-event-id"],
                expose_headers=["x-session-id"],
                max_age=600,
            )
        )
    return Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: _http_error}, lifespan=lifespan
    )
