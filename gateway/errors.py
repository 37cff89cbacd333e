"""The one place a failure becomes an HTTP answer: gRPC status -> HTTP status, JSON body.

Every error the gateway answers is `{"error": {"message", "type", "code", "status", ...}}`
(the shape OpenAI clients read, with the gRPC code name as `code`); before a stream starts
it is the response, after that it is a final `event: error` carrying the same object.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import grpc
import structlog
from starlette.responses import JSONResponse

from dispatcherctl.errors import is_transport_failure

__all__ = ["GatewayError", "error_response", "from_rpc_error", "http_status", "internal_error"]

log = structlog.get_logger("gateway")

# gRPC status -> HTTP status. Bad requests are 4xx; the dispatcher's own trouble is 5xx.
_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.OUT_OF_RANGE: 409,  # a resume point no longer kept: the answer names the oldest
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.UNAVAILABLE: 503,  # no free pool commander, shutting down, unreachable
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,  # at capacity, or a watcher that fell behind
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    503: "service_unavailable",
}


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 502)  # INTERNAL, UNKNOWN, DATA_LOSS: the upstream failed


class GatewayError(Exception):
    """A failure to answer with `status` and a JSON error body."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        error = {
            "message": self.message,
            "type": _TYPES.get(self.status, "api_error"),
            "code": self.code,
            "status": self.status,
            **self.extra,
        }
        return {"error": error}


def from_rpc_error(exc: grpc.RpcError, target: str) -> GatewayError:
    """A failed control-API call as the gateway's error."""
    if isinstance(exc, grpc.aio.AioRpcError | grpc.Call):
        code, details = exc.code(), exc.details() or ""
    else:  # pragma: no cover - grpc raises Call errors only
        code, details = grpc.StatusCode.UNKNOWN, str(exc)
    if code is grpc.StatusCode.UNAVAILABLE and is_transport_failure(details):
        return GatewayError(503, "UNAVAILABLE", f"cannot reach the dispatcher at {target}")
    return GatewayError(http_status(code), code.name, details or code.name)


def error_response(error: GatewayError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def internal_error(exc: BaseException, session_id: str = "") -> GatewayError:
    """A bug of ours: the client gets a reference, the log gets the traceback with it."""
    reference = uuid.uuid4().hex[:12]
    log.error("gateway.internal_error", ref=reference, session_id=session_id, exc_info=exc)
    return GatewayError(500, "INTERNAL", f"internal error (ref {reference})")
