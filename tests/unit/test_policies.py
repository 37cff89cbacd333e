"""The block-list and budgets, driven through PolicyTracker directly."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from dispatcher.config import PolicyConfig
from dispatcher.core.policies import Policy, PolicyTracker, Violation
from shared.model import StopCode

pytestmark = pytest.mark.timeout(10)


def tracker(**fields: Any) -> PolicyTracker:
    return Policy(PolicyConfig(**fields)).tracker()


def assert_blocked(violation: Violation | None, pattern: str, where: str = "content") -> None:
    assert violation is not None, "expected a block-list violation"
    assert violation.code is StopCode.POLICY_VIOLATION
    assert violation.origin == "policy:content_blocklist"
    assert violation.reason == f"{where} matched a blocked pattern"
    assert violation.cause == "policy=content_blocklist"  # the rule itself is never told to the peer
    assert violation.detail == f"pattern={pattern!r}"


# -- block-list -------------------------------------------------------------------------


def test_no_patterns_means_no_blocklist() -> None:
    policy = Policy(PolicyConfig())
    assert policy.blocklist is None
    t = policy.tracker()
    assert t.on_content("anything at all, even forbidden words") is None


def test_plain_pattern_matches_content() -> None:
    t = tracker(block_patterns=("forbidden",))
    assert t.on_content("all good") is None
    assert_blocked(t.on_content("that is forbidden"), "forbidden")


def test_global_flag_pattern_combined_with_others_keeps_flags_scoped() -> None:
    patterns = ("(?i)secret", "Token", r"(?is)begin.end")
    policy = Policy(PolicyConfig(block_patterns=patterns))
    assert policy.blocklist is not None  # the union compiles despite the leading global flags
    assert_blocked(policy.tracker().on_content("the SeCrEt plan"), "(?i)secret")
    assert policy.tracker().on_content("a token, lower case") is None  # (?i) of the first pattern does not leak
    assert_blocked(policy.tracker().on_content("a Token"), "Token")
    assert_blocked(policy.tracker().on_content("BEGIN\nEND"), r"(?is)begin.end")


def test_global_flag_pattern_not_first_in_list() -> None:
    t = tracker(block_patterns=("alpha", "(?i)beta"))
    assert_blocked(t.on_content("BETA"), "(?i)beta")


def test_match_split_across_deltas() -> None:
    t = tracker(block_patterns=("forbidden phrase",))
    assert t.on_content("this is a forbid") is None
    assert t.on_content("den ph") is None
    assert_blocked(t.on_content("rase!"), "forbidden phrase")


def test_tail_is_bounded_over_many_deltas() -> None:
    t = tracker(block_patterns=("forbidden",))
    for _ in range(5_000):
        assert t.on_content("harmless text " * 10) is None
    assert len(t._content_tail) <= 256
    assert t.content_chars == 5_000 * 140
    # ...and still catches a phrase split across the last two deltas.
    assert t.on_content("and now forbi") is None
    assert_blocked(t.on_content("dden"), "forbidden")


def test_thought_tail_is_bounded_over_many_deltas() -> None:
    t = tracker(block_patterns=("forbidden",), scan_thoughts=True)
    for _ in range(5_000):
        assert t.on_thought("harmless thinking " * 10) is None
    assert len(t._thought_tail) <= 256


def test_content_and_thought_tails_are_separate() -> None:
    t = tracker(block_patterns=("forbidden",), scan_thoughts=True)
    assert t.on_content("forbi") is None
    assert t.on_thought("dden") is None  # half in content, half in thought: not one phrase


def test_scan_thoughts_off_ignores_thoughts() -> None:
    t = tracker(block_patterns=("forbidden",), scan_thoughts=False)
    assert t.on_thought("a forbidden thought") is None
    assert t.thought_chars == len("a forbidden thought")
    assert_blocked(t.on_content("forbidden content"), "forbidden")


def test_scan_thoughts_on_blocks_thoughts() -> None:
    t = tracker(block_patterns=("forbidden",), scan_thoughts=True)
    assert_blocked(t.on_thought("a forbidden thought"), "forbidden", where="thought")


def test_scan_thoughts_on_catches_split_thought() -> None:
    t = tracker(block_patterns=("forbidden",), scan_thoughts=True)
    assert t.on_thought("forb") is None
    assert_blocked(t.on_thought("idden"), "forbidden", where="thought")


# -- budgets ----------------------------------------------------------------------------


def test_content_budget_exact_boundary() -> None:
    t = tracker(max_content_chars=10)
    assert t.on_content("12345") is None
    assert t.on_content("67890") is None  # exactly the limit: fine
    assert t.on_content("") is None
    violation = t.on_content("!")
    assert violation == Violation(
        code=StopCode.BUDGET_EXCEEDED,
        reason="content chars budget exceeded",
        cause="budget=content_chars limit=10 used=11",
        origin="budget:content_chars",
    )


def test_thought_budget_exact_boundary() -> None:
    t = tracker(max_thought_chars=3)
    assert t.on_thought("abc") is None
    violation = t.on_thought("d")
    assert violation is not None
    assert violation.code is StopCode.BUDGET_EXCEEDED
    assert violation.cause == "budget=thought_chars limit=3 used=4"
    assert violation.origin == "budget:thought_chars"


def test_tool_call_budget_exact_boundary() -> None:
    t = tracker(max_tool_calls=2)
    assert t.on_tool_call() is None
    assert t.on_tool_call() is None
    violation = t.on_tool_call()
    assert violation is not None
    assert violation.code is StopCode.BUDGET_EXCEEDED
    assert violation.cause == "budget=tool_calls limit=2 used=3"
    assert violation.origin == "budget:tool_calls"


def test_zero_budgets_mean_unlimited() -> None:
    t = tracker(max_content_chars=0, max_thought_chars=0, max_tool_calls=0)
    for _ in range(100):
        assert t.on_content("x" * 1_000) is None
        assert t.on_thought("y" * 1_000) is None
        assert t.on_tool_call() is None


def test_trackers_of_one_policy_count_separately() -> None:
    policy = Policy(PolicyConfig(max_content_chars=5))
    a, b = policy.tracker(), policy.tracker()
    assert a.on_content("12345") is None
    assert b.on_content("12345") is None
    assert a.on_content("6") is not None
    assert b.content_chars == 5


# -- configuration ----------------------------------------------------------------------


def test_invalid_regex_rejected_by_policy_config() -> None:
    with pytest.raises(ValueError, match=r"block pattern '\(unclosed' is not a valid regular expression"):
        PolicyConfig(block_patterns=("fine", "(unclosed"))


@pytest.mark.parametrize("name", ["max_content_chars", "max_thought_chars", "max_tool_calls", "idle_timeout_s"])
def test_negative_limits_rejected_by_policy_config(name: str) -> None:
    with pytest.raises(ValueError, match=f"policy {name} must be >= 0"):
        PolicyConfig(**{name: -1})


@pytest.mark.parametrize(
    "patterns",
    [("(?P<w>foo)", "(?P<w>bar)"), ("(?a)foo",), ("(?x)foo # a comment", "bar")],
    ids=["duplicate-group-name", "ascii-flag", "verbose-comment"],
)
def test_patterns_accepted_by_config_compile_into_a_policy(patterns: tuple[str, ...]) -> None:
    try:
        config = PolicyConfig(block_patterns=patterns)
    except ValueError:
        return  # refused up front with a clear message: acceptable
    Policy(config)  # must not raise re.error at start-up


def test_backreference_in_second_pattern_still_matches() -> None:
    t = tracker(block_patterns=("(x)y", r"(a)\1"))
    assert_blocked(t.on_content("aa"), r"(a)\1")


@pytest.mark.parametrize("pattern", [r"\bab\b", "abc", "a[bc]{1,3}d", "(?i)xy z", r"\d{2,4}!"])
def test_delta_by_delta_finds_exactly_what_a_search_of_the_whole_text_finds(pattern: str) -> None:
    """Random texts cut into random deltas (seeded): the kept tail never misses a match and
    never invents one. Streaming semantics: a delta is judged on the text so far, so `\b` at
    its end counts as a boundary even if the next delta continues the word."""
    rng = random.Random(pattern)
    compiled = re.compile(pattern)
    for _ in range(300):
        text = "".join(rng.choice("abcdxyz Z12345!") for _ in range(rng.randint(1, 40)))
        t = tracker(block_patterns=(pattern,))
        found = expected = False
        cut = 0
        while cut < len(text) and not found:
            step = rng.randint(1, 5)
            found = t.on_content(text[cut : cut + step]) is not None
            cut += step
            expected = expected or compiled.search(text[:cut]) is not None
        assert found == expected, f"{pattern!r} on {text!r}"
