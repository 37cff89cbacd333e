"""Agents that need no network: the scripted model used by the demo and the tests."""

from __future__ import annotations

from commander.models.scripted import ScriptedAgent, plan_tool_calls

__all__ = ["ScriptedAgent", "plan_tool_calls"]
