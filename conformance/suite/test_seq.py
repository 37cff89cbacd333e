"""SEQ: sequence numbers strictly increase; gaps are fine, anything else ends the stream."""

from __future__ import annotations

import re
from collections import Counter

import grpc
import pytest

from conformance.client import session_id
from conformance.plugin import requirement
from conformance.suite.steps import echo_round_trip, finish_ok
from conformance.target import Target

LAST_GOOD = 7
BAD_SEQS = {"repeat": LAST_GOOD, "backwards": 4, "zero": 0}


@requirement("SEQ-001")
async def test_gaps_in_seq_are_allowed(target: Target) -> None:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("seq-001"))
        await session.content(5, "gap ")
        await echo_round_trip(session, 9, "gap", "seqs 1, 5, 9")
        await finish_ok(session, 20, "a session with seqs 1, 5, 9, 20")


async def _bad_seq_status(target: Target, case: str) -> tuple[grpc.StatusCode, str]:
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id(f"seq-{case}"))
        await session.content(LAST_GOOD, "fine")
        await session.content(BAD_SEQS[case], "bad seq")
        ending = await session.expect_status(
            grpc.StatusCode.INVALID_ARGUMENT, f"seq {BAD_SEQS[case]} after seq {LAST_GOOD}"
        )
        return ending.code, ending.details


@requirement("SEQ-002")
@pytest.mark.parametrize("case", list(BAD_SEQS))
async def test_a_seq_that_repeats_goes_back_or_drops_to_zero_ends_the_stream(target: Target, case: str) -> None:
    await _bad_seq_status(target, case)


@requirement("SEQ-003")
@pytest.mark.parametrize("case", ["repeat", "backwards"])
async def test_the_status_names_both_seqs(target: Target, case: str) -> None:
    _, details = await _bad_seq_status(target, case)
    numbers = Counter(int(n) for n in re.findall(r"\d+", details))
    wanted = Counter([LAST_GOOD, BAD_SEQS[case]])
    assert not wanted - numbers, f"the status details should name seq {BAD_SEQS[case]} and seq {LAST_GOOD}: {details!r}"
