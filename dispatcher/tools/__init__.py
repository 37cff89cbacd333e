"""Tools: the registry, the executor of one tool call, and the built-in tools.

Domain types only (no grpc, no protobuf): the servicer puts `ToolOutcome` on the wire.
"""

from __future__ import annotations

from dispatcher.tools.builtin import default_registry
from dispatcher.tools.calculator import CalculatorError, evaluate
from dispatcher.tools.executor import PreparedCall, ToolErrorCode, ToolExecutor, ToolOutcome
from dispatcher.tools.loading import ToolLoadError, load_tools, served_tools
from dispatcher.tools.registry import ToolFunc, ToolRegistry, ToolSpec

__all__ = [
    "CalculatorError",
    "PreparedCall",
    "ToolErrorCode",
    "ToolExecutor",
    "ToolFunc",
    "ToolLoadError",
    "ToolOutcome",
    "ToolRegistry",
    "ToolSpec",
    "default_registry",
    "evaluate",
    "load_tools",
    "served_tools",
]
