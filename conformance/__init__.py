"""The contract conformance kit: grades any server claiming to implement AgentInteraction.

    python -m conformance --target HOST:PORT [--junit-xml out.xml] [--expected-failures FILE]

It dials the target over the wire only (the generated stubs, no import of the dispatcher),
runs `conformance/suite` under pytest with `conformance.plugin`, prints a table of every
requirement (id, level, outcome, sentence) and exits non-zero when a MUST requirement fails.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "1.0.0"
