"""The user's own tools, named on the command line: `--tools package.module:name`.

`name` is a `ToolRegistry` (all its tools are served), a `ToolSpec`, or a function (served
under its own name, with the schema and limits that `ToolRegistry.tool` would give it; a
function decorated with a registry's `@tool` is better named through that registry). Every
way this can go wrong (a malformed name, an import error, a missing attribute, something
that is not a tool, a tool name served twice, an invalid schema) is one `ToolLoadError`
naming the `--tools` value: `dispatcher serve` prints it on one line and exits 2.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Iterable

from dispatcher.tools.builtin import default_registry
from dispatcher.tools.registry import ToolRegistry, ToolSpec
from shared.errors import describe_exception

__all__ = ["ToolLoadError", "load_tools", "served_tools"]


class ToolLoadError(ValueError):
    """A `--tools` value does not name tools this process can serve: the operator's to fix."""


def served_tools(modules: Iterable[str], *, test_tools: bool) -> ToolRegistry:
    """What `dispatcher serve` serves: the built-ins, then the tools `modules` name."""
    registry = default_registry(test_tools=test_tools)
    load_tools(modules, registry)
    return registry


def load_tools(names: Iterable[str], into: ToolRegistry) -> None:
    """Add the tools each `package.module:name` names to `into` (which keeps what it has)."""
    for name in names:
        for spec in _specs_of(name):
            try:
                into.register(spec)
            except ValueError as exc:
                raise ToolLoadError(f"--tools {name!r}: {exc}") from None


def _specs_of(name: str) -> list[ToolSpec]:
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ToolLoadError(f"--tools {name!r}: expected PACKAGE.MODULE:NAME (e.g. my_tools:registry)")
    # The current directory is importable, as for `python -m` (and uvicorn's --app-dir): a
    # console script's sys.path does not have it, and `--tools my_tools:tools` next to
    # my_tools.py is what a user types first.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the module's own error, whatever it is, belongs in the message
        raise ToolLoadError(f"--tools {name!r}: cannot import {module_name}: {describe_exception(exc)}") from None
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise ToolLoadError(f"--tools {name!r}: module {module_name} has no attribute {attribute!r}") from None
    if isinstance(value, ToolRegistry):
        return [spec for tool in value.names() if (spec := value.get(tool)) is not None]
    if isinstance(value, ToolSpec):
        return [value]
    if callable(value) and not inspect.isclass(value):
        staging = ToolRegistry()
        try:
            staging.tool()(value)
        except (TypeError, ValueError) as exc:
            raise ToolLoadError(f"--tools {name!r}: {exc}") from None
        return [spec for tool in staging.names() if (spec := staging.get(tool)) is not None]
    kind = type(value).__name__
    raise ToolLoadError(f"--tools {name!r}: {attribute} is a {kind}, not a ToolRegistry, ToolSpec or function")
