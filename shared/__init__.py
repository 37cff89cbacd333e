"""Code both processes share: the wire contract, domain types, errors, config and logging."""

from __future__ import annotations

__all__: list[str] = []
