"""`dispatcher-gateway`: the HTTP/SSE gateway in front of a dispatcher's control API.

Its own console script rather than a `dispatcher` subcommand: like `dispatcherctl`, it is a
client of the control API, imports nothing of the server, and is deployed and scaled apart.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from types import FrameType

import click

from dispatcherctl.client import DEFAULT_TARGET, ClientConfig, CtlError, channel_credentials
from gateway.config import DEFAULT_MODEL, GatewayConfig
from gateway.server import GatewayServer
from shared.console import version_option
from shared.log import configure_logging
from shared.settings import CLI_CONTEXT

__all__ = ["main"]


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


@click.command(context_settings=CLI_CONTEXT)
@version_option()
@click.option("--target", envvar="DISPATCHER_TARGET", default=DEFAULT_TARGET, metavar="HOST:PORT",
              help=f"the dispatcher's control API [env DISPATCHER_TARGET; default {DEFAULT_TARGET}]")
@click.option("--listen", envvar="GATEWAY_LISTEN", default="127.0.0.1:8080", metavar="HOST:PORT",
              help="where to serve HTTP; port 0 picks a free one [env GATEWAY_LISTEN; default 127.0.0.1:8080]")
@click.option("--tls", is_flag=True, help="connect to the dispatcher with TLS (system roots unless --ca-file)")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM roots that verify the dispatcher's certificate (implies --tls)")
@click.option("--cert-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM client certificate for mutual TLS (with --key-file; implies --tls). A certificate "
              "principal in the dispatcher's tokens file is the gateway's identity only for calls "
              "that carry no bearer token of their own")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM private key of --cert-file")
@click.option("--id", "gateway_id", envvar="GATEWAY_ID", default=None,
              help="this gateway's name in stop paths (gateway:ID) [env GATEWAY_ID; default the host name]")
@click.option("--keepalive-s", envvar="GATEWAY_KEEPALIVE_S", type=float, default=15.0, show_default=True,
              help="SSE comment line on an idle stream every this many seconds [env GATEWAY_KEEPALIVE_S]")
@click.option("--send-timeout-s", envvar="GATEWAY_SEND_TIMEOUT_S", type=float, default=30.0, show_default=True,
              help="a client that takes no bytes for this long is disconnected [env GATEWAY_SEND_TIMEOUT_S]")
@click.option("--list-refresh-s", type=float, default=0.5, show_default=True,
              help="how often a session-table stream (`GET /v1/sessions?stream=true`) re-reads ListSessions")
@click.option("--cors-origin", "cors_origins", multiple=True, envvar="GATEWAY_CORS_ORIGINS", metavar="ORIGIN",
              help="allow browser calls from this origin (repeatable; `*` for any) [env GATEWAY_CORS_ORIGINS, "
              "space-separated; default none: same origin only]")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help=f"a model name `GET /v1/models` lists first (repeatable; default {DEFAULT_MODEL})")
@click.option("--max-kept-sessions", type=click.IntRange(min=1), default=1000, show_default=True,
              help='resumable ("on_disconnect": "keep") sessions held open at once')
@click.option("--wait-for-commander-ms", type=click.IntRange(min=0), default=0,
              help="how long a start waits for a free pool commander (0 = the dispatcher's default)")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]),
              show_default=True)
@click.option("--log-format", default="auto", type=click.Choice(["auto", "json", "console"]), show_default=True)
def main(target: str, listen: str, tls: bool, ca_file: str | None, cert_file: str | None, key_file: str | None,
         gateway_id: str | None, keepalive_s: float,
         send_timeout_s: float, list_refresh_s: float, cors_origins: tuple[str, ...], models: tuple[str, ...],
         max_kept_sessions: int, wait_for_commander_ms: int, log_level: str, log_format: str) -> None:  # fmt: skip
    """Serve the HTTP/SSE gateway: sessions as Server-Sent Events (/v1/sessions), an
    OpenAI-compatible /v1/chat/completions and /v1/models, and the operator console at /.

    The gateway holds no token: each request's `Authorization: Bearer ...` header goes to the
    dispatcher with the call. SIGTERM or Ctrl-C ends the streams and exits 0.
    """
    configure_logging(log_level, json=None if log_format == "auto" else log_format == "json")
    host, port = _listen(listen)
    try:
        config = GatewayConfig(
            upstream=ClientConfig(
                target=target, tls=tls, ca_file=ca_file or "", cert_file=cert_file or "", key_file=key_file or ""
            ),
            host=host,
            port=port,
            keepalive_s=keepalive_s,
            send_timeout_s=send_timeout_s,
            list_refresh_s=list_refresh_s,
            cors_origins=cors_origins,
            max_kept_sessions=max_kept_sessions,
            wait_for_commander_ms=wait_for_commander_ms,
            models=models or (DEFAULT_MODEL,),
            gateway_id=gateway_id or socket.gethostname(),
        )
        channel_credentials(config.upstream)  # an unreadable --ca-file is a usage error now, not at start-up
        server = GatewayServer(config)
    except CtlError as exc:
        raise click.UsageError(exc.message) from exc
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    # uvicorn handles SIGTERM/SIGINT while it serves, then restores the handlers it found and
    # raises the signal again; found as no-ops, that ends in a plain exit 0 after the drain.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _after_drain)
    asyncio.run(server.run())


def _after_drain(signum: int, frame: FrameType | None) -> None:
    """The signal uvicorn re-raises once it has drained: nothing left to do."""
