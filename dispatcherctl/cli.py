"""`dispatcherctl`: list, show, watch, stop and start a dispatcher's sessions, and approve or deny
their tool calls, over its control API.

Each command opens one channel (`client.ControlClient`), makes its calls and prints
(`render`; `watch` and `ask` live in `live`). Failures are `CtlError`s: the group prints their one line on stderr
and exits with their code; no command prints a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from types import FrameType
from typing import Any, NoReturn

import click

from dispatcherctl.client import (
    DEFAULT_TARGET,
    HEALTH_SERVING,
    ClientConfig,
    ControlClient,
    StopAnswer,
    health_status_name,
)
from dispatcherctl.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, CtlError
from dispatcherctl.live import ask, watch
from dispatcherctl.names import LIVE_STATES, parse_states, session_state_names, state_names_of, stop_code_names
from dispatcherctl.options import json_option, names_callback, open_client, stdout_is_tty, stop_code_callback
from dispatcherctl.render import (
    SESSION_HEADERS,
    TOOL_HEADERS,
    StopTally,
    decision_line,
    health_line,
    json_line,
    print_pairs,
    print_table,
    session_pairs,
    session_row,
    stop_json,
    stop_line,
    tool_rows,
)
from shared import wire
from shared.console import version_option
from shared.model import now_ms
from shared.settings import CLI_CONTEXT

__all__ = ["main"]

ENV_TARGET = "DISPATCHER_TARGET"
ENV_TOKEN = "DISPATCHER_TOKEN"
STOP_ALL_IN_FLIGHT = 32
HEALTH_SERVICES: tuple[str, ...] = ("", wire.SERVICE_NAME, wire.CONTROL_SERVICE_NAME)

EXIT_HELP = """\b
Exit status:
  0    ok
  1    the operation did not succeed: a stop not confirmed or its session already
       ended, a call already decided or not awaiting approval, ask's session failed,
       a service not SERVING, any other gRPC error
  2    usage error; for `ask`: the session was stopped
  3    the dispatcher is unreachable
  4    no such session (or, for approve / deny, no such tool call)
  5    authentication failed or permission denied
  130  interrupted (Ctrl-C or SIGTERM)
"""


class _CtlGroup(click.Group):
    """Turns a CtlError into its one line on stderr and its exit code; Ctrl-C into 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CtlError as exc:
            click.echo(exc.message, err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `dispatcherctl sessions | head`: the reader left, nothing to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
            ctx.exit(EXIT_FAILED)


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def _catch_signals(ctx: click.Context) -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt (even when started with SIGINT ignored, as
    `cmd &` in a script does); restored when the command ends."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    ctx.call_on_close(restore)


@click.group(cls=_CtlGroup, context_settings=CLI_CONTEXT, epilog=EXIT_HELP)
@version_option()
@click.option(
    "--target",
    envvar=ENV_TARGET,
    default=DEFAULT_TARGET,
    metavar="HOST:PORT",
    help=f"the dispatcher's address [env {ENV_TARGET}; default {DEFAULT_TARGET}]",
)
@click.option(
    "--token",
    envvar=ENV_TOKEN,
    default="",
    help=f"bearer token, sent as `authorization: Bearer TOKEN` metadata [env {ENV_TOKEN}]",
)
@click.option("--tls", is_flag=True, help="connect with TLS (system roots unless --ca-file)")
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM file of the roots that verify the dispatcher's certificate (implies --tls)",
)
@click.option(
    "--cert-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM client certificate for a dispatcher that requires mutual TLS (with --key-file; implies --tls)",
)
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), default=None, help="PEM key of --cert-file")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=10.0,
    metavar="SECONDS",
    help="deadline of each unary call (list, show, stop, approve, deny, health); watch and ask have none [default 10]",
)
@click.pass_context
def main(
    ctx: click.Context,
    target: str,
    token: str,
    tls: bool,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    timeout_s: float,
) -> None:
    """Operate a dispatcher through its control API (SessionControlService): list, show, watch and
    stop sessions, approve or deny tool calls waiting for approval, ask a question through a
    pool commander, check health.

    Errors are one line on stderr.
    """
    try:
        ctx.obj = ClientConfig(
            target=target,
            token=token,
            tls=tls,
            ca_file=ca_file or "",
            cert_file=cert_file or "",
            key_file=key_file or "",
            timeout_s=timeout_s,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    _catch_signals(ctx)


# -- sessions, show --------------------------------------------------------------------------


@main.command()
@click.option(
    "--state",
    "states",
    multiple=True,
    metavar="STATE",
    callback=names_callback(parse_states),
    help=f"only sessions in this state, case-insensitive; repeatable or comma-separated: "
    f"{', '.join(session_state_names())} (live = not ended)",
)
@click.option("--commander", default="", metavar="NAME", help="only the sessions of this commander (exact name)")
@click.option(
    "--min-age", "min_age_s", type=click.IntRange(min=0), default=0, metavar="S", help="started at least S s ago"
)
@click.option(
    "--max-age", "max_age_s", type=click.IntRange(min=0), default=0, metavar="S", help="started at most S s ago"
)
@json_option("one JSON object (SessionInfo) per line")
@click.pass_context
def sessions(
    ctx: click.Context, states: list[str], commander: str, min_age_s: int, max_age_s: int, as_json: bool
) -> None:
    """List open and recently ended sessions, oldest first (every page).

    Columns: session id, state, commander, started by, age, last activity, packets in/out,
    tool calls running/done, and for ended sessions the outcome (code: reason).
    """
    if min_age_s and max_age_s and min_age_s > max_age_s:
        raise click.UsageError("--min-age is more than --max-age: no session can match")
    request = wire.ctl.ListSessionsRequest(states=states, commander=commander, min_age_s=min_age_s, max_age_s=max_age_s)
    with open_client(ctx) as client:
        if as_json:
            for info in client.list_sessions(request):
                click.echo(json_line(info))
            return
        found = list(client.list_sessions(request))
    if not found:
        click.echo("no sessions")
        return
    now = now_ms()
    rows = [session_row(info, now) for info in found]
    print_table(SESSION_HEADERS, rows, sys.stdout, tty=stdout_is_tty())


@main.command()
@click.argument("session_id")
@json_option("the GetSessionResponse as one JSON object")
@click.pass_context
def show(ctx: click.Context, session_id: str, as_json: bool) -> None:
    """Show one session: every field, packet counts by kind, running tool calls, and how it
    ended (with the stop's path)."""
    with open_client(ctx) as client:
        response = client.get_session(session_id)
    if as_json:
        click.echo(json_line(response))
    else:
        print_pairs(session_pairs(response, now_ms()), sys.stdout, tty=stdout_is_tty())


@main.command()
@json_option("one JSON object (ToolSpec) per line")
@click.pass_context
def tools(ctx: click.Context, as_json: bool) -> None:
    """List the tools the dispatcher serves, as commanders (and their models) see them: name,
    whether calls need approval, description, JSON Schema of the arguments."""
    with open_client(ctx) as client:
        response = client.list_tools()
    if as_json:
        for tool in response.tools:
            click.echo(json_line(tool))
        return
    if not response.tools:
        click.echo("no tools")
        return
    print_table(TOOL_HEADERS, tool_rows(response.tools), sys.stdout, tty=stdout_is_tty())


# -- stop ------------------------------------------------------------------------------------


@main.command()
@click.argument("session_id", required=False)
@click.option("--all", "stop_all", is_flag=True, help="stop every live session (at most 32 stops in flight)")
@click.option("--reason", required=True, help="why, for the commander and the record")
@click.option(
    "--code",
    default="operator",
    callback=stop_code_callback,
    metavar="CODE",
    help=f"stop code, case-insensitive: {', '.join(stop_code_names())} [default operator]",
)
@click.option("--cause", default="", help="structured detail for the record, e.g. ticket=INC-42")
@json_option("the StopSessionResponse (plus round_trip_ms) as one JSON object per session")
@click.pass_context
def stop(
    ctx: click.Context, session_id: str | None, stop_all: bool, reason: str, code: str, cause: str, as_json: bool
) -> None:
    """Stop SESSION_ID (or, with --all, every live session) and wait for the commander's confirmation.

    \b
    One line per session, starting with how it went:
      stopped ID: confirmed by the commander in 1.42 ms (stop_to_confirm; round trip 3.1 ms) path A -> B
      not confirmed ID: <reason> (round trip ...) path A -> B
      already ended ID: <STATE> (<reason>)
      failed ID: <error>
    With --all, a summary line follows: N confirmed, M not confirmed, K already ended.

    \b
    Exit status: one session: 0 only when confirmed; not confirmed or already ended: 1
    (nothing was sent to an ended session). --all: 0 when every stop was confirmed or
    found its session already ended, else 1.
    """
    if bool(session_id) == stop_all:
        raise click.UsageError("give either SESSION_ID or --all (not both)")
    if not reason.strip():
        raise click.BadParameter("must not be empty", param_hint="--reason")
    with open_client(ctx) as client:
        if session_id:
            request = wire.ctl.StopSessionRequest(session_id=session_id, reason=reason, code=code, cause=cause)
            answer = client.stop_session(request)
            _print_stop(answer, as_json)
            confirmed = answer.response.result == wire.ctl.STOP_RESULT_CONFIRMED
            ctx.exit(EXIT_OK if confirmed else EXIT_FAILED)
        _stop_all(ctx, client, reason=reason, code=code, cause=cause, as_json=as_json)


def _print_stop(answer: StopAnswer, as_json: bool) -> None:
    click.echo(json.dumps(stop_json(answer), ensure_ascii=False) if as_json else stop_line(answer))


def _stop_all(ctx: click.Context, client: ControlClient, *, reason: str, code: str, cause: str, as_json: bool) -> None:
    live = state_names_of(LIVE_STATES)
    targets = [info.session_id for info in client.list_sessions(wire.ctl.ListSessionsRequest(states=live))]
    tally = StopTally()
    if not targets and not as_json:
        click.echo("no live sessions")
    requests = (wire.ctl.StopSessionRequest(session_id=sid, reason=reason, code=code, cause=cause) for sid in targets)
    for answer in client.stop_sessions(requests, max_in_flight=STOP_ALL_IN_FLIGHT):
        tally.add(answer)
        _print_stop(answer, as_json)
    click.echo(json_line({"summary": tally.as_dict()}) if as_json else tally.line())
    ctx.exit(EXIT_OK if tally.ok else EXIT_FAILED)


# -- approve / deny --------------------------------------------------------------------------

_DECIDE_EPILOG = """\b
One line, starting with how it went:
  approved|denied SESSION CALL_ID: approved|denied by <you> (<reason>)
  already decided SESSION CALL_ID: <the decision in force, or timed out>
  not awaiting approval SESSION CALL_ID: ...
Exit status: 0 when this command decided the call; already decided or not awaiting: 1;
no such session or call: 4.
"""


@main.command(epilog=_DECIDE_EPILOG)
@click.argument("session_id")
@click.argument("call_id")
@click.option("--reason", default="", help="why, for the record (optional)")
@json_option("the DecideToolCallResponse as one JSON object")
@click.pass_context
def approve(ctx: click.Context, session_id: str, call_id: str, reason: str, as_json: bool) -> None:
    """Approve CALL_ID of SESSION_ID, a tool call waiting for approval: the tool runs."""
    _decide(ctx, session_id, call_id, approve=True, reason=reason, as_json=as_json)


@main.command(epilog=_DECIDE_EPILOG)
@click.argument("session_id")
@click.argument("call_id")
@click.option("--reason", required=True, help="why; the model reads it in the DENIED tool error")
@json_option("the DecideToolCallResponse as one JSON object")
@click.pass_context
def deny(ctx: click.Context, session_id: str, call_id: str, reason: str, as_json: bool) -> None:
    """Deny CALL_ID of SESSION_ID, a tool call waiting for approval: the commander gets a
    DENIED tool error with the reason, and the session goes on."""
    if not reason.strip():
        raise click.BadParameter("must not be empty", param_hint="--reason")
    _decide(ctx, session_id, call_id, approve=False, reason=reason, as_json=as_json)


def _decide(ctx: click.Context, session_id: str, call_id: str, *, approve: bool, reason: str, as_json: bool) -> None:
    request = wire.ctl.DecideToolCallRequest(session_id=session_id, call_id=call_id, approve=approve, reason=reason)
    with open_client(ctx) as client:
        response = client.decide_tool_call(request)
    click.echo(json_line(response) if as_json else decision_line(response, call_id))
    ctx.exit(EXIT_OK if response.result == wire.ctl.DECIDE_RESULT_DECIDED else EXIT_FAILED)


# -- health ----------------------------------------------------------------------------------


@main.command()
@click.option(
    "--service",
    "services",
    multiple=True,
    metavar="NAME",
    help='check only this service (repeatable; "" = the server) [default: the server, '
    "southwest.ai.agent.v1.AgentInteraction, southwest.ai.agent.v1.SessionControlService]",
)
@json_option('one JSON object per service: {"service": ..., "status": ...}')
@click.pass_context
def health(ctx: click.Context, services: tuple[str, ...], as_json: bool) -> None:
    """grpc.health.v1 Check of the server and its services; one `STATUS  SERVICE` line each.

    Exit: 0 when every one is SERVING, 1 otherwise (SERVICE_UNKNOWN = not registered).
    """
    healthy = True
    with open_client(ctx) as client:
        for service in services or HEALTH_SERVICES:
            status = client.health(service)
            healthy = healthy and status == HEALTH_SERVING
            if as_json:
                click.echo(json_line({"service": service, "status": health_status_name(status)}))
            else:
                click.echo(health_line(service, status))
    ctx.exit(EXIT_OK if healthy else EXIT_FAILED)


main.add_command(watch)
main.add_command(ask)
