"""From test outcomes to requirement outcomes, the verdict, and the summary table (no pytest here)."""

from __future__ import annotations

import enum
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from conformance.requirements import AREAS, REQUIREMENTS, Level, Requirement

__all__ = ["Outcome", "RequirementResult", "TestOutcome", "Verdict", "aggregate", "counts", "format_table", "judge"]


class Outcome(enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    XFAIL = "XFAIL"  # failed, and listed in the expected-failures file
    XPASS = "XPASS"  # listed in the expected-failures file, yet passed: fails the run
    SKIP = "SKIP"


@dataclass(frozen=True, slots=True)
class TestOutcome:
    """One test's result: passed, failed, xfailed (a listed requirement's failure) or skipped."""

    req_id: str
    result: str
    message: str = ""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True, slots=True)
class RequirementResult:
    requirement: Requirement
    outcome: Outcome
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    problems: tuple[str, ...]


def aggregate(outcomes: Iterable[TestOutcome], expected: Mapping[str, str]) -> list[RequirementResult]:
    """Per requirement (registry order): FAIL if any test failed, else PASS if any passed, else SKIP.

    Requirements with no outcome (not selected) are left out."""
    by_req: dict[str, list[TestOutcome]] = {}
    for test in outcomes:
        by_req.setdefault(test.req_id, []).append(test)
    results = []
    for req in REQUIREMENTS:
        tests = by_req.get(req.id)
        if not tests:
            continue
        failed = [t for t in tests if t.result in ("failed", "xfailed")]
        if failed:
            outcome = Outcome.XFAIL if req.id in expected else Outcome.FAIL
            detail = expected[req.id] if req.id in expected else failed[0].message
        elif any(t.result == "passed" for t in tests):
            outcome = Outcome.XPASS if req.id in expected else Outcome.PASS
            detail = ""
        else:
            outcome, detail = Outcome.SKIP, tests[0].message
        results.append(RequirementResult(req, outcome, detail))
    return results


def judge(results: Iterable[RequirementResult], *, strict: bool, expected_file: str = "") -> Verdict:
    """The run fails on a MUST failure, on any failure with `strict`, and on an expected failure that passed."""
    problems = []
    for r in results:
        if r.outcome is Outcome.FAIL and (r.requirement.level is Level.MUST or strict):
            problems.append(f"{r.requirement.id} ({r.requirement.level.value}) failed")
        elif r.outcome is Outcome.XPASS:
            problems.append(
                f"{r.requirement.id} is listed as an expected failure but passed: remove it from "
                f"{expected_file or 'the expected-failures file'}"
            )
    return Verdict(ok=not problems, problems=tuple(problems))


def format_table(results: list[RequirementResult], width: int = 120) -> list[str]:
    """ID, level, outcome and the whole sentence (wrapped); a `↳` line says why for FAIL, XFAIL, XPASS, SKIP."""
    id_w = max(len(r.id) for r in REQUIREMENTS)  # the same columns whatever --only selected
    head = f"{'ID':<{id_w}}  {'LEVEL':<6}  {'RESULT':<6}  "
    indent = " " * len(head)
    text_w = max(40, width - len(head))
    lines = [head + "SENTENCE"]
    area = ""
    for r in results:
        req = r.requirement
        if req.area != area:
            area = req.area
            lines.append(f"-- {area}: {AREAS[area]}")
        sentence = textwrap.wrap(req.sentence.replace("`", ""), text_w) or [""]
        lines.append(f"{req.id:<{id_w}}  {req.level.value:<6}  {r.outcome.value:<6}  {sentence[0]}")
        lines.extend(indent + more for more in sentence[1:])
        why = r.detail or ("listed as an expected failure, but passed" if r.outcome is Outcome.XPASS else "")
        if r.outcome is not Outcome.PASS and why:
            lines.append(indent + "↳ " + textwrap.shorten(why, text_w * 2, placeholder="…"))
    return lines


def counts(results: Iterable[RequirementResult]) -> str:
    tally: dict[str, int] = {}
    must_failed = 0
    for r in results:
        tally[r.outcome.value] = tally.get(r.outcome.value, 0) + 1
        if r.outcome is Outcome.FAIL and r.requirement.level is Level.MUST:
            must_failed += 1
    parts = [f"{tally[o.value]} {o.value.lower()}" for o in Outcome if o.value in tally]
    return ", ".join(parts) + f" ({must_failed} MUST failed)"
