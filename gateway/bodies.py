"""Reading and checking request bodies and parameters: every bad one is a 400 that says why."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from gateway.errors import GatewayError

__all__ = ["bad_request", "optional_int", "optional_str", "read_json_object", "string_map"]


def bad_request(message: str) -> GatewayError:
    return GatewayError(400, "INVALID_ARGUMENT", message)


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, at most `max_bytes` (413 beyond, read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise GatewayError(413, "RESOURCE_EXHAUSTED", f"the body is {declared} bytes; at most {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise GatewayError(413, "RESOURCE_EXHAUSTED", f"the body is over {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise bad_request("the body must be a JSON object")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise bad_request(f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise bad_request(f"the body must be a JSON object, not {type(value).__name__}")
    return value


def optional_str(body: dict[str, Any], key: str, default: str = "") -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad_request(f"{key!r} must be a string")
    return value


def optional_int(body: dict[str, Any], key: str, *, minimum: int = 0, maximum: int = 2**32 - 1) -> int:
    value = body.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise bad_request(f"{key!r} must be an integer from {minimum} to {maximum}")
    return value


def string_map(body: dict[str, Any], key: str) -> dict[str, str]:
    value = body.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise bad_request(f"{key!r} must be an object of strings")
    return value
