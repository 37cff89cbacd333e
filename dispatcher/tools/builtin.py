"""The tools every dispatcher offers unless configured otherwise."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from dispatcher.tools.calculator import MAX_EXPRESSION_LENGTH, evaluate
from dispatcher.tools.registry import ToolRegistry

__all__ = ["default_registry"]


def default_registry(*, test_tools: bool = False) -> ToolRegistry:
    """A new registry holding the built-in tools (with `test_tools`, also `sleep`, which only
    tests want); callers may add to it freely."""
    registry = ToolRegistry()

    # echo, clock and calculator only compute: plain functions, run inline (see ToolSpec).
    @registry.tool(schema={"type": "object"})
    def echo(args: dict[str, Any]) -> dict[str, Any]:
        """Return the arguments object unchanged."""
        return args

    @registry.tool(schema={"type": "object", "properties": {}, "additionalProperties": False})
    def clock(args: dict[str, Any]) -> dict[str, Any]:
        """Current UTC time as ISO-8601 and as Unix epoch milliseconds."""
        unix_ms = time.time_ns() // 1_000_000
        # Both fields come from the same millisecond, so they always agree.
        moment = datetime.fromtimestamp(unix_ms // 1000, UTC).replace(microsecond=unix_ms % 1000 * 1000)
        return {
            "utc": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "unix_ms": unix_ms,
        }

    @registry.tool(
        schema={
            "type": "object",
            "properties": {"expression": {"type": "string", "maxLength": MAX_EXPRESSION_LENGTH}},
            "required": ["expression"],
            "additionalProperties": False,
        },
    )
    def calculator(args: dict[str, Any]) -> dict[str, Any]:
        """Evaluate arithmetic: + - * / // % **, math functions, pi, e, tau."""
        expression: str = args["expression"]
        return {"expression": expression, "value": evaluate(expression)}

    if test_tools:
        _add_test_tools(registry)
    return registry


def _add_test_tools(registry: ToolRegistry) -> None:
    # The tool's own limit is generous so that each call's timeout decides.
    @registry.tool(
        schema={
            "type": "object",
            "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 3600}},
            "required": ["seconds"],
            "additionalProperties": False,
        },
        timeout_s=3600,
    )
    async def sleep(args: dict[str, Any]) -> dict[str, Any]:
        """Wait the given number of seconds, then report it."""
        seconds = args["seconds"]
        await asyncio.sleep(seconds)
        return {"slept_s": seconds}
