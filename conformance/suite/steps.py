"""Steps many tests share: an echo round trip, a clean finish, status checks, stop content."""

from __future__ import annotations

import json
from typing import Any

import grpc

from conformance.client import Ending, RawSession
from shared import wire

__all__ = [
    "ECHO_ARGS",
    "assert_status",
    "echo_round_trip",
    "finish_ok",
    "parse_json",
    "stop_content",
    "tool_error_name",
]

ECHO_ARGS: dict[str, Any] = {"text": "conformance", "nested": {"list": [1, 2, 3]}, "unicode": "héllo"}


def stop_content(stop_word: str) -> str:
    return f"and now the answer contains {stop_word}, which the target blocks"


def tool_error_name(result: wire.pb.ToolCallResult) -> str:
    if not result.HasField("error"):
        return "no error"
    return wire.tool_error_code_name(result.error.code)


async def echo_round_trip(session: RawSession, seq: int, call_id: str, what: str) -> None:
    """An echo call answered with its own arguments: the stream still works."""
    args = {"alive": call_id}
    await session.tool_call(seq, "echo", args, call_id=call_id)
    result = await session.expect_result(call_id, f"the echo result ({what})")
    if result.HasField("error"):
        raise AssertionError(f"{what}: echo failed with {tool_error_name(result)}: {result.error.message}")
    if parse_json(result.result_json) != args:
        raise AssertionError(f"{what}: echo returned {result.result_json!r}, expected its arguments {args}")


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return f"<not JSON: {text!r}>"


async def finish_ok(session: RawSession, seq: int, what: str) -> Ending:
    """is_finish at `seq`, half-close: the stream must end OK."""
    await session.content(seq, "done.", is_finish=True)
    await session.half_close()
    ending = await session.expect_status(grpc.StatusCode.OK, what)
    return ending


def assert_status(ending: Ending, code: grpc.StatusCode, what: str) -> None:
    if ending.code is not code:
        raise AssertionError(f"{what}: expected status {code.name}, got {ending.describe()}")
