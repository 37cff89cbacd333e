"""The conformance kit's registry, its generated doc table and its suite cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conformance.doc import BEGIN, END, render_table
from conformance.expected import ExpectedFailuresError, parse_expected_failures
from conformance.requirements import AREAS, BY_ID, REQUIREMENTS, Level

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "contract.md"
SUITE = ROOT / "conformance" / "suite"
MARKER = re.compile(r'@requirement\("([A-Z]+-\d{3})"\)')


def test_the_doc_table_is_the_registry() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{DOC} lost its generated-table markers"
    table = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert table == render_table(), f"{DOC} is stale: run python scripts/gen_requirements_doc.py"


def test_every_requirement_is_graded_by_a_test_and_every_marker_is_registered() -> None:
    marked = {m for path in SUITE.glob("test_*.py") for m in MARKER.findall(path.read_text(encoding="utf-8"))}
    assert sorted(set(BY_ID) - marked) == [], "requirements without a test in conformance/suite"
    assert sorted(marked - set(BY_ID)) == [], "tests marked with an unregistered id"


def test_ids_are_well_formed_and_sentences_filled() -> None:
    for r in REQUIREMENTS:
        assert re.fullmatch(r"[A-Z]+-\d{3}", r.id), r.id
        assert r.area in AREAS, r.id
        assert r.sentence and r.source and r.checks, r.id
    assert {r.level for r in REQUIREMENTS} == set(Level)


def test_expected_failures_file_format() -> None:
    text = "# comment\n\nSTOP-007   trailers are stripped by our proxy\nka-001: lenient pings  # inline\nHS-003\n"
    assert parse_expected_failures(text) == {
        "STOP-007": "trailers are stripped by our proxy",
        "KA-001": "lenient pings",
        "HS-003": "listed as an expected failure",
    }


@pytest.mark.parametrize(("text", "message"), [("NOPE-001 x", "unknown requirement"), ("HS-001\nHS-001", "twice")])
def test_expected_failures_file_errors(text: str, message: str) -> None:
    with pytest.raises(ExpectedFailuresError, match=message):
        parse_expected_failures(text)
