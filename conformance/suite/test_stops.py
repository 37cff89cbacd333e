"""STOP: the target stops a session whose content contains the stop word (its block-list).

The target must be started with a content policy matching the kit's stop word (dispatcher:
`--block-pattern CONFORMANCE-STOP`); with `--stop-word ''` these requirements are skipped.
"""

from __future__ import annotations

import time

import grpc

from conformance.client import describe, session_id
from conformance.plugin import requirement
from conformance.suite.steps import assert_status, stop_content
from conformance.target import Target
from shared import wire


@requirement("STOP-001")
async def test_content_matching_the_policy_gets_a_policy_stop(target: Target) -> None:
    stop_word = target.require_stop_word()
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("stop-001"))
        await session.content(2, "Here is the answer: ")
        await session.content(3, stop_content(stop_word))
        stop = (await session.expect("stop", f"a StopSignal after content containing {stop_word!r}")).stop
        code = wire.pb.StopCode.Name(stop.code)
        assert code == "STOP_CODE_POLICY_VIOLATION", f"expected code POLICY_VIOLATION, got {code}"
        assert stop.reason, "StopSignal.reason must always be filled"
        assert stop.stop_id, "StopSignal.stop_id is empty: StopConfirm cannot name the stop"
        assert list(stop.path), "StopSignal.path is empty: it must name every hop, origin first"
        await session.stop_confirm(4, stop)
        await session.half_close()
        await session.finish()


@requirement("STOP-002")
async def test_a_confirmed_policy_stop_ends_permission_denied(target: Target) -> None:
    stop_word = target.require_stop_word()
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("stop-002"))
        await session.content(2, stop_content(stop_word))
        stop = (await session.expect("stop", "a StopSignal for the stop word")).stop
        await session.stop_confirm(3, stop)
        await session.half_close()
        await session.expect_status(grpc.StatusCode.PERMISSION_DENIED, "a confirmed POLICY_VIOLATION stop")


@requirement("STOP-003")
async def test_a_stop_during_a_tool_call_cancels_it(target: Target) -> None:
    stop_word = target.require_stop_word()
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("stop-003"))
        await session.tool_call(2, "sleep", {"seconds": 30}, call_id="long")
        await session.content(3, stop_content(stop_word))
        stop = (await session.expect("stop", "a StopSignal while the 30 s sleep call runs")).stop
        await session.stop_confirm(4, stop, pending=[("long", "sleep")])
        await session.half_close()
        ending = await session.finish(min(session.wait_s, 20.0))
        results = [describe(p) for p in session.seen if p.WhichOneof("signal") == "tool_result"]
        assert not results, f"the call running at the stop must be cancelled, its result never sent: {results}"
        assert_status(ending, grpc.StatusCode.PERMISSION_DENIED, "a stop during a tool call, confirmed")


@requirement("STOP-004")
async def test_a_stop_during_content_is_the_only_one_and_nothing_but_acks_follows(target: Target) -> None:
    stop_word = target.require_stop_word()
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("stop-004"))
        await session.content(2, "Once upon a time ")
        await session.content(3, stop_content(stop_word))
        # The answer keeps streaming (as an LLM would) before the kit reads the stop.
        for seq in range(4, 9):
            await session.content(seq, stop_content(stop_word) if seq == 6 else f"token {seq} ")
        stop = (await session.expect("stop", "a StopSignal mid-answer")).stop
        await session.stop_confirm(9, stop)
        await session.half_close()
        await session.finish()
        stops = [i for i, p in enumerate(session.seen) if p.WhichOneof("signal") == "stop"]
        assert len(stops) == 1, f"the first stop wins: expected one StopSignal, got {len(stops)}"
        after = [describe(p) for p in session.seen[stops[0] + 1 :] if p.WhichOneof("signal") != "ack"]
        assert not after, f"only Acks may follow the StopSignal; after it came {after}"


@requirement("STOP-005")
async def test_an_unconfirmed_stop_ends_after_the_grace_period(target: Target) -> None:
    stop_word = target.require_stop_word()
    async with target.channel() as channel:
        session = target.session(channel)
        limits = (await session.hello(session_id("stop-005"))).limits
        await session.content(2, stop_content(stop_word))
        stop = (await session.expect("stop", "a StopSignal for the stop word")).stop
        grace_ms = stop.grace_ms or limits.stop_grace_ms
        # Never confirms, never half-closes: only the grace period can end this stream.
        await session.expect_status(
            grpc.StatusCode.PERMISSION_DENIED,
            f"an unconfirmed stop (grace {grace_ms} ms)",
            grace_ms / 1000 + session.wait_s,
        )


@requirement("STOP-006")
async def test_a_half_close_without_confirmation_ends_a_stopped_stream(target: Target) -> None:
    stop_word = target.require_stop_word()
    async with target.channel() as channel:
        session = target.session(channel)  # seed-era: no Hello, no seq
        await session.content(0, "Here is the answer: ")
        await session.content(0, stop_content(stop_word))
        stop = (await session.expect("stop", "a StopSignal for the stop word")).stop
        stopped_at = time.monotonic()
        await session.half_close()
        ending = await session.finish()
        elapsed_ms = (time.monotonic() - stopped_at) * 1000
        assert_status(ending, grpc.StatusCode.PERMISSION_DENIED, "a stop answered by a half-close")
        if stop.grace_ms >= 1000:
            assert elapsed_ms < stop.grace_ms, (
                f"the half-close should end the stream at once; it took {elapsed_ms:.0f} ms (grace {stop.grace_ms} ms)"
            )


@requirement("STOP-007")
async def test_a_stopped_stream_has_stop_trailers(target: Target) -> None:
    stop_word = target.require_stop_word()
    async with target.channel() as channel:
        session = target.session(channel)
        await session.hello(session_id("stop-007"))
        await session.content(2, stop_content(stop_word))
        stop = (await session.expect("stop", "a StopSignal for the stop word")).stop
        await session.stop_confirm(3, stop)
        await session.half_close()
        trailers = (await session.finish()).trailers
        wanted = {
            "x-session-state": "STOPPED",
            "x-stop-code": "POLICY_VIOLATION",
            "x-stop-id": stop.stop_id,
            "x-stop-confirmed": "true",
        }
        wrong = {k: trailers.get(k) for k, v in wanted.items() if trailers.get(k) != v}
        assert not wrong, f"trailers should include {wanted}; wrong or missing: {wrong}; all trailers: {trailers}"
        missing = [k for k in ("x-stop-reason", "x-stop-path") if not trailers.get(k)]
        assert not missing, f"trailers {missing} missing or empty: {trailers}"
