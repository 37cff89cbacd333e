"""Stop policies evaluated on the packet stream: a content block-list and budgets.

Per packet the work is O(len(delta)): counters, and a regex scan over the new text plus
a short tail of the previous text (so a blocked phrase split across two deltas is still
caught). Time-based limits (wall clock, idle) live in the session's timer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dispatcher.config import PolicyConfig
from shared.model import StopCode

__all__ = ["Policy", "PolicyTracker", "Violation"]

# A blocked phrase split across deltas is caught if it is at most this long.
_MAX_TAIL_CHARS = 256
_GLOBAL_FLAGS = re.compile(r"\(\?([imsx]+)\)")


@dataclass(frozen=True, slots=True)
class Violation:
    """A policy decided to stop the session."""

    code: StopCode
    reason: str
    cause: str
    origin: str  # first hop of the stop path, e.g. "policy:content_blocklist"


class Policy:
    """The compiled, shared part of the policies (one per dispatcher)."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.blocklist: re.Pattern[str] | None = (
            re.compile("|".join(_scoped(p) for p in config.block_patterns)) if config.block_patterns else None
        )

    def tracker(self) -> PolicyTracker:
        return PolicyTracker(self)


class PolicyTracker:
    """One session's counters and block-list tails."""

    __slots__ = (
        "_blocklist",
        "_config",
        "_content_tail",
        "_thought_tail",
        "content_chars",
        "thought_chars",
        "tool_calls",
    )

    def __init__(self, policy: Policy) -> None:
        self._config = policy.config
        self._blocklist = policy.blocklist
        self.content_chars = 0
        self.thought_chars = 0
        self.tool_calls = 0
        self._content_tail = ""
        self._thought_tail = ""

    def on_content(self, text: str) -> Violation | None:
        self.content_chars += len(text)
        limit = self._config.max_content_chars
        if self._blocklist is not None and text:
            window = self._content_tail + text
            match = self._blocklist.search(window)
            if match is not None:
                return self._blocked("content", match)
            self._content_tail = window[-_MAX_TAIL_CHARS:]
        if limit and self.content_chars > limit:
            return _budget("content_chars", limit, self.content_chars)
        return None

    def on_thought(self, delta: str) -> Violation | None:
        self.thought_chars += len(delta)
        limit = self._config.max_thought_chars
        if self._blocklist is not None and self._config.scan_thoughts and delta:
            window = self._thought_tail + delta
            match = self._blocklist.search(window)
            if match is not None:
                return self._blocked("thought", match)
            self._thought_tail = window[-_MAX_TAIL_CHARS:]
        if limit and self.thought_chars > limit:
            return _budget("thought_chars", limit, self.thought_chars)
        return None

    def on_tool_call(self) -> Violation | None:
        self.tool_calls += 1
        limit = self._config.max_tool_calls
        if limit and self.tool_calls > limit:
            return _budget("tool_calls", limit, self.tool_calls)
        return None

    def _blocked(self, where: str, match: re.Match[str]) -> Violation:
        pattern = next((p for p in self._config.block_patterns if re.search(p, match.group(0))), match.re.pattern)
        return Violation(
            code=StopCode.POLICY_VIOLATION,
            reason=f"{where} matched a blocked pattern",
            cause=f"policy=content_blocklist pattern={pattern!r}",
            origin="policy:content_blocklist",
        )


def _scoped(pattern: str) -> str:
    """`(?i)word` -> `(?i:word)`: global flags are only legal at the start of the whole union."""
    match = _GLOBAL_FLAGS.match(pattern)
    if match:
        return f"(?{match.group(1)}:{pattern[match.end() :]})"
    return f"(?:{pattern})"


def _budget(name: str, limit: int, used: int) -> Violation:
    return Violation(
        code=StopCode.BUDGET_EXCEEDED,
        reason=f"{name.replace('_', ' ')} budget exceeded",
        cause=f"budget={name} limit={limit} used={used}",
        origin=f"budget:{name}",
    )
