"""`commander run`: one session against a dispatcher (the scripted agent, a model, or your own agent);
`commander serve`: a pool of them."""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from dataclasses import replace
from typing import Any

import anyio
import click
import grpc
import structlog
from anyio.abc import TaskStatus

from commander.config import CommanderConfig
from commander.events import Observer
from commander.loading import AgentLoadError, agent_factory
from commander.metrics import CommanderMetrics
from commander.render import ConsoleRenderer, JsonRenderer
from commander.session import Agent, SessionResult, run_session
from commander.transport import open_channel
from shared import tracing
from shared.console import version_option
from shared.log import configure_logging
from shared.model import SessionState
from shared.settings import CLI_CONTEXT, config_file_option, config_options, load_cli_config
from shared.tls import channel_credentials, explain_connect_failure

__all__ = ["main"]

log = structlog.get_logger("commander")

ENV_PREFIX = "COMMANDER_"
EXIT_FINISHED = 0
EXIT_FAILED = 1
EXIT_STOPPED = 2
EXIT_CANCELLED = 130  # as for a shell command ended by Ctrl-C
# After a second signal the process is gone within this, whatever it was waiting for.
FORCED_EXIT_S = 0.5


@click.group(context_settings=CLI_CONTEXT)
@version_option()
def main() -> None:
    """The commander: runs an agent and streams its thoughts, answer and tool calls to a dispatcher."""


@main.command()
@click.option("--prompt", "-p", required=True, help="the input the agent works on")
@click.option("--session-id", default=None, help="ask the dispatcher for this session id (default: a new UUID)")
@config_file_option(CommanderConfig, env_prefix=ENV_PREFIX)
@click.option("--json", "as_json", is_flag=True, help="print events and the result as JSON lines")
@click.option("--quiet", "-q", is_flag=True, help="do not print the thought and answer streams")
@click.option("--log-level", default="warning", show_default=True, help="log level for stderr")
@config_options(CommanderConfig, env_prefix=ENV_PREFIX)
def run(
    prompt: str,
    session_id: str | None,
    config_file: str | None,
    as_json: bool,
    quiet: bool,
    log_level: str,
    **flags: Any,
) -> None:
    """Run one session: of the built-in scripted agent (no LLM, no network but the dispatcher), of a
    model (--model openai:NAME --base-url URL) or of your own agent (--agent PACKAGE.MODULE:CALLABLE).

    Exit status: 0 finished, 2 stopped by the dispatcher, 130 cancelled here (Ctrl-C or SIGTERM;
    the dispatcher is told why), 1 failed or refused.
    """
    configure_logging(log_level)
    config = load_cli_config(CommanderConfig, env_prefix=ENV_PREFIX, config_file=config_file, flags=flags)
    new_agent, config = _agent_or_exit(config)
    _prepare(config)
    renderer = JsonRenderer(quiet=quiet) if as_json else ConsoleRenderer(quiet=quiet)
    metrics = _start_metrics(config)
    try:
        result = anyio.run(_run, config, new_agent(), prompt, session_id, renderer, metrics)
    finally:
        if metrics is not None:
            metrics.close()
        tracing.shutdown()  # the session's spans go out before the process does
    if result is None:  # a second signal cut the session short: there is no result to print
        sys.exit(EXIT_CANCELLED)
    result = explain_transport_failure(result, config)
    renderer.result(result)
    sys.exit(exit_code(result))


def _agent_or_exit(config: CommanderConfig) -> tuple[Any, CommanderConfig]:
    """The agent factory for the config's --agent / --model, or a one-line usage error (exit 2)."""
    try:
        return agent_factory(config)
    except AgentLoadError as exc:
        raise click.UsageError(str(exc)) from None


def _prepare(config: CommanderConfig) -> None:
    """What can fail before any connection, as one usage line: the TLS files, the OTEL_* values."""
    try:
        if config.connection.uses_tls:
            channel_credentials(config.connection.ca_file, config.connection.cert_file, config.connection.key_file)
        tracing.configure("commander")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def explain_transport_failure(result: SessionResult, config: CommanderConfig) -> SessionResult:
    """A session that never connected says why in words (a TLS mismatch, an untrusted certificate)."""
    if result.status_code != "UNAVAILABLE":
        return result
    conn = config.connection
    cause = explain_connect_failure(result.status_details, tls=conn.uses_tls, client_cert=bool(conn.cert_file))
    if cause is None:
        return result
    return replace(result, reason=f"cannot reach dispatcher at {conn.target}: {cause}")


def _start_metrics(config: CommanderConfig) -> CommanderMetrics | None:
    """--metrics-listen: serving before the session starts; a port that cannot be bound is one line."""
    if not config.metrics.listen:
        return None
    metrics = CommanderMetrics(config.metrics.listen)
    try:
        address = metrics.start()
    except OSError as exc:
        click.echo(f"commander: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    log.info("commander.metrics_serving", metrics=f"http://{address}/metrics")
    return metrics


async def _run(
    config: CommanderConfig,
    agent: Agent,
    prompt: str,
    session_id: str | None,
    renderer: Any,
    metrics: CommanderMetrics | None = None,
) -> SessionResult | None:
    """The session, with Ctrl-C / SIGTERM cancelling it cleanly (a second signal exits at once: None)."""
    signals = SignalPolicy()
    result: SessionResult | None = None
    observer = metrics.observing(renderer) if metrics is not None else renderer
    async with anyio.create_task_group() as tg:
        await tg.start(signals.watch, tg.cancel_scope)
        result = await _session(config, agent, prompt, session_id, observer, signals.cancel)
        tg.cancel_scope.cancel()
    if result is not None and metrics is not None:
        metrics.session_ended(result)
    return result


async def _session(
    config: CommanderConfig, agent: Agent, prompt: str, session_id: str | None, renderer: Any, cancel: anyio.Event
) -> SessionResult:
    async with open_channel(config.connection, config.keepalive) as channel:
        return await run_session(
            agent, prompt, channel=channel, config=config, session_id=session_id, observer=renderer, cancel=cancel
        )


@main.command()
@click.option(
    "--concurrency",
    "-n",
    default=1,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="sessions this process runs at once (pool streams kept open)",
)
@config_file_option(CommanderConfig, env_prefix=ENV_PREFIX)
@click.option("--log-level", default="info", show_default=True, help="log level for stderr")
@config_options(CommanderConfig, env_prefix=ENV_PREFIX)
def serve(concurrency: int, config_file: str | None, log_level: str, **flags: Any) -> None:
    """Join the dispatcher's commander pool: keep CONCURRENCY streams open and run the sessions
    that backends start (SessionControlService.StartSession / Ask) with the scripted agent,
    a model (--model openai:NAME) or your own agent (--agent PACKAGE.MODULE:CALLABLE).

    One JSON line per finished session on stdout. SIGTERM/SIGINT: idle streams leave the pool,
    running sessions are cancelled (the dispatcher records why); a second signal exits at once.
    """  # fmt: skip
    configure_logging(log_level)
    config = load_cli_config(CommanderConfig, env_prefix=ENV_PREFIX, config_file=config_file, flags=flags)
    agent, config = _agent_or_exit(config)
    _prepare(config)
    metrics = _start_metrics(config)
    try:
        status = anyio.run(_serve, config, concurrency, agent, metrics)
    finally:
        if metrics is not None:
            metrics.close()
        tracing.shutdown()
    sys.exit(status)


async def _serve(config: CommanderConfig, concurrency: int, agent: Any, metrics: CommanderMetrics | None = None) -> int:
    """The pool streams until a signal: 0 once the first one has ended them cleanly, 130 after a second."""
    renderer = JsonRenderer()
    signals = SignalPolicy()
    cancel = signals.cancel

    async def pool_stream(number: int, channel: grpc.aio.Channel) -> None:
        """One pool stream after another until cancelled; reconnects with backoff."""
        backoff = PoolBackoff()
        while not cancel.is_set():
            try:
                observer = metrics.observing(Observer()) if metrics is not None else None
                result = await run_session(
                    agent(), "", channel=channel, config=config, cancel=cancel, await_assignment=True, observer=observer
                )
            except Exception:  # one broken session must not take the other pool streams down
                log.exception("pool.session_crashed", slot=number)
                result = None
            if result is not None and result.assigned is not None:
                renderer.result(result)
                if metrics is not None:
                    metrics.session_ended(result)
                backoff.reset()
            elif not cancel.is_set():
                delay = backoff.next()
                if result is not None:
                    log.warning("pool.stream_ended", slot=number, status=result.status_code,
                                detail=result.status_details, retry_in_s=round(delay, 2))  # fmt: skip
                with anyio.move_on_after(delay):
                    await cancel.wait()

    async with anyio.create_task_group() as tg:
        await tg.start(signals.watch, tg.cancel_scope)
        async with open_channel(config.connection, config.keepalive) as channel:
            log.info("pool.joining", target=config.connection.target, concurrency=concurrency)
            async with anyio.create_task_group() as streams:
                for number in range(concurrency):
                    streams.start_soon(pool_stream, number, channel)
        tg.cancel_scope.cancel()
    return EXIT_CANCELLED if signals.forced else EXIT_FINISHED


class SignalPolicy:
    """SIGINT/SIGTERM for the CLI. The first sets `cancel`: sessions end cleanly, in-band, and the
    dispatcher records why. A second one exits at once: it cancels the scope `watch` was given
    (each RPC is reset, so the dispatcher sees the peer go) and arms a timer thread that ends
    the process with EXIT_CANCELLED after FORCED_EXIT_S, should unwinding take longer.

    Why the timer: neither a cancelled scope nor an exception raised in a task (sys.exit) ends
    anyio.run before every cleanup await below it has finished, and the dispatcher may never
    answer the one a session is in. A thread needs no event loop to end the process.
    """

    def __init__(self) -> None:
        self.cancel = anyio.Event()
        self.forced = False

    async def watch(
        self, scope: anyio.CancelScope, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Until cancelled; started (`await tg.start(...)`) once the signals are caught."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self.cancel.is_set():
                    log.info("commander.cancelling", signal=name)
                    self.cancel.set()
                    continue
                log.warning("commander.forced_exit", signal=name)
                self.forced = True
                _exit_after(FORCED_EXIT_S, EXIT_CANCELLED)
                scope.cancel()
                return


def _exit_after(delay_s: float, code: int) -> None:
    # os._exit: no cleanup left to wait for (nor any flush, whose lock the main thread may hold).
    timer = threading.Timer(delay_s, os._exit, args=(code,))
    timer.daemon = True  # a process that ends sooner by itself does not wait for it
    timer.start()


class PoolBackoff:
    """Exponential backoff with jitter for reconnecting pool streams: 0.1 s doubling up to 5 s."""

    def __init__(self, first_s: float = 0.1, max_s: float = 5.0) -> None:
        self._first = first_s
        self._max = max_s
        self._next = first_s

    def next(self) -> float:
        delay = self._next * random.uniform(0.5, 1.0)
        self._next = min(self._max, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self._first


def exit_code(result: SessionResult) -> int:
    if result.state is SessionState.FINISHED:
        return EXIT_FINISHED
    if result.state in (SessionState.STOPPED, SessionState.EXPIRED):
        return EXIT_STOPPED
    if result.state is SessionState.CANCELLED and result.reason == "cancelled by the commander":
        return EXIT_CANCELLED
    return EXIT_FAILED
