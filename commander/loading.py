"""Which agent a CLI session runs: the scripted one, `--model openai:NAME`, or `--agent MODULE:CALLABLE`."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

from commander.config import CommanderConfig
from commander.models import ScriptedAgent
from commander.session import Agent

__all__ = ["AgentLoadError", "agent_factory", "load_agent"]

_DEFAULT_NAME = "scripted-agent"


class AgentLoadError(ValueError):
    """`--agent` names nothing usable, or the model backend cannot be set up: a usage error."""


def load_agent(spec: str) -> Agent:
    """`package.module:callable` as an agent: an async (ctx, input) callable, or a class whose
    instances are one (built with no arguments). The current directory is importable."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise AgentLoadError(f"--agent {spec!r}: expected PACKAGE.MODULE:CALLABLE")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # anything its import raises is the module's fault, told in one line
        raise AgentLoadError(f"--agent {spec!r}: cannot import {module_name!r}: {exc!r}") from exc
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise AgentLoadError(f"--agent {spec!r}: {module_name!r} has no {attribute!r}")
    names = {key: getattr(module, key) for key in ("agent_name", "agent_version") if hasattr(module, key)}
    if inspect.isclass(target):
        try:
            target = target()
        except Exception as exc:
            raise AgentLoadError(f"--agent {spec!r}: {attribute}() failed: {exc!r}") from exc
    is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(type(target).__call__)
    if not callable(target) or not is_async:
        raise AgentLoadError(f"--agent {spec!r}: not an async (ctx, input) callable")
    return _Labelled(target, names) if names and not _has_names(target) else target


def _has_names(agent: Any) -> bool:
    return hasattr(agent, "agent_name") or hasattr(agent, "agent_version")


class _Labelled:
    """An agent whose name and version its module declares (`agent_name = "..."` beside it)."""

    def __init__(self, agent: Agent, names: dict[str, Any]) -> None:
        self._agent = agent
        self.agent_name = names.get("agent_name")
        self.agent_version = names.get("agent_version")

    async def __call__(self, ctx: Any, prompt: str) -> None:
        await self._agent(ctx, prompt)


def agent_factory(config: CommanderConfig) -> tuple[Callable[[], Agent], CommanderConfig]:
    """A function giving each session its agent, and `config` with the agent's name and version
    for the Hello (an `agent_name` / `agent_version` attribute of the agent, else its spec),
    unless --agent-name was given."""
    if config.agent.agent and config.model.model:
        raise AgentLoadError("--agent and --model exclude each other")
    if config.agent.agent:
        agent = load_agent(config.agent.agent)
        return (lambda: agent), _named(config, agent, config.agent.agent)
    if config.model.model:
        from commander.models.openai_chat import ModelSettings, OpenAIChatAgent  # httpx only when used

        try:
            model_agent = OpenAIChatAgent(ModelSettings.from_config(config.model))
        except OSError as exc:
            raise AgentLoadError(f"--system-prompt-file: {exc}") from exc
        return (lambda: model_agent), _named(config, model_agent, config.model.model)
    a = config.agent
    return (
        lambda: ScriptedAgent(
            tokens_per_s=a.tokens_per_s, first_token_delay_s=a.first_token_delay_s, answer_words=a.answer_words
        )
    ), config


def _named(config: CommanderConfig, agent: Any, spec: str) -> CommanderConfig:
    if config.agent.name != _DEFAULT_NAME:
        return config  # the user named it
    name = getattr(agent, "agent_name", None) or spec
    version = getattr(agent, "agent_version", None) or config.agent.version
    return dataclasses.replace(config, agent=dataclasses.replace(config.agent, name=str(name), version=str(version)))
