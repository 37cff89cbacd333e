"""Run one tool call: look up, parse, validate, run under limits, serialise.

Every failure the caller could cause, and every exception the tool raises, becomes a
`ToolOutcome` with an error code; only cancellation from the caller's own scope escapes,
because the caller must record that call as CANCELLED, not as a tool result.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import time
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import best_match

from dispatcher.tools.registry import ToolRegistry, ToolSpec
from shared.errors import describe_exception
from shared.jsontext import JsonTextError, parse_json_object

__all__ = ["PreparedCall", "ToolErrorCode", "ToolExecutor", "ToolFailure", "ToolOutcome"]


class ToolErrorCode(enum.Enum):
    UNKNOWN_TOOL = "unknown_tool"
    INVALID_ARGUMENTS = "invalid_arguments"
    TIMEOUT = "timeout"
    FAILED = "failed"
    # Recorded by callers whose own scope was cancelled; execute() never returns it.
    CANCELLED = "cancelled"
    RESULT_TOO_LARGE = "result_too_large"
    # A call that needed human approval and was denied; execute() never returns it.
    DENIED = "denied"


class ToolFailure(Exception):
    """Raised by a tool to fail its call with exactly this message (a FAILED outcome without
    the exception's type or a `tool X failed:` prefix): for messages written for the model,
    such as an MCP server's own error text or `unavailable: ...` while a server restarts."""


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """A call whose arguments passed and that needs a task of its own: an async tool's, or
    any call that must wait for approval first. What `ToolExecutor.run()` needs."""

    call_id: str
    spec: ToolSpec
    args: dict[str, Any]
    timeout_s: float
    needs_approval: bool = False


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """One call's result: `result_json` on success, else `error_code` and a message."""

    call_id: str
    tool_name: str
    result_json: str = ""
    error_code: ToolErrorCode | None = None
    error_message: str = ""
    execution_time_us: int = 0

    @property
    def is_error(self) -> bool:
        return self.error_code is not None

    @classmethod
    def failure(
        cls,
        call_id: str,
        tool_name: str,
        code: ToolErrorCode,
        message: str,
        execution_time_us: int = 0,
    ) -> ToolOutcome:
        return cls(
            call_id=call_id,
            tool_name=tool_name,
            error_code=code,
            error_message=message,
            execution_time_us=execution_time_us,
        )


# Built once: json.dumps with keyword arguments would build an encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _parse_arguments(spec: ToolSpec, arguments_json: str) -> dict[str, Any] | str:
    """The validated arguments object, or the INVALID_ARGUMENTS message."""
    try:
        args = parse_json_object(arguments_json, "arguments_json") if arguments_json else {}
    except JsonTextError as exc:
        return str(exc)
    validator = spec.validator
    if validator is not None and not validator.is_valid(args):
        # Only the failing path pays for collecting and ranking every error.
        error = best_match(validator.iter_errors(args))
        assert error is not None
        return f"arguments failed the schema at {error.json_path}: {error.message}"
    return args


class ToolExecutor:
    """Executes calls against one registry; holds no per-call state. Which calls wait for a
    human decision is the registry's `approval` set (`ToolRegistry.approve_matching`)."""

    __slots__ = ("_max_result_bytes", "_registry")

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        max_result_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        if max_result_bytes < 1:
            raise ValueError(f"max_result_bytes must be >= 1, got {max_result_bytes}")
        self._registry = registry
        self._max_result_bytes = max_result_bytes

    @property
    def registry(self) -> ToolRegistry:
        return self._registry

    async def execute(
        self,
        call_id: str,
        tool_name: str,
        arguments_json: str,
        timeout_s: float | None = None,
    ) -> ToolOutcome:
        """Run one call; `timeout_s` (if given and > 0) only shortens the tool's own."""
        prepared = self.prepare(call_id, tool_name, arguments_json, timeout_s)
        if isinstance(prepared, ToolOutcome):
            return prepared
        return await self.run(prepared)

    def prepare(
        self,
        call_id: str,
        tool_name: str,
        arguments_json: str,
        timeout_s: float | None = None,
    ) -> ToolOutcome | PreparedCall:
        """Look the tool up and check its arguments, without waiting. The outcome is final for
        an unknown tool, invalid arguments and an inline tool (a plain function, run right
        here); an async tool's call, and any call that needs approval, comes back as a
        PreparedCall for `run()`."""
        spec = self._registry.get(tool_name)
        if spec is None:
            known = ", ".join(self._registry.names()) or "(none)"
            message = f"unknown tool {tool_name!r}; known tools: {known}"
            return ToolOutcome.failure(call_id, tool_name, ToolErrorCode.UNKNOWN_TOOL, message)
        args = _parse_arguments(spec, arguments_json)
        if isinstance(args, str):
            return ToolOutcome.failure(call_id, tool_name, ToolErrorCode.INVALID_ARGUMENTS, args)
        # Only a served set of approval tools costs a call a lookup (a set probe of its name).
        approval = self._registry.approval
        needs_approval = bool(approval) and tool_name in approval
        if spec.inline and not needs_approval:
            return self._run_inline(call_id, spec, args)
        timeout = spec.timeout_s
        if timeout_s is not None and 0 < timeout_s < timeout:
            timeout = timeout_s
        return PreparedCall(call_id, spec, args, timeout, needs_approval)

    def _run_inline(self, call_id: str, spec: ToolSpec, args: dict[str, Any]) -> ToolOutcome:
        tool_name = spec.name
        started_ns = time.perf_counter_ns()
        try:
            result = spec.func(args)
        except Exception as exc:  # a tool bug is a FAILED outcome, not ours
            return self._failed(call_id, tool_name, exc, (time.perf_counter_ns() - started_ns) // 1000)
        elapsed_us = (time.perf_counter_ns() - started_ns) // 1000
        if inspect.isawaitable(result):  # e.g. a partial of an async function
            if inspect.iscoroutine(result):
                result.close()
            message = f"tool {tool_name!r} is a plain function that returned an awaitable; declare it async"
            return ToolOutcome.failure(call_id, tool_name, ToolErrorCode.FAILED, message, elapsed_us)
        return self._serialise(call_id, tool_name, result, elapsed_us)

    async def run(self, call: PreparedCall) -> ToolOutcome:
        """Run a prepared call: an async one under its timeout and its tool's concurrency
        limit, an inline one (prepared because it needed approval) as `prepare` would have."""
        spec = call.spec
        if spec.inline:
            return self._run_inline(call.call_id, spec, call.args)
        elapsed_ns = 0
        failure: Exception | None = None
        result: Any = None
        timed_out = False
        # The deadline covers queueing on the limiter: a call waits at most `timeout`.
        # asyncio.timeout turns only its own expiry into TimeoutError; an outer cancellation
        # (a stop, the session ending) propagates. Both it and the semaphore are asyncio's
        # own: anyio's move_on_after and CapacityLimiter cost ~12 µs per call together.
        try:
            async with asyncio.timeout(call.timeout_s):
                async with spec.limiter:
                    started_ns = time.perf_counter_ns()
                    try:
                        result = await spec.func(call.args)
                    except Exception as exc:  # a tool bug is a FAILED outcome, not ours
                        failure = exc
                    finally:
                        elapsed_ns = time.perf_counter_ns() - started_ns
        except TimeoutError:  # the deadline's (a tool's own TimeoutError is a `failure` above)
            timed_out = True
        elapsed_us = elapsed_ns // 1000

        if timed_out:
            message = f"tool {spec.name!r} timed out after {call.timeout_s:g} s"
            return ToolOutcome.failure(call.call_id, spec.name, ToolErrorCode.TIMEOUT, message, elapsed_us)
        if failure is not None:
            return self._failed(call.call_id, spec.name, failure, elapsed_us)
        return self._serialise(call.call_id, spec.name, result, elapsed_us)

    @staticmethod
    def _failed(call_id: str, tool_name: str, exc: Exception, elapsed_us: int) -> ToolOutcome:
        if isinstance(exc, ToolFailure):
            message = str(exc)
        else:
            message = f"tool {tool_name!r} failed: {describe_exception(exc)}"
        return ToolOutcome.failure(call_id, tool_name, ToolErrorCode.FAILED, message, elapsed_us)

    def _serialise(self, call_id: str, tool_name: str, result: Any, elapsed_us: int) -> ToolOutcome:
        code = ToolErrorCode.FAILED
        try:
            result_json = _ENCODER.encode(result)
            # isascii() is O(1) in CPython (a flag), so ASCII results never re-encode;
            # a strict encode also catches lone surrogates the wire could not carry.
            size = len(result_json) if result_json.isascii() else len(result_json.encode("utf-8"))
        except UnicodeEncodeError:
            message = f"tool {tool_name!r} returned a string that is not valid Unicode"
        except (TypeError, ValueError, RecursionError) as exc:
            message = f"tool {tool_name!r} returned a value that is not JSON-serialisable: {describe_exception(exc)}"
        else:
            limit = self._max_result_bytes
            if size <= limit:
                return ToolOutcome(
                    call_id=call_id,
                    tool_name=tool_name,
                    result_json=result_json,
                    execution_time_us=elapsed_us,
                )
            code = ToolErrorCode.RESULT_TOO_LARGE
            message = f"tool {tool_name!r} returned {size} bytes of JSON; the limit is {limit} bytes"
        return ToolOutcome.failure(call_id, tool_name, code, message, elapsed_us)
