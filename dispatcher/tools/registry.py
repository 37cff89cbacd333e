"""Tool specifications and the registry that names them.

Everything expensive about a tool (schema check, validator compilation, its concurrency
limiter) happens once, when it is registered, so the per-call path only looks things up.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, TypeVar

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

__all__ = ["CallLimiter", "ToolFunc", "ToolRegistry", "ToolSpec"]

ToolFunc = Callable[[dict[str, Any]], Awaitable[Any]] | Callable[[dict[str, Any]], Any]
"""A function of the validated arguments object returning a JSON value: `async def` for a tool
that waits on anything (its own task, timeout and concurrency limit), a plain `def` for a
CPU-only one that finishes in microseconds (run inline in the session's task; see ToolSpec)."""

_F = TypeVar("_F", bound=ToolFunc)


# Keywords that describe a schema without constraining what it accepts.
_ANNOTATION_KEYWORDS = frozenset({"type", "$schema", "$id", "title", "description", "examples", "$comment"})


class CallLimiter:
    """At most `total` calls of one tool at a time; `async with` it around a call.

    An asyncio.Semaphore underneath: it takes a free slot without yielding to the loop
    (anyio's CapacityLimiter yields on every acquire, ~7 µs per call), and it binds to the
    running loop only when a caller first has to wait, so it can be built outside one.
    """

    __slots__ = ("_semaphore", "borrowed", "waiting")

    def __init__(self, total: int) -> None:
        self.borrowed = 0  # calls holding a slot
        self.waiting = 0  # calls queued for one
        self._semaphore = asyncio.Semaphore(total)

    async def __aenter__(self) -> None:
        if self._semaphore.locked():
            self.waiting += 1
            try:
                await self._semaphore.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._semaphore.acquire()
        self.borrowed += 1

    async def __aexit__(self, *_exc: object) -> None:
        self.borrowed -= 1
        self._semaphore.release()


@dataclass(frozen=True, slots=True, eq=False)
class ToolSpec:
    """One tool and its limits; validated and compiled on construction.

    An `inline` tool (a plain function) runs to completion inside the session's task when
    its call arrives: no task, no timeout and no concurrency limit, which would cost more
    than a CPU-only tool itself (~25 µs a call) and could not interrupt it anyway: nothing
    interrupts Python code that never awaits. `timeout_s` and `max_concurrency` apply to
    async tools only.

    `requires_approval`: every call waits for a human decision (`DecideToolCall`) before it
    runs, in a task of its own even when the tool is inline (`dispatcher serve --approve`
    adds tools by name pattern; see `needs_approval`).

    `eq=False`: a spec owns a limiter, so equality is identity.
    """

    name: str
    func: ToolFunc
    schema: Mapping[str, Any]
    description: str = ""
    timeout_s: float = 10.0
    max_concurrency: int = 64
    requires_approval: bool = False
    # None when the schema accepts every JSON object (the executor checks for an object
    # anyway): validating `{"type": "object"}` would cost a call ~1.5 µs for nothing.
    validator: Draft202012Validator | None = field(init=False, repr=False)
    # Process-wide: every session calling this tool draws from the same limiter.
    limiter: CallLimiter = field(init=False, repr=False)
    inline: bool = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip():
            raise ValueError(f"tool name must be non-empty without edge spaces: {self.name!r}")
        if not callable(self.func):
            raise TypeError(f"tool {self.name!r}: func must be callable")
        # `not x > 0` also rejects NaN.
        if isinstance(self.timeout_s, bool) or not self.timeout_s > 0:
            raise ValueError(f"tool {self.name!r}: timeout_s must be > 0, got {self.timeout_s!r}")
        if (
            isinstance(self.max_concurrency, bool)
            or not isinstance(self.max_concurrency, int)
            or self.max_concurrency < 1
        ):
            raise ValueError(f"tool {self.name!r}: max_concurrency must be an int >= 1, got {self.max_concurrency!r}")
        if not isinstance(self.schema, Mapping):
            raise ValueError(f"tool {self.name!r}: schema must be a JSON object (mapping)")
        try:
            Draft202012Validator.check_schema(self.schema)
        except SchemaError as exc:
            path = exc.json_path if exc.path else "$"
            raise ValueError(f"tool {self.name!r}: invalid JSON schema at {path}: {exc.message}") from exc
        accepts_any_object = self.schema.get("type") == "object" and set(self.schema) <= _ANNOTATION_KEYWORDS
        object.__setattr__(self, "validator", None if accepts_any_object else Draft202012Validator(self.schema))
        object.__setattr__(self, "limiter", CallLimiter(self.max_concurrency))
        is_async = inspect.iscoroutinefunction(self.func) or inspect.iscoroutinefunction(
            type(self.func).__call__  # an object with `async def __call__`
        )
        object.__setattr__(self, "inline", not is_async)


def _first_doc_line(func: Callable[..., Any]) -> str:
    for line in (inspect.getdoc(func) or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


class ToolRegistry:
    """Name -> ToolSpec. Not thread-safe; fill it at start-up, then only read it, except through
    `replace_prefix` (an MCP server's tools, swapped whole on the event loop's thread)."""

    __slots__ = ("_patterns", "_specs", "approval", "version")

    def __init__(self) -> None:
        self._specs: dict[str, ToolSpec] = {}
        self._patterns: tuple[str, ...] = ()
        # The names of the tools whose calls wait for a human decision, kept current as tools
        # come and go (an MCP server's list changes): the executor probes it per call.
        self.approval: frozenset[str] = frozenset()
        self.version = 0  # bumped on every change: the tool catalog rebuilds its wire form on it

    def tool(
        self,
        name: str | None = None,
        *,
        schema: Mapping[str, Any] | None = None,
        description: str = "",
        timeout_s: float = 10.0,
        max_concurrency: int = 64,
        requires_approval: bool = False,
    ) -> Callable[[_F], _F]:
        """Decorator registering a function as a tool; returns it unchanged. An `async def`
        tool gets its own task, timeout and limit; a plain `def` is run inline (ToolSpec).

        Defaults: name = the function's `__name__`, description = its docstring's first
        line, schema = any JSON object.
        """

        def decorate(func: _F) -> _F:
            if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
                label = name or getattr(func, "__name__", repr(func))
                raise TypeError(f"tool {label!r} must return a value, not be a generator")
            self.register(
                ToolSpec(
                    name=name if name is not None else func.__name__,
                    func=func,
                    schema=schema if schema is not None else {"type": "object"},
                    description=description or _first_doc_line(func),
                    timeout_s=timeout_s,
                    max_concurrency=max_concurrency,
                    requires_approval=requires_approval,
                )
            )
            return func

        return decorate

    def register(self, spec: ToolSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"tool {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        self._mark_approval()

    def replace_prefix(self, prefix: str, specs: Iterable[ToolSpec]) -> None:
        """Make `specs` the only tools named `PREFIX.*`, in one step: a call looked up before
        sees the old set, one after sees the new (the executor reads the registry per call)."""
        head = prefix + "."
        kept = {name: spec for name, spec in self._specs.items() if not name.startswith(head)}
        for spec in specs:
            if not spec.name.startswith(head):
                raise ValueError(f"tool {spec.name!r} is not under the prefix {prefix!r}")
            if spec.name in kept:
                raise ValueError(f"tool {spec.name!r} is already registered")
            kept[spec.name] = spec
        self._specs = kept
        self._mark_approval()

    def get(self, name: str) -> ToolSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def copy(self) -> ToolRegistry:
        """An independent registry sharing these specs (and so their limiters)."""
        other = ToolRegistry()
        other._specs = dict(self._specs)
        return other

    def approve_matching(self, patterns: Iterable[str]) -> None:
        """From now on, calls of tools whose name matches one of `patterns` (fnmatch, case-
        sensitive, as `--approve` gives them) wait for a human decision too, whenever they
        were registered; so do those registered with `requires_approval=True`."""
        self._patterns = tuple(patterns)
        self._mark_approval()

    def specs(self) -> list[ToolSpec]:
        """Every tool, sorted by name."""
        return [self._specs[name] for name in sorted(self._specs)]

    def _mark_approval(self) -> None:
        self.version += 1  # called on every change of the specs or the approval patterns
        patterns = self._patterns
        self.approval = frozenset(
            name
            for name, spec in self._specs.items()
            if spec.requires_approval or any(fnmatchcase(name, pattern) for pattern in patterns)
        )

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)
