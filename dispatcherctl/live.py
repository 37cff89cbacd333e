"""`watch` and `ask`: the commands that follow a session's events live.

Both print with `stream.EventPrinter` and turn Ctrl-C into a cancelled call, a line on
stderr and exit 130.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import grpc

from dispatcherctl.client import ControlClient
from dispatcherctl.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_STOPPED, CtlError
from dispatcherctl.names import event_kind_names, parse_kinds, state_name
from dispatcherctl.options import json_option, meta_callback, names_callback, open_client, stdout_is_tty
from dispatcherctl.render import json_line, outcome_detail
from dispatcherctl.stream import EventPrinter
from shared import wire

__all__ = ["ask", "watch"]


# -- watch -----------------------------------------------------------------------------------


@click.command()
@click.argument("session_id")
@click.option(
    "--from",
    "from_seq",
    type=click.IntRange(min=0),
    default=0,
    metavar="SEQ",
    help="the first event wanted (to resume: the last seq seen + 1); 0 = the oldest kept [default 0]",
)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    metavar="KIND",
    callback=names_callback(parse_kinds),
    help=f"only these event kinds; repeatable or comma-separated: {', '.join(event_kind_names())}",
)
@json_option('one JSON object (SessionEvent) per line, then {"last_seq": N, ...}')
@click.pass_context
def watch(ctx: click.Context, session_id: str, from_seq: int, kinds: list[str], as_json: bool) -> None:
    """Follow a session's events live until it ends (an ended session: its kept events).

    \b
    Content deltas are printed inline as they arrive, thoughts behind `thinking [step]`;
    tool calls, results, stops, confirmations, errors and state changes get a line each:
      #12 tool_call calculator {"expression": "2+3"} [call-1]
    At the end `last seq N` on stdout. If the stream breaks (RESOURCE_EXHAUSTED: this
    watcher fell behind; OUT_OF_RANGE: --from is not kept) or on Ctrl-C, one line on stderr
    says why and `resume with --from N`. Exit: 0 when the session's events ended, 130 on
    Ctrl-C, otherwise the error's status.
    """
    request = wire.ctl.WatchSessionRequest(session_id=session_id, from_seq=from_seq, kinds=kinds)
    printer = EventPrinter(sys.stdout, color=stdout_is_tty())
    last_seq = 0
    with open_client(ctx) as client:
        stream = client.watch(request)
        try:
            for event in stream:
                last_seq = event.seq
                if as_json:
                    click.echo(json_line(event))
                else:
                    printer.event(event)
        except CtlError as exc:
            fell_behind = exc.status is grpc.StatusCode.RESOURCE_EXHAUSTED
            out_of_range = exc.status is grpc.StatusCode.OUT_OF_RANGE
            if not (last_seq or fell_behind or out_of_range):
                raise  # never started: not found, auth, unreachable... say only that
            why = f"{exc.message} (this watcher fell behind)" if fell_behind else exc.message
            resume_from = _resume_from(client, session_id, last_seq, from_seq, out_of_range=out_of_range)
            _watch_end(printer, as_json, last_seq, why, resume_from)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            stream.cancel()
            _watch_end(printer, as_json, last_seq, "interrupted", last_seq + 1 if last_seq else from_seq)
            ctx.exit(EXIT_INTERRUPTED)
    _watch_end(printer, as_json, last_seq, "", 0)


def _resume_from(client: ControlClient, session_id: str, last_seq: int, from_seq: int, *, out_of_range: bool) -> int:
    """Where a new watch should start: after the last event seen; after an OUT_OF_RANGE with
    nothing seen, the nearest end of the range the session still keeps."""
    if last_seq:
        return last_seq + 1
    if not out_of_range:
        return from_seq
    try:
        info = client.get_session(session_id).session
    except CtlError:
        return 0  # the oldest kept, whatever it is now
    return int(info.first_event_seq if from_seq < info.first_event_seq else info.last_event_seq + 1)


def _watch_end(printer: EventPrinter, as_json: bool, last_seq: int, why: str, resume_from: int) -> None:
    """The closing `last seq N` (stdout) and, when the watch broke off, why and where to resume (stderr)."""
    end: dict[str, Any] = {"last_seq": last_seq}
    if why:
        end.update(error=why, resume_from=resume_from)
    if as_json:
        click.echo(json_line(end))
    else:
        printer.line(f"last seq {last_seq or 'none'}")
    if why:
        click.echo(f"{why}; last seq {last_seq or 'none'}, resume with --from {resume_from}", err=True)


# -- ask -------------------------------------------------------------------------------------


@click.command()
@click.argument("question", required=False, default="")
@click.option("--json-input", default="", metavar="JSON", help="a JSON object as input (with or instead of QUESTION)")
@click.option(
    "--meta",
    multiple=True,
    metavar="KEY=VALUE",
    callback=meta_callback,
    help="metadata passed to the commander with the assignment (repeatable)",
)
@click.option(
    "--wait-ms",
    type=click.IntRange(min=0, max=2**32 - 1),
    default=0,
    metavar="N",
    help="how long to wait for a free pool commander, in ms (0 = the dispatcher's default)",
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="S",
    help="the session's time limit: the dispatcher stops it with TIMEOUT when it passes (0 = none)",
)
@json_option("use the unary Ask and print the AskResponse as one JSON object at the end")
@click.pass_context
def ask(
    ctx: click.Context,
    question: str,
    json_input: str,
    meta: dict[str, str],
    wait_ms: int,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Start a session on a free pool commander and print its answer as it arrives.

    \b
    First line: `session ID`. Then the answer streamed, tool calls and stops on their own
    lines, and last the outcome: `FINISHED session ID: ...` / `STOPPED session ID: ...`.
    Exit: 0 finished, 2 stopped (or expired), 1 failed or cancelled elsewhere,
    130 Ctrl-C (the call is cancelled and the dispatcher stops the session with USER_CANCEL).
    --timeout does not apply: the session lasts as long as --timeout-s and the dispatcher allow.
    """
    if json_input:
        try:
            parsed = json.loads(json_input)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--json-input") from exc
        if not isinstance(parsed, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--json-input")
    if not question and not json_input:
        raise click.UsageError("give a QUESTION or --json-input (or both)")
    timeout_ms = min(round(timeout_s * 1000), 2**32 - 1)
    fields: dict[str, Any] = {
        "input_text": question,
        "input_json": json_input,
        "metadata": meta,
        "wait_for_commander_ms": wait_ms,
        "timeout_ms": timeout_ms,
    }
    with open_client(ctx) as client:
        if as_json:
            try:
                response = client.ask(wire.ctl.AskRequest(**fields))
            except KeyboardInterrupt:
                click.echo("cancelled: the dispatcher stops the session with USER_CANCEL", err=True)
                ctx.exit(EXIT_INTERRUPTED)
            click.echo(json_line(response))
            ctx.exit(_ask_exit(response.outcome.state))
        _ask_stream(ctx, client, wire.ctl.StartSessionRequest(**fields))


def _ask_stream(ctx: click.Context, client: ControlClient, request: Any) -> None:
    printer = EventPrinter(sys.stdout, color=stdout_is_tty())
    session_id = ""
    outcome: Any = None
    stream = client.start_session(request)
    try:
        for event in stream:
            if event.WhichOneof("event") != "state_change":
                printer.event(event)
                continue
            if not session_id:  # the first event: OPEN, naming the session
                session_id = event.session_id
                printer.line(f"session {session_id}")
            if event.state_change.HasField("outcome"):
                outcome = event.state_change.outcome
    except CtlError:
        if outcome is None:
            raise
        # the stream's status after the outcome adds nothing to it
    except KeyboardInterrupt:
        stream.cancel()
        printer.end_inline()
        which = f"session {session_id}" if session_id else "the session"
        click.echo(f"cancelled: the dispatcher stops {which} with USER_CANCEL", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    if outcome is None:
        printer.end_inline()
        raise CtlError(f"the stream of session {session_id or '?'} ended without an outcome")
    detail = outcome_detail(outcome)
    printer.line(f"{state_name(outcome.state)} session {session_id}" + (f": {detail}" if detail else ""))
    ctx.exit(_ask_exit(outcome.state))


def _ask_exit(state: int) -> int:
    if state == wire.ctl.SESSION_STATE_FINISHED:
        return EXIT_OK
    if state in (wire.ctl.SESSION_STATE_STOPPED, wire.ctl.SESSION_STATE_EXPIRED):
        return EXIT_STOPPED
    return EXIT_FAILED
