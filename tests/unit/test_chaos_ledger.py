"""The chaos suite's arithmetic: what counts as lost, duplicated or run twice decides whether
`make chaos` passes, so it is tested like product code (no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scripts.chaos.agent import Plan, expected_content, token
from scripts.chaos.ledger import ToolLog, check_journal
from scripts.chaos.report import Row, render_table


def journal(*bodies: tuple[str, dict[str, Any], int]) -> list[dict[str, Any]]:
    """Events with dense seqs from (kind, body, packet_seq)."""
    return [{"seq": i, kind: body, "packet_seq": packet} for i, (kind, body, packet) in enumerate(bodies, start=1)]


def content(text: str, packet: int) -> tuple[str, dict[str, Any], int]:
    return ("content", {"text": text}, packet)


def state(name: str) -> tuple[str, dict[str, Any], int]:
    return ("state_change", {"state": f"SESSION_STATE_{name}"}, 0)


def test_a_plan_parses_from_its_prompt_and_says_exactly_what_the_agent_will_answer() -> None:
    plan = Plan.parse("chunks=5 rate=0 tools=2 hold_ms=10")
    assert plan == Plan(chunks=5, rate=0.0, tools=2, hold_ms=10)
    assert Plan.parse(plan.prompt()) == plan
    assert expected_content(plan) == "t00001 t00002 t00003 t00004 t00005 "
    assert token(12) == "t00012 "
    assert sum(plan.call_after().values()) == 2 and max(plan.call_after()) < 5  # never after the last chunk
    assert sum(Plan(chunks=2, tools=3).call_after().values()) == 3  # more calls than gaps: all still made


@pytest.mark.parametrize("prompt", ["chunks=0", "what is 6*7", "speed=3", "tools=-1"])
def test_a_prompt_that_is_not_a_plan_is_refused(prompt: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        Plan.parse(prompt)


def test_content_exactly_once_in_order_passes_even_when_chunks_were_merged() -> None:
    events = journal(state("OPEN"), content("t00001 t00002 ", 2), content("t00003 ", 3), state("FINISHED"))
    check = check_journal("s", events, "t00001 t00002 t00003 ")
    assert check.ok and (check.lost, check.duplicates) == (0, 0)
    assert check.final_state == "SESSION_STATE_FINISHED"


def test_lost_duplicated_and_reordered_chunks_are_counted() -> None:
    want = "t00001 t00002 t00003 "
    lost = check_journal("s", journal(content("t00001 t00003 ", 2)), want)
    assert lost.lost == 1 and not lost.ok
    doubled = check_journal("s", journal(content("t00001 t00002 ", 2), content("t00002 t00003 ", 3)), want)
    assert doubled.duplicates == 1 and doubled.lost == 0
    swapped = check_journal("s", journal(content("t00002 t00001 t00003 ", 2)), want)
    assert swapped.out_of_order and not swapped.ok


def test_an_upstream_packet_or_a_call_journaled_twice_is_a_duplicate() -> None:
    events = journal(
        ("tool_call", {"call_id": "call-1"}, 2),
        ("tool_call", {"call_id": "call-1"}, 2),  # the same packet again, as a careless resume would
        ("tool_result", {"call_id": "call-1"}, 0),
        ("tool_result", {"call_id": "call-1"}, 0),
    )
    check = check_journal("s", events, None)
    assert check.duplicates == 3  # the packet, the call id's request, its result
    assert check.tool_calls == ["call-1", "call-1"]


def test_a_journal_whose_seqs_are_not_dense_is_flagged() -> None:
    events = [{"seq": 1, "content": {"text": "t00001 "}}, {"seq": 3, "content": {"text": "t00002 "}}]
    check = check_journal("s", events, "t00001 t00002 ")
    assert check.seq_gaps == 1 and not check.ok


def test_the_tool_log_counts_executions_per_call_id(tmp_path: Path) -> None:
    path = tmp_path / "tools.log"
    path.write_text(
        "start s1 call-1 1\ndone s1 call-1 1\n"
        "start s1 call-2 2\n"  # still running
        "start s2 call-1 1\ncancelled s2 call-1 1\n"
        "start s2 call-1 1\ndone s2 call-1 1\n"  # run twice
        "start s3 call-1\n"  # a torn line is ignored
    )
    log = ToolLog.read(path)
    assert log.executed_twice() == 1 and log.executed_twice("s1") == 0 and log.executed_twice("s2") == 1
    assert log.running("s1") == ["call-2"] and log.running("s2") == []
    assert log.calls_of("s1") == {"call-1", "call-2"}
    assert ToolLog.read(tmp_path / "absent").executed_twice() == 0


def test_the_table_says_ok_fail_and_skipped_and_why() -> None:
    rows = [
        Row("reset", sessions=3, survived=3, recorded=3, detect_s=0.05, recover_s=0.4),
        Row("blackhole", sessions=3, survived=2, lost=4, problems=["s-1: 4 chunk(s) lost"]),
        Row("restart", skipped="no --store"),
    ]
    table = render_table(rows)
    assert "| reset | 3 | 3/3 | 0 | 0 | 0 | 3/3 | 0.05 s | 0.40 s | ok |" in table
    assert "| blackhole | 3 | 2/3 | 4 |" in table and "FAIL: s-1: 4 chunk(s) lost" in table
    assert "| restart | - |" in table and "restart: skipped: no --store" in table
    assert [row.failed for row in rows] == [False, True, False]
