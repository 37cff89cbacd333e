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
from shared.settings import ConfigError, config_options, describe, load_config

__all__ = ["main"]


# Wide help so long environment variable names are never split across lines.
@click.group(context_settings={"help_option_names": ["-h", "--help"], "terminal_width": 120, "max_content_width": 120})
def main() -> None:
    """The dispatcher: serves AgentInteraction, runs tools for commanders and stops them by policy."""


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="TOML file with [server], [keepalive], [session], [policy], [log] sections [env DISPATCHER_CONFIG]",
    envvar="DISPATCHER_CONFIG",
)
@click.option("--print-config", is_flag=True, help="print the effective configuration as JSON and exit")
@config_options(DispatcherConfig, env_prefix="DISPATCHER_")
def serve(config_file: str | None, print_config: bool, **flags: Any) -> None:
    """Serve until SIGTERM or Ctrl-C, then drain: sessions get a SHUTDOWN stop and the grace period.

    Precedence: flags > DISPATCHER_* environment > --config file > defaults.
    """
    try:
        config = load_config(DispatcherConfig, env_prefix="DISPATCHER_", toml_path=config_file, flags=flags)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
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
