"""Serving the app with uvicorn on a socket we bind ourselves (so `--listen HOST:0` works and
the bound address can be reported), in the CLI and in tests alike."""

from __future__ import annotations

import asyncio
import socket
import time

import structlog
import uvicorn

from gateway.app import build_app
from gateway.config import GatewayConfig

__all__ = ["GatewayServer"]

log = structlog.get_logger("gateway")

_START_TIMEOUT_S = 15.0
_BACKLOG = 2048  # uvicorn's default
_GRACEFUL_S = 5  # open streams get this long after SIGTERM (they end at once: see the dependency notes)


class GatewayServer:
    """One uvicorn server for `config`; `run()` until it is told to exit (SIGTERM, `exit()`)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((config.host, config.port))
        # Listening from here on: a client that connects before uvicorn's start-up is done waits
        # in the backlog instead of being refused, so `gateway.serving` is true when logged.
        self._sock.listen(_BACKLOG)
        host, port = self._sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        self.url = f"http://{self.address}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                build_app(config),
                lifespan="on",
                log_config=None,  # our structlog lines only
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=_GRACEFUL_S,
            )
        )

    async def run(self) -> None:
        log.info("gateway.serving", address=self.address, target=self.config.upstream.target, hop=self.config.hop)
        try:
            await self._server.serve(sockets=[self._sock])
        finally:
            self._sock.close()
            log.info("gateway.stopped", address=self.address)

    async def wait_started(self, task: asyncio.Task[None]) -> None:
        """Until the server accepts connections (bounded; fails when `task`, its run, ended)."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if task.done():
                task.result()
                raise RuntimeError("the gateway stopped before it started")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway did not start within {_START_TIMEOUT_S} s")
            await asyncio.sleep(0.01)  # sleep-ok: uvicorn offers no start-up event, a bounded poll

    def exit(self) -> None:
        self._server.should_exit = True
