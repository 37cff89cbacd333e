"""The tool catalog as commanders see it: the Welcome's `tools` and the control API's ListTools.

Built from the registry and rebuilt only when the registry changes (an MCP server's tools come
and go), so a handshake costs a list copy, not a JSON dump of every schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from dispatcher.tools.registry import ToolRegistry
from shared import wire

__all__ = ["ToolCatalog"]


class ToolCatalog:
    """Name, description and argument schema of every tool a registry serves, in wire form."""

    __slots__ = ("_built", "_registry", "_specs")

    def __init__(self, registry: ToolRegistry) -> None:
        self._registry = registry
        self._built = -1  # the registry version `_specs` was built from
        self._specs: tuple[wire.pb.ToolSpec, ...] = ()

    def specs(self, allowed: frozenset[str] | None = None) -> Sequence[wire.pb.ToolSpec]:
        """Every tool served, sorted by name; with `allowed`, only those named there."""
        if self._built != self._registry.version:
            self._specs = tuple(
                wire.pb.ToolSpec(
                    name=spec.name,
                    description=spec.description,
                    parameters_json_schema=json.dumps(dict(spec.schema), separators=(",", ":"), sort_keys=True),
                    requires_approval=spec.name in self._registry.approval,
                )
                for spec in self._registry.specs()
            )
            self._built = self._registry.version
        if allowed is None:
            return self._specs
        return tuple(spec for spec in self._specs if spec.name in allowed)

    def unknown(self, names: Iterable[str]) -> list[str]:
        """The names among `names` that no tool has."""
        return sorted({name for name in names if name not in self._registry})
