"""The tool registry, the executor of one call, and the built-in tools."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from dispatcher.tools import (
    PreparedCall,
    ToolErrorCode,
    ToolExecutor,
    ToolOutcome,
    ToolRegistry,
    ToolSpec,
    default_registry,
)

pytestmark = pytest.mark.timeout(10)


class Gate:
    """A test tool body that reports when it starts and finishes only when opened."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.opened = anyio.Event()
        self.saw_cancel = anyio.Event()
        self.entries = 0

    async def __call__(self, args: dict[str, Any]) -> dict[str, Any]:
        self.entries += 1
        self.entered.set()
        try:
            await self.opened.wait()
        except anyio.get_cancelled_exc_class():
            self.saw_cancel.set()
            raise
        return {"gate": "passed"}


def gated_registry(gate: Gate, *, max_concurrency: int = 64, timeout_s: float = 10) -> ToolRegistry:
    registry = default_registry(test_tools=True)
    registry.register(
        ToolSpec(
            name="gate",
            func=gate,
            schema={"type": "object"},
            description="waits for the test",
            timeout_s=timeout_s,
            max_concurrency=max_concurrency,
        )
    )
    return registry


async def wait_until_queued(spec: ToolSpec, waiting: int) -> None:
    """Yield to the loop until `waiting` tasks queue on the limiter (no timing)."""
    for _ in range(1000):
        if spec.limiter.waiting >= waiting:
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("no call queued on the limiter")


def error_of(outcome: ToolOutcome, code: ToolErrorCode) -> str:
    assert outcome.is_error, outcome
    assert outcome.error_code is code, outcome
    assert outcome.result_json == ""
    return outcome.error_message


# -- built-in tools --


@pytest.mark.anyio
async def test_echo_returns_arguments_unchanged() -> None:
    executor = ToolExecutor(default_registry(test_tools=True))
    args = {"a": [1, 2.5, None, True], "b": {"c": "ü"}}
    outcome = await executor.execute("c1", "echo", json.dumps(args))
    assert not outcome.is_error
    assert outcome.call_id == "c1"
    assert outcome.tool_name == "echo"
    assert json.loads(outcome.result_json) == args
    assert '"ü"' in outcome.result_json  # ensure_ascii=False
    assert " " not in outcome.result_json  # compact separators
    assert outcome.execution_time_us >= 0


@pytest.mark.anyio
async def test_empty_arguments_count_as_empty_object() -> None:
    outcome = await ToolExecutor(default_registry(test_tools=True)).execute("c1", "echo", "")
    assert outcome.result_json == "{}"


@pytest.mark.anyio
async def test_clock_reports_utc_and_unix_ms_that_agree() -> None:
    outcome = await ToolExecutor(default_registry(test_tools=True)).execute("c1", "clock", "{}")
    value = json.loads(outcome.result_json)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value["utc"])
    assert isinstance(value["unix_ms"], int)
    parsed = datetime.fromisoformat(value["utc"].replace("Z", "+00:00"))
    assert parsed.tzinfo is not None
    assert round(parsed.timestamp() * 1000) == value["unix_ms"]
    assert abs(value["unix_ms"] - datetime.now(UTC).timestamp() * 1000) < 60_000


@pytest.mark.anyio
async def test_clock_rejects_arguments() -> None:
    outcome = await ToolExecutor(default_registry(test_tools=True)).execute("c1", "clock", '{"tz": "x"}')
    assert "'tz' was unexpected" in error_of(outcome, ToolErrorCode.INVALID_ARGUMENTS)


@pytest.mark.anyio
async def test_calculator_evaluates() -> None:
    executor = ToolExecutor(default_registry(test_tools=True))
    outcome = await executor.execute("c1", "calculator", '{"expression": "2 + 3 * 4"}')
    assert json.loads(outcome.result_json) == {"expression": "2 + 3 * 4", "value": 14}


@pytest.mark.anyio
async def test_calculator_error_becomes_failed() -> None:
    executor = ToolExecutor(default_registry(test_tools=True))
    outcome = await executor.execute("c1", "calculator", '{"expression": "1/0"}')
    message = error_of(outcome, ToolErrorCode.FAILED)
    assert message == "tool 'calculator' failed: CalculatorError: division by zero"


@pytest.mark.anyio
async def test_calculator_schema_limits_expression_length() -> None:
    executor = ToolExecutor(default_registry(test_tools=True))
    args = json.dumps({"expression": "1+" * 600 + "1"})
    outcome = await executor.execute("c1", "calculator", args)
    message = error_of(outcome, ToolErrorCode.INVALID_ARGUMENTS)
    assert message.startswith("arguments failed the schema at $.expression: ")


@pytest.mark.anyio
async def test_sleep_sleeps_and_reports() -> None:
    outcome = await ToolExecutor(default_registry(test_tools=True)).execute("c1", "sleep", '{"seconds": 0}')
    assert json.loads(outcome.result_json) == {"slept_s": 0}


def test_default_registry_contents() -> None:
    registry = default_registry(test_tools=True)
    assert registry.names() == ["calculator", "clock", "echo", "sleep"]
    for name in registry.names():
        spec = registry.get(name)
        assert spec is not None and spec.description
    sleep = registry.get("sleep")
    assert sleep is not None and sleep.timeout_s == 3600
    assert default_registry(test_tools=True) is not registry  # a new one each time


# -- error codes --


@pytest.mark.anyio
async def test_unknown_tool_lists_known_tools() -> None:
    outcome = await ToolExecutor(default_registry(test_tools=True)).execute("c1", "nope", "{}")
    message = error_of(outcome, ToolErrorCode.UNKNOWN_TOOL)
    assert message == "unknown tool 'nope'; known tools: calculator, clock, echo, sleep"
    assert outcome.execution_time_us == 0


@pytest.mark.anyio
async def test_invalid_json_reports_position() -> None:
    outcome = await ToolExecutor(default_registry(test_tools=True)).execute("c1", "echo", "{oops")
    message = error_of(outcome, ToolErrorCode.INVALID_ARGUMENTS)
    assert message.startswith("arguments_json is not valid JSON: ")
    assert "line 1 column 2" in message


@pytest.mark.anyio
async def test_invalid_json_at_start() -> None:
    outcome = await ToolExecutor(default_registry(test_tools=True)).execute("c1", "echo", "x")
    message = error_of(outcome, ToolErrorCode.INVALID_ARGUMENTS)
    assert message == "arguments_json is not valid JSON: Expecting value at line 1 column 1"


@pytest.mark.anyio
async def test_nan_is_not_json() -> None:
    outcome = await ToolExecutor(default_registry(test_tools=True)).execute("c1", "echo", '{"a": NaN}')
    assert "NaN" in error_of(outcome, ToolErrorCode.INVALID_ARGUMENTS)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("text", "kind"),
    [("[1, 2]", "list"), ('"s"', "str"), ("3", "int"), ("null", "null")],
)
async def test_non_object_arguments(text: str, kind: str) -> None:
    outcome = await ToolExecutor(default_registry(test_tools=True)).execute("c1", "echo", text)
    message = error_of(outcome, ToolErrorCode.INVALID_ARGUMENTS)
    assert message == f"arguments_json must be a JSON object, got {kind}"


@pytest.mark.anyio
async def test_schema_failure_names_path_and_reason() -> None:
    outcome = await ToolExecutor(default_registry(test_tools=True)).execute("c1", "sleep", '{"seconds": -1}')
    message = error_of(outcome, ToolErrorCode.INVALID_ARGUMENTS)
    assert message == "arguments failed the schema at $.seconds: -1 is less than the minimum of 0"


@pytest.mark.anyio
async def test_schema_failure_missing_required() -> None:
    outcome = await ToolExecutor(default_registry(test_tools=True)).execute("c1", "sleep", "{}")
    message = error_of(outcome, ToolErrorCode.INVALID_ARGUMENTS)
    assert message == "arguments failed the schema at $: 'seconds' is a required property"


@pytest.mark.anyio
async def test_timeout_with_requested_timeout_lower_than_tools() -> None:
    gate = Gate()
    executor = ToolExecutor(gated_registry(gate, timeout_s=10))
    outcome = await executor.execute("c1", "gate", "{}", timeout_s=0.05)
    assert error_of(outcome, ToolErrorCode.TIMEOUT) == "tool 'gate' timed out after 0.05 s"
    assert gate.saw_cancel.is_set()
    assert outcome.execution_time_us > 0


@pytest.mark.anyio
async def test_tools_own_timeout_applies_when_request_is_longer_or_absent() -> None:
    gate = Gate()
    executor = ToolExecutor(gated_registry(gate, timeout_s=0.05))
    for requested in (None, 0, 30.0):
        outcome = await executor.execute("c1", "gate", "{}", timeout_s=requested)
        assert error_of(outcome, ToolErrorCode.TIMEOUT) == "tool 'gate' timed out after 0.05 s"


@pytest.mark.anyio
async def test_sleep_is_bounded_by_the_calls_timeout() -> None:
    executor = ToolExecutor(default_registry(test_tools=True))
    outcome = await executor.execute("c1", "sleep", '{"seconds": 3600}', timeout_s=0.05)
    assert error_of(outcome, ToolErrorCode.TIMEOUT) == "tool 'sleep' timed out after 0.05 s"


@pytest.mark.anyio
async def test_tool_exception_becomes_failed() -> None:
    registry = ToolRegistry()

    @registry.tool()
    async def broken(args: dict[str, Any]) -> None:
        raise ValueError("bad input")

    outcome = await ToolExecutor(registry).execute("c1", "broken", "{}")
    assert error_of(outcome, ToolErrorCode.FAILED) == "tool 'broken' failed: ValueError: bad input"


@pytest.mark.anyio
async def test_non_serialisable_result_becomes_failed() -> None:
    registry = ToolRegistry()

    @registry.tool()
    async def weird(args: dict[str, Any]) -> object:
        return {"s": {1, 2}}

    outcome = await ToolExecutor(registry).execute("c1", "weird", "{}")
    message = error_of(outcome, ToolErrorCode.FAILED)
    assert message.startswith("tool 'weird' returned a value that is not JSON-serialisable: ")
    assert "set" in message


@pytest.mark.anyio
async def test_nan_result_becomes_failed() -> None:
    registry = ToolRegistry()

    @registry.tool()
    async def nan(args: dict[str, Any]) -> float:
        return float("nan")

    outcome = await ToolExecutor(registry).execute("c1", "nan", "{}")
    assert "not JSON-serialisable" in error_of(outcome, ToolErrorCode.FAILED)


@pytest.mark.anyio
async def test_result_too_large_counts_utf8_bytes() -> None:
    executor = ToolExecutor(default_registry(test_tools=True), max_result_bytes=20)
    ok = await executor.execute("c1", "echo", json.dumps({"a": "x" * 12}))  # 20 bytes
    assert not ok.is_error
    # 12 two-byte characters: 20 characters but 32 bytes.
    big = await executor.execute("c2", "echo", json.dumps({"a": "é" * 12}))
    message = error_of(big, ToolErrorCode.RESULT_TOO_LARGE)
    assert "32 bytes" in message and "20 bytes" in message


@pytest.mark.anyio
async def test_lone_surrogate_result_becomes_failed() -> None:
    outcome = await ToolExecutor(default_registry(test_tools=True)).execute("c1", "echo", '{"a": "\\ud800"}')
    assert "not valid Unicode" in error_of(outcome, ToolErrorCode.FAILED)


# -- concurrency and cancellation --


@pytest.mark.anyio
async def test_concurrency_limit_queues_the_second_call() -> None:
    first, second = Gate(), Gate()
    registry = ToolRegistry()
    gates = {"1": first, "2": second}

    @registry.tool(max_concurrency=1)
    async def gated(args: dict[str, Any]) -> dict[str, Any]:
        return await gates[args["n"]](args)

    spec = registry.get("gated")
    assert spec is not None
    executor = ToolExecutor(registry)
    outcomes: dict[str, ToolOutcome] = {}

    async def call(n: str) -> None:
        outcomes[n] = await executor.execute(n, "gated", json.dumps({"n": n}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "1")
        await first.entered.wait()
        tg.start_soon(call, "2")
        await wait_until_queued(spec, 1)
        assert not second.entered.is_set()  # held back by the limiter, not by chance
        first.opened.set()
        await second.entered.wait()
        assert "1" in outcomes and "2" not in outcomes
        second.opened.set()

    assert [outcomes[n].result_json for n in ("1", "2")] == ['{"gate":"passed"}'] * 2


@pytest.mark.anyio
async def test_timeout_covers_waiting_for_the_limiter() -> None:
    gate = Gate()
    registry = gated_registry(gate, max_concurrency=1)
    spec = registry.get("gate")
    assert spec is not None
    executor = ToolExecutor(registry)
    async with anyio.create_task_group() as tg:
        tg.start_soon(executor.execute, "c1", "gate", "{}")
        await gate.entered.wait()
        outcome = await executor.execute("c2", "gate", "{}", timeout_s=0.05)
        assert error_of(outcome, ToolErrorCode.TIMEOUT).endswith("timed out after 0.05 s")
        assert outcome.execution_time_us == 0  # never started
        assert gate.entries == 1
        gate.opened.set()
    assert spec.limiter.borrowed == 0


@pytest.mark.anyio
async def test_outer_cancellation_propagates_and_reaches_the_tool() -> None:
    gate = Gate()
    registry = gated_registry(gate)
    spec = registry.get("gate")
    assert spec is not None
    executor = ToolExecutor(registry)
    outcomes: list[ToolOutcome] = []
    propagated = anyio.Event()

    async def call() -> None:
        try:
            outcomes.append(await executor.execute("c1", "gate", "{}", timeout_s=5))
        except anyio.get_cancelled_exc_class():
            propagated.set()
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await gate.entered.wait()
        tg.cancel_scope.cancel()

    assert outcomes == []
    assert propagated.is_set()
    assert gate.saw_cancel.is_set()
    assert spec.limiter.borrowed == 0


@pytest.mark.anyio
async def test_tool_failure_does_not_leak_limiter_tokens() -> None:
    registry = ToolRegistry()

    @registry.tool(max_concurrency=1)
    async def broken(args: dict[str, Any]) -> None:
        raise RuntimeError

    executor = ToolExecutor(registry)
    for _ in range(3):
        outcome = await executor.execute("c1", "broken", "{}")
        assert error_of(outcome, ToolErrorCode.FAILED) == "tool 'broken' failed: RuntimeError"


# -- registry --


def test_decorator_defaults() -> None:
    registry = ToolRegistry()

    @registry.tool()
    async def weather(args: dict[str, Any]) -> dict[str, Any]:
        """Current weather for a city.

        More detail that is not part of the description.
        """
        return {}

    spec = registry.get("weather")
    assert spec is not None
    assert spec.func is weather
    assert spec.description == "Current weather for a city."
    assert dict(spec.schema) == {"type": "object"}
    assert spec.timeout_s == 10.0
    assert spec.max_concurrency == 64
    assert "weather" in registry and "other" not in registry
    assert registry.get("other") is None


def test_decorator_overrides() -> None:
    registry = ToolRegistry()
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }

    @registry.tool(
        "forecast",
        schema=schema,
        description="Explicit.",
        timeout_s=5,
        max_concurrency=2,
    )
    async def weather(args: dict[str, Any]) -> dict[str, Any]:
        """Ignored."""
        return {"city": args["city"]}

    spec = registry.get("forecast")
    assert spec is not None
    assert (spec.description, spec.timeout_s, spec.max_concurrency) == (
        "Explicit.",
        5,
        2,
    )
    assert spec.schema == schema
    assert registry.names() == ["forecast"]


def test_duplicate_name_rejected() -> None:
    registry = default_registry(test_tools=True)
    with pytest.raises(ValueError, match="'echo' is already registered"):

        @registry.tool()
        async def echo(args: dict[str, Any]) -> None:
            return None


def test_bad_schema_rejected() -> None:
    registry = ToolRegistry()
    with pytest.raises(ValueError, match=r"tool 'bad': invalid JSON schema at \$\.type"):

        @registry.tool("bad", schema={"type": "no-such-type"})
        async def bad(args: dict[str, Any]) -> None:
            return None

    assert "bad" not in registry


@pytest.mark.parametrize("timeout_s", [0, -1, float("nan")])
def test_bad_timeout_rejected(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s must be > 0"):

        @ToolRegistry().tool(timeout_s=timeout_s)
        async def t(args: dict[str, Any]) -> None:
            return None


@pytest.mark.parametrize("max_concurrency", [0, -3])
def test_bad_concurrency_rejected(max_concurrency: int) -> None:
    with pytest.raises(ValueError, match="max_concurrency must be an int >= 1"):

        @ToolRegistry().tool(max_concurrency=max_concurrency)
        async def t(args: dict[str, Any]) -> None:
            return None


def test_generator_functions_are_rejected() -> None:
    with pytest.raises(TypeError, match="must return a value, not be a generator"):

        @ToolRegistry().tool()
        async def agen(args: dict[str, Any]) -> Any:
            yield args


async def test_a_plain_function_tool_runs_inline_without_a_task_or_limit() -> None:
    registry = ToolRegistry()
    tasks_seen: list[object] = []

    @registry.tool(schema={"type": "object", "required": ["n"]}, max_concurrency=1)
    def double(args: dict[str, Any]) -> dict[str, Any]:
        tasks_seen.append(asyncio.current_task())
        return {"n": args["n"] * 2}

    spec = registry.get("double")
    assert spec is not None and spec.inline
    executor = ToolExecutor(registry)
    outcome = executor.prepare("c1", "double", '{"n": 21}')
    assert isinstance(outcome, ToolOutcome) and outcome.result_json == '{"n":42}'
    assert tasks_seen == [asyncio.current_task()]  # ran right here, in the caller's task
    assert spec.limiter.borrowed == 0  # no limiter for inline tools
    invalid = executor.prepare("c2", "double", "{}")
    assert isinstance(invalid, ToolOutcome) and invalid.error_code is ToolErrorCode.INVALID_ARGUMENTS


async def test_a_plain_function_tool_that_raises_is_a_failed_outcome() -> None:
    registry = ToolRegistry()

    @registry.tool()
    def broken(args: dict[str, Any]) -> None:
        raise ValueError("bad input shape")

    outcome = await ToolExecutor(registry).execute("c", "broken", "{}")
    assert outcome.error_code is ToolErrorCode.FAILED
    assert outcome.error_message == "tool 'broken' failed: ValueError: bad input shape"


async def test_a_plain_function_returning_an_awaitable_is_a_clear_failure() -> None:
    registry = ToolRegistry()

    async def real(args: dict[str, Any]) -> int:
        return 1

    registry.register(ToolSpec(name="wrapped", func=lambda args: real(args), schema={"type": "object"}))
    outcome = await ToolExecutor(registry).execute("c", "wrapped", "{}")
    assert outcome.error_code is ToolErrorCode.FAILED
    assert "plain function that returned an awaitable; declare it async" in outcome.error_message


async def test_an_async_tool_is_prepared_then_run() -> None:
    executor = ToolExecutor(default_registry(test_tools=True))
    prepared = executor.prepare("c", "sleep", '{"seconds": 0}', timeout_s=5)
    assert isinstance(prepared, PreparedCall) and prepared.timeout_s == 5
    outcome = await executor.run(prepared)
    assert outcome.result_json == '{"slept_s":0}'


def test_a_schema_that_accepts_any_object_skips_the_validator() -> None:
    registry = ToolRegistry()

    @registry.tool(schema={"type": "object", "description": "anything"})
    def anything(args: dict[str, Any]) -> None:
        return None

    @registry.tool(schema={"type": "object", "required": ["x"]})
    def needs_x(args: dict[str, Any]) -> None:
        return None

    loose, strict = registry.get("anything"), registry.get("needs_x")
    assert loose is not None and loose.validator is None
    assert strict is not None and strict.validator is not None


def test_copy_is_independent() -> None:
    original = default_registry(test_tools=True)
    copy = original.copy()

    @copy.tool()
    async def extra(args: dict[str, Any]) -> None:
        return None

    assert "extra" in copy and "extra" not in original
    assert original.names() == ["calculator", "clock", "echo", "sleep"]
    assert copy.get("echo") is original.get("echo")  # specs (and their limiters) shared


def test_outcome_helpers() -> None:
    ok = ToolOutcome("c1", "echo", result_json="{}")
    assert not ok.is_error
    bad = ToolOutcome.failure("c1", "echo", ToolErrorCode.CANCELLED, "stopped", 7)
    assert bad.is_error and bad.error_code is ToolErrorCode.CANCELLED
    assert (bad.error_message, bad.execution_time_us) == ("stopped", 7)
    assert {code.value for code in ToolErrorCode} == {
        "unknown_tool",
        "invalid_arguments",
        "timeout",
        "failed",
        "cancelled",
        "result_too_large",
        "denied",
    }


def test_tools_modules_may_name_a_registry_a_spec_or_a_function(tmp_path: Any, monkeypatch: Any) -> None:
    from dispatcher.tools import ToolLoadError, served_tools

    (tmp_path / "mixed_tools.py").write_text(
        "from dispatcher.tools import ToolRegistry, ToolSpec\n"
        "registry = ToolRegistry()\n"
        "@registry.tool()\ndef one(args): return 1\n"
        "two = ToolSpec(name='two', func=lambda args: 2, schema={'type': 'object'})\n"
        "async def three(args):\n    '''Three, from a plain function.'''\n    return 3\n"
    )
    monkeypatch.chdir(tmp_path)
    registry = served_tools(["mixed_tools:registry", "mixed_tools:two", "mixed_tools:three"], test_tools=False)
    assert {"one", "two", "three", "echo"} <= set(registry.names()) and "sleep" not in registry
    three = registry.get("three")
    assert three is not None and three.description == "Three, from a plain function." and not three.inline
    with pytest.raises(ToolLoadError, match="'one' is already registered"):
        served_tools(["mixed_tools:registry", "mixed_tools:registry"], test_tools=False)
