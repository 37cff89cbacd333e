"""Adaptive coalescing against a real dispatcher: fewer packets at full speed, the same text,
and one packet per token when the agent is paced."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from commander import AgentContext, SessionResult, run_session
from commander.models import ScriptedAgent
from dispatcher.app import Dispatcher
from dispatcher.sessions.registry import EndedSession
from shared.model import SessionState
from tests.conftest import commander_config, running_dispatcher, wait_until

pytestmark = pytest.mark.anyio

TOKENS = [f" tok{i}" for i in range(2_000)]
THOUGHTS = [f"step {i}; " for i in range(200)]


async def burst_agent(ctx: AgentContext, prompt: str) -> None:
    """At full speed: a run of thoughts of one step, a tool call, then the whole answer."""
    for delta in THOUGHTS:
        await ctx.think("plan", delta)
    assert await ctx.call_tool("echo", {"n": 1}) == {"n": 1}
    for token in TOKENS:
        await ctx.say(token)


async def run(dispatcher: Dispatcher, agent: Any, **connection: Any) -> tuple[SessionResult, EndedSession]:
    address = dispatcher.address or ""
    async with grpc.aio.insecure_channel(address) as channel:
        result = await run_session(agent, "go", channel=channel, config=commander_config(address, **connection))
    await wait_until(
        lambda: dispatcher.sessions.registry.get_ended(result.session_id) is not None, "the session is recorded"
    )
    ended = dispatcher.sessions.registry.get_ended(result.session_id)
    assert ended is not None
    return result, ended


def received(ended: EndedSession, kind: str) -> list[Any]:
    """The session's journaled packets of `kind` (ContentChunk / ThoughtChain), in order."""
    journal = ended.journal
    assert journal is not None and journal.first_seq == 1, "the journal must still hold the whole session"
    events = [journal.event(seq) for seq in range(journal.first_seq, journal.next_seq)]
    return [getattr(event, kind) for event in events if event is not None and event.WhichOneof("event") == kind]


def packet_seqs(ended: EndedSession) -> list[int]:
    journal = ended.journal
    assert journal is not None
    entries = [journal.entry(seq) for seq in range(journal.first_seq, journal.next_seq)]
    return [entry.packet_seq for entry in entries if entry is not None and entry.packet_seq]


async def test_full_speed_sends_fewer_packets_with_exactly_the_same_text() -> None:
    async with running_dispatcher() as dispatcher:
        result, ended = await run(dispatcher, burst_agent)
    assert result.state is SessionState.FINISHED, result
    contents = received(ended, "content")
    thoughts = received(ended, "thought")
    # The receiver reads the same text in the same order...
    assert "".join(chunk.text for chunk in contents) == "".join(TOKENS)
    assert "".join(t.delta for t in thoughts) == "".join(THOUGHTS) and {t.step_name for t in thoughts} == {"plan"}
    assert contents[-1].is_finish and not any(chunk.is_finish for chunk in contents[:-1])
    # ...in fewer packets (2000 says + the finish; 200 thoughts), each within the bounds.
    assert ended.packets_in["content"] == len(contents) < len(TOKENS) + 1
    assert ended.packets_in["thought"] == len(thoughts) < len(THOUGHTS)
    assert ended.packets_in["tool_call"] == 1 and ended.packets_in["hello"] == 1
    assert max(len(chunk.text) for chunk in contents) <= 16 * 1024
    # seq is stamped per packet written: strictly increasing, and every packet was acked.
    seqs = packet_seqs(ended)
    assert seqs == sorted(set(seqs)) and result.packets_sent == sum(ended.packets_in.values())
    assert result.last_acked_seq == result.packets_sent


async def test_without_coalescing_every_packet_goes_alone() -> None:
    async with running_dispatcher() as dispatcher:
        result, ended = await run(dispatcher, burst_agent, coalesce=False)
    assert result.state is SessionState.FINISHED, result
    assert [chunk.text for chunk in received(ended, "content")] == [*TOKENS, ""]
    assert [t.delta for t in received(ended, "thought")] == THOUGHTS
    assert result.packets_sent == 1 + len(THOUGHTS) + 1 + len(TOKENS) + 1  # hello ... finish


async def test_the_size_bound_caps_each_merged_packet() -> None:
    async with running_dispatcher() as dispatcher:
        result, ended = await run(dispatcher, burst_agent, coalesce_max_bytes=64)
    assert result.state is SessionState.FINISHED, result
    contents = received(ended, "content")
    assert "".join(chunk.text for chunk in contents) == "".join(TOKENS)
    assert max(len(chunk.text) for chunk in contents) <= 64


async def test_a_paced_agent_sends_every_token_as_its_own_packet() -> None:
    """At low load the outbox is empty whenever the writer looks: nothing to merge, nothing waits."""
    agent = ScriptedAgent(tokens_per_s=20, answer_words=12)
    async with running_dispatcher() as dispatcher:
        result, ended = await run(dispatcher, agent)
    assert result.state is SessionState.FINISHED, result
    contents = received(ended, "content")
    said = [chunk.text for chunk in contents[:-1]]
    assert len(said) >= 12 and all(len(token.split()) == 1 for token in said), said
    assert contents[-1].text == "" and contents[-1].is_finish
    assert ended.packets_in["content"] == len(said) + 1
