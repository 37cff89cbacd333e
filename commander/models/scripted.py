"""A scripted agent: behaves like an LLM agent (thinks, calls tools, streams an answer) with no LLM.

It streams at a configurable token rate so a stop visibly lands mid-answer, and its
pacing sleeps are cancellable like a real LLM stream: a stop aborts the generation at
the next token, it is never drained.
"""

from __future__ import annotations

import re
from typing import Any

import anyio

from commander.context import AgentContext
from shared.errors import ToolCallError

__all__ = ["ScriptedAgent", "plan_tool_calls"]

_ARITHMETIC = re.compile(r"[-+*/().\d\s^%]*\d[-+*/().\d\s^%]*[-+*/%^][-+*/().\d\s^%]*\d[-+*/().\d\s^%]*")


def plan_tool_calls(prompt: str) -> list[tuple[str, dict[str, Any]]]:
    """Which tools the script calls for a prompt: arithmetic -> calculator, time -> clock, else echo."""
    calls: list[tuple[str, dict[str, Any]]] = []
    match = _ARITHMETIC.search(prompt)
    if match and match.group(0).strip():
        calls.append(("calculator", {"expression": match.group(0).strip().replace("^", "**")}))
    if re.search(r"\b(time|clock|date|now)\b", prompt, re.IGNORECASE):
        calls.append(("clock", {}))
    if not calls:
        calls.append(("echo", {"question": prompt}))
    return calls


class ScriptedAgent:
    """An `Agent`: `await ScriptedAgent()(ctx, prompt)`."""

    def __init__(self, *, tokens_per_s: float = 40.0, first_token_delay_s: float = 0.0, answer_words: int = 60) -> None:
        self.tokens_per_s = tokens_per_s
        self.first_token_delay_s = first_token_delay_s
        self.answer_words = answer_words

    async def __call__(self, ctx: AgentContext, prompt: str) -> None:
        if self.first_token_delay_s:
            await anyio.sleep(self.first_token_delay_s)  # the "prefill" silence
        await ctx.think("understand", f"The user asks: {prompt!r}. ")
        findings: list[str] = []
        for tool, args in plan_tool_calls(prompt):
            await ctx.think("plan", f"I will call {tool} with {args}. ")
            try:
                result = await ctx.call_tool(tool, args, timeout=10.0)
            except ToolCallError as exc:
                await ctx.think("observe", f"{tool} failed ({exc.code}); I will answer without it. ")
                continue
            findings.append(_summarise(tool, result))
            await ctx.think("observe", f"{tool} returned {result}. ")
        tokens = _tokens(self._answer(prompt, findings))
        for token in tokens:
            await ctx.say(token)
            if self.tokens_per_s:
                await anyio.sleep(1 / self.tokens_per_s)
        # Its own usage, as a model backend would report it: one "request", counted (no server).
        await ctx.report_usage(
            prompt_tokens=-(-len(prompt) // 4), completion_tokens=len(tokens), model="scripted", estimated=True
        )

    def _answer(self, prompt: str, findings: list[str]) -> str:
        opening = " ".join(findings) if findings else "I looked into it."
        sentences = [
            opening,
            f"You asked: {prompt}",
            "Let me walk through the reasoning step by step.",
            "First, I checked each assumption against what the tools reported.",
            "Second, I kept only what the tools could confirm, so nothing here rests on a guess.",
            "Third, I wrote the answer down in plain words.",
        ]
        filler = "One more check of the same facts gave the same result."
        missing = self.answer_words - len(" ".join(sentences).split())
        if missing > 0:  # whole filler sentences (linear: long answers are built in one go)
            sentences += [filler] * -(-missing // len(filler.split()))
        return " ".join(sentences)


def _summarise(tool: str, result: Any) -> str:
    if tool == "calculator" and isinstance(result, dict):
        return f"The result of {result.get('expression')} is {result.get('value')}."
    if tool == "clock" and isinstance(result, dict):
        return f"It is {result.get('utc')} UTC."
    return "I noted your question."


def _tokens(text: str) -> list[str]:
    """Word-ish tokens that keep their leading space, like an LLM's deltas."""
    return re.findall(r"\s*\S+", text)
