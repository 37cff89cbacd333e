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

__all__ = ["Blocklist", "Policy", "PolicyTracker", "Violation", "compile_blocklist"]

# A blocked phrase split across deltas is caught if it is at most this long. The whole tail
# is rescanned on every delta, so this bounds the per-packet cost too (~3 µs at 128 here).
_MAX_TAIL_CHARS = 128
_GLOBAL_FLAGS = re.compile(r"\(\?([aiLmsux]+)\)")
_GROUP_REFERENCES = re.compile(r"\\[1-9]|\(\?P[=<]|\(\?\(")


@dataclass(frozen=True, slots=True)
class Violation:
    """A policy decided to stop the session."""

    code: StopCode
    reason: str
    cause: str  # goes to the commander in the StopSignal: names the policy, never its rule
    origin: str  # first hop of the stop path, e.g. "policy:content_blocklist"
    detail: str = ""  # for operators only (log, outcome): e.g. the pattern that matched


class Blocklist:
    """Several patterns searched as one regex when that is equivalent, else one by one."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        self._each = [re.compile(p) for p in patterns]
        self._union: re.Pattern[str] | None = None
        # A union renumbers groups and rejects repeated group names: patterns that refer to
        # their own groups are searched one by one instead.
        if not any(_GROUP_REFERENCES.search(p) for p in patterns):
            try:
                self._union = re.compile("|".join(_scoped(p) for p in patterns))
            except re.error:
                self._union = None

    def search(self, text: str) -> str | None:
        """The first pattern that matches `text`, or None."""
        if self._union is not None and self._union.search(text) is None:
            return None
        for pattern, compiled in zip(self.patterns, self._each, strict=True):
            if compiled.search(text) is not None:
                return pattern
        return None


def compile_blocklist(patterns: tuple[str, ...]) -> Blocklist | None:
    return Blocklist(patterns) if patterns else None


class Policy:
    """The compiled, shared part of the policies (one per dispatcher)."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.blocklist = compile_blocklist(config.block_patterns)

    def tracker(self) -> PolicyTracker:
        return PolicyTracker(self)


class PolicyTracker:
    """One session's counters and block-list tails."""

    __slots__ = (
        "_blocklist",
        "_config",
        "_content_tail",
        "_thought_tail",
        "completion_tokens",
        "content_chars",
        "prompt_tokens",
        "thought_chars",
        "tool_calls",
    )

    def __init__(self, policy: Policy) -> None:
        self._config = policy.config
        self._blocklist = policy.blocklist
        self.content_chars = 0
        self.thought_chars = 0
        self.tool_calls = 0
        self.prompt_tokens = 0  # the commander's Usage reports, summed
        self.completion_tokens = 0
        self._content_tail = ""
        self._thought_tail = ""

    def on_content(self, text: str) -> Violation | None:
        self.content_chars += len(text)
        if self._blocklist is not None and text:
            window = self._content_tail + text
            pattern = self._blocklist.search(window)
            if pattern is not None:
                return _blocked("content", pattern)
            self._content_tail = window[-_MAX_TAIL_CHARS:]
        limit = self._config.max_content_chars
        if limit and self.content_chars > limit:
            return _budget("content_chars", limit, self.content_chars)
        return None

    def on_thought(self, delta: str) -> Violation | None:
        self.thought_chars += len(delta)
        if self._blocklist is not None and self._config.scan_thoughts and delta:
            window = self._thought_tail + delta
            pattern = self._blocklist.search(window)
            if pattern is not None:
                return _blocked("thought", pattern)
            self._thought_tail = window[-_MAX_TAIL_CHARS:]
        limit = self._config.max_thought_chars
        if limit and self.thought_chars > limit:
            return _budget("thought_chars", limit, self.thought_chars)
        return None

    def on_tool_call(self) -> Violation | None:
        self.tool_calls += 1
        limit = self._config.max_tool_calls
        if limit and self.tool_calls > limit:
            return _budget("tool_calls", limit, self.tool_calls)
        return None

    def on_usage(self, prompt_tokens: int, completion_tokens: int) -> Violation | None:
        """One model request's usage: the token budgets apply to the session's sums."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        limit = self._config.max_completion_tokens
        if limit and self.completion_tokens > limit:
            return _budget("completion_tokens", limit, self.completion_tokens)
        limit = self._config.max_total_tokens
        total = self.prompt_tokens + self.completion_tokens
        if limit and total > limit:
            return _budget("total_tokens", limit, total)
        return None


def _scoped(pattern: str) -> str:
    """`(?i)word` -> `(?i:word)`: global flags are legal only at the start of the whole union.
    With `x`, a newline ends a trailing comment before the group closes."""
    match = _GLOBAL_FLAGS.match(pattern)
    if match is None:
        return f"(?:{pattern})"
    flags, body = match.group(1), pattern[match.end() :]
    if "L" in flags or "u" in flags or "a" in flags:
        raise re.error("locale/unicode/ascii flags cannot be scoped")  # caller falls back to one by one
    return f"(?{flags}:{body}\n)" if "x" in flags else f"(?{flags}:{body})"


def _blocked(where: str, pattern: str) -> Violation:
    return Violation(
        code=StopCode.POLICY_VIOLATION,
        reason=f"{where} matched a blocked pattern",
        # The pattern is the operator's rule: telling the peer which one matched would teach
        # it how to get around the block-list. Operators see it in the outcome and the log.
        cause="policy=content_blocklist",
        origin="policy:content_blocklist",
        detail=f"pattern={pattern!r}",
    )


def _budget(name: str, limit: int, used: int) -> Violation:
    return Violation(
        code=StopCode.BUDGET_EXCEEDED,
        reason=f"{name.replace('_', ' ')} budget exceeded",
        cause=f"budget={name} limit={limit} used={used}",
        origin=f"budget:{name}",
    )
