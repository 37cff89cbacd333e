"""The chaos agent: a deterministic answer of numbered chunks, with tool calls in between.

`commander run --agent scripts.chaos.agent:numbered --prompt "chunks=200 rate=50 tools=2 hold_ms=500"`
(run from the repository root). It says `t00001 `, `t00002 `, ... `t{chunks:05d} ` at `rate`
chunks per second (0 = as fast as the outbox takes them), and makes `tools` calls of the
`chaos_record` tool (`scripts/chaos/tools.py`) spread evenly through the answer, each holding
the tool for `hold_ms`. The content is a function of the prompt alone (`expected_content`), so a
harness compares the journal against it; the commander numbers the calls `call-1`, `call-2`, ...
in order, so their ids are stable for a session and a re-run of the same prompt.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio

__all__ = ["NumberedAgent", "Plan", "agent_name", "agent_version", "expected_content", "numbered", "token"]

agent_name = "chaos-numbered"
agent_version = "1"

TOOL = "chaos_record"


def token(n: int) -> str:
    return f"t{n:05d} "


@dataclass(frozen=True, slots=True)
class Plan:
    """What one session of the agent does; parsed from its prompt (`key=value` words)."""

    chunks: int = 100
    rate: float = 50.0  # chunks per second; 0 = unpaced
    tools: int = 1  # tool calls, spread evenly through the answer
    hold_ms: int = 200  # how long each call holds the tool

    def __post_init__(self) -> None:
        if self.chunks < 1 or self.rate < 0 or self.tools < 0 or self.hold_ms < 0:
            raise ValueError("chunks >= 1, rate >= 0, tools >= 0, hold_ms >= 0")

    @classmethod
    def parse(cls, prompt: str) -> Plan:
        fields: dict[str, Any] = {}
        for word in prompt.split():
            key, sep, value = word.partition("=")
            if not sep or key not in cls.__dataclass_fields__:
                raise ValueError(f"chaos agent: {word!r} is not one of chunks=, rate=, tools=, hold_ms=")
            fields[key] = float(value) if key == "rate" else int(value)
        return cls(**fields)

    def prompt(self) -> str:
        return f"chunks={self.chunks} rate={self.rate:g} tools={self.tools} hold_ms={self.hold_ms}"

    def call_after(self) -> Counter[int]:
        """How many tool calls follow each chunk: evenly spaced, before the last chunk."""
        step = self.chunks / (self.tools + 1)
        return Counter(max(1, min(self.chunks - 1, round(step * (i + 1)))) for i in range(self.tools))


def expected_content(plan: Plan) -> str:
    """Exactly the answer text the agent produces for `plan`."""
    return "".join(token(n) for n in range(1, plan.chunks + 1))


class NumberedAgent:
    """An agent (async (ctx, input) callable) following `plan`, or its prompt's when None."""

    agent_name = agent_name
    agent_version = agent_version

    def __init__(self, plan: Plan | None = None) -> None:
        self.plan = plan

    async def __call__(self, ctx: Any, prompt: str) -> None:
        plan = self.plan or Plan.parse(prompt)
        calls_after = plan.call_after()
        pause = 1 / plan.rate if plan.rate else 0.0
        made = 0
        for n in range(1, plan.chunks + 1):
            await ctx.say(token(n))
            for _ in range(calls_after[n]):
                made += 1
                await ctx.call_tool(TOOL, {"n": made, "hold_ms": plan.hold_ms}, timeout=60)
            if pause:
                await anyio.sleep(pause)  # the pacing of a model's token stream


async def numbered(ctx: Any, prompt: str) -> None:
    """`--agent scripts.chaos.agent:numbered`: the plan is the prompt (`chunks=200 rate=50 ...`)."""
    await NumberedAgent()(ctx, prompt)
