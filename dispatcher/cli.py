"""`dispatcher serve`: run the dispatcher until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import json
import secrets
import sys
from typing import Any

import click

from dispatcher.app import Dispatcher, peer_dialer, run_until_signalled, tls_reloader
from dispatcher.auth import AccessPolicy, Role, hash_token
from dispatcher.cluster.workers import run_workers
from dispatcher.config import DispatcherConfig
from dispatcher.process import run_process
from dispatcher.store.base import StoreOpenError
from dispatcher.tls import exposure_problem
from dispatcher.tools import ToolRegistry, served_tools
from dispatcher.tools.mcp import McpStartError, connect_all
from shared import tracing
from shared.console import version_option
from shared.log import configure_logging
from shared.settings import CLI_CONTEXT, config_file_option, config_options, describe, load_cli_config

__all__ = ["main"]

ENV_PREFIX = "DISPATCHER_"


@click.group(context_settings=CLI_CONTEXT)
@version_option()
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
    _refuse_if_exposed(config)
    if config.server.workers > 1 and config.store.url.startswith("sqlite:"):
        # Each worker would open the one file and take the others' live sessions for crashed.
        click.echo(f"dispatcher: --store {config.store.url} serves one process; use --workers 1", err=True)
        sys.exit(2)
    if config.server.workers > 1 and config.store.redis_url:
        click.echo("dispatcher: --workers with --store redis://: run one replica per process, each with its own "
                   "--listen (and --replica-advertise), behind the balancer", err=True)  # fmt: skip
        sys.exit(2)
    if config.server.workers > 1:
        try:  # checked here once, so that a bad --tools or TLS file is one line, not one per worker
            served_tools(config.tools.modules, test_tools=config.tools.test_tools)
            peer_dialer(config, tls_reloader(config))
        except (ValueError, OSError) as exc:
            click.echo(f"dispatcher: {exc}", err=True)
            sys.exit(2)
        try:
            sys.exit(run_workers(config, sys.argv[1:]))
        except ValueError as exc:  # --metrics-listen ports past 65535
            raise click.UsageError(str(exc)) from exc
        except OSError as exc:
            click.echo(f"dispatcher: {exc}", err=True)
            sys.exit(1)
    try:
        # Spans over OTLP when OTEL_* says so (each worker of a group exports its own).
        tracing.configure("dispatcher", service_instance_id=config.server.instance)
        dispatcher = Dispatcher(config)
    except (ValueError, OSError) as exc:  # a bad tokens file or entry, TLS file, OTEL_* value
        click.echo(f"dispatcher: {exc}", err=True)
        sys.exit(2)
    # Everything imported and built so far lives as long as the process: take it out of the
    # cyclic GC's reach, so that full collections walk only the sessions' objects (they
    # pause the loop; measured at 1 000 sessions: the worst pause 129 -> 100 ms).
    gc.collect()
    gc.freeze()
    try:
        status = run_process(run_until_signalled(dispatcher), use_uvloop=config.server.uvloop)
    except McpStartError as exc:  # an --mcp server that cannot be reached: the operator's to fix
        click.echo(f"dispatcher: {exc}", err=True)
        sys.exit(2)
    except StoreOpenError as exc:  # --store names a file that cannot be opened or is no store
        click.echo(f"dispatcher: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"dispatcher: {exc}", err=True)
        sys.exit(1)
    finally:
        tracing.shutdown()  # what is batched goes out before the process does
    sys.exit(status)


def _refuse_if_exposed(config: DispatcherConfig) -> None:
    """Secure by default: no plaintext without tokens on an address others can reach (exit 2)."""
    try:
        tokens = AccessPolicy.load(tokens_file=config.auth.tokens_file, tokens_env=config.auth.tokens).enabled
    except (ValueError, OSError) as exc:
        click.echo(f"dispatcher: {exc}", err=True)
        sys.exit(2)
    problem = exposure_problem(
        config.server.listen, tls=config.tls.enabled, tokens=tokens, allow_insecure=config.tls.allow_insecure
    )
    if problem is not None:
        click.echo(f"dispatcher: {problem}", err=True)
        sys.exit(2)


@main.command()
@click.option("--tools", "modules", multiple=True, metavar="PACKAGE.MODULE:NAME", help="also list these tools")
@click.option("--test-tools", is_flag=True, help="also list `sleep`, served only with `serve --test-tools`")
@click.option(
    "--mcp", "mcp", multiple=True, metavar="[PREFIX=]stdio:CMD|http:URL", help="also list this MCP server's tools"
)
def tools(modules: tuple[str, ...], test_tools: bool, mcp: tuple[str, ...]) -> None:
    """List the tools `dispatcher serve` would serve with these options, with their schemas."""
    try:
        registry = served_tools(modules, test_tools=test_tools)
        if mcp:
            configure_logging("warning")  # the listing is stdout's; a server's trouble goes to stderr
            asyncio.run(_list_mcp(mcp, registry))
    except ValueError as exc:
        click.echo(f"dispatcher: {exc}", err=True)
        sys.exit(2)
    for name in registry.names():
        spec = registry.get(name)
        assert spec is not None
        click.echo(f"{name}: {spec.description} (timeout {spec.timeout_s:g} s)")
        click.echo(f"  schema: {json.dumps(dict(spec.schema))}")


async def _list_mcp(values: tuple[str, ...], registry: ToolRegistry) -> None:
    """Connect to each MCP server just long enough to list its tools into `registry`."""
    connections = await connect_all(values, registry)
    await asyncio.gather(*(connection.aclose() for connection in connections))


@main.command("hash-token")
@click.option("--role", required=True, type=click.Choice([role.value for role in Role]), help="the token's role")
@click.option("--name", required=True, help="who holds it; shown in stop paths as ROLE:NAME")
@click.option("--generate", is_flag=True, help="make a new random token (printed on stderr) instead of reading one")
def hash_token_command(role: str, name: str, generate: bool) -> None:
    """Print a tokens-file line `ROLE NAME sha256:<hex>` for a token read from stdin (or --generate one).

    The dispatcher stores only the hash: add the line to --tokens-file or DISPATCHER_TOKENS and
    give the token itself to the caller.
    """
    if generate:
        token = secrets.token_urlsafe(32)
        click.echo(f"token for {role}:{name}: {token}", err=True)
    else:
        token = sys.stdin.readline().strip()
        if not token:
            raise click.UsageError("no token on stdin (or use --generate)")
    if any(c.isspace() for c in name):
        raise click.UsageError("--name must not contain spaces")
    click.echo(f"{role} {name} {hash_token(token)}")
