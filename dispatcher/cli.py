"""`dispatcher serve`: run the dispatcher until SIGTERM/SIGINT."""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import click

from dispatcher.app import Dispatcher, run_until_signalled
from dispatcher.config import DispatcherConfig
from dispatcher.tools import default_registry
from shared.log import configure_logging
from shared.settings import CLI_CONTEXT, config_file_option, config_options, describe, load_cli_config

__all__ = ["main"]

ENV_PREFIX = "DISPATCHER_"


@click.group(context_settings=CLI_CONTEXT)
def main() -> None:
    """The dispatcher: serves AgentInteraction, runs tools for commanders and stops them by policy."""


@main.command()
@config_file_option(DispatcherConfig, env_prefix=ENV_PREFIX)
@click.option("--print-config", is_flag=True, help="print the effective configuration as JSON and exit")
@config_options(DispatcherConfig, env_prefix=ENV_PREFIX)
def serve(config_file: str | None, print_config: bool, **flags: Any) -> None:
    """Serve until SIGTERM or Ctrl-C, then drain: sessions get a SHUTDOWN stop and the grace period.

    Precedence: flags > DISPATCHER_* environment > --config file > defaults.
    """
    config = load_cli_config(DispatcherConfig, env_prefix=ENV_PREFIX, config_file=config_file, flags=flags)
    if print_config:
        click.echo(json.dumps(describe(config), indent=2))
        return
    fmt = config.log.format
    configure_logging(config.log.level, json=None if fmt == "auto" else fmt == "json")
    try:
        anyio.run(run_until_signalled, Dispatcher(config))
    except* OSError as group:  # raised inside task groups, so it arrives grouped
        click.echo(f"dispatcher: {_first_leaf(group)}", err=True)
        sys.exit(1)


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


@main.command()
def tools() -> None:
    """List the built-in tools with their argument schemas."""
    registry = default_registry()
    for name in registry.names():
        spec = registry.get(name)
        assert spec is not None
        click.echo(f"{name}: {spec.description} (timeout {spec.timeout_s:g} s)")
        click.echo(f"  schema: {json.dumps(dict(spec.schema))}")
