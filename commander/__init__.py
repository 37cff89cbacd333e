"""The commander: a client library for running agents against a dispatcher, and its CLI.

async with open_channel(ConnectionConfig(target="127.0.0.1:50051"), KeepaliveConfig()) as channel:
    result = await run_session(my_agent, "question", channel=channel)
"""

from __future__ import annotations

from commander.config import AgentConfig, CommanderConfig, ConnectionConfig
from commander.context import AgentContext, ToolInfo
from commander.events import Observer, SessionEvent
from commander.session import Agent, SessionResult, run_session
from commander.transport import open_channel
from shared.errors import AgentFailure, ToolCallError

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentContext",
    "AgentFailure",
    "CommanderConfig",
    "ConnectionConfig",
    "Observer",
    "SessionEvent",
    "SessionResult",
    "ToolCallError",
    "ToolInfo",
    "open_channel",
    "run_session",
]
