"""The conformance tests: each grades one requirement of `conformance.requirements` over the wire."""

from __future__ import annotations

__all__: list[str] = []
