"""Prometheus exposition for both processes: `--metrics-listen HOST:PORT` serves one registry at /metrics.

Each process builds its own `CollectorRegistry` (never prometheus-client's global default, so
tests and embedders can run several in one interpreter). The HTTP side is prometheus-client's
WSGI app on a small threading server in a daemon thread: scrapes never run on the event loop,
and a slow scraper cannot delay a session. A collector that must read state owned by the event
loop uses `LoopCollector`, which runs its reading function *on* the loop (one call per scrape,
bounded), so that it sees a consistent state without locks on the hot path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from shared.settings import setting

__all__ = ["LoopCollector", "MetricsConfig", "MetricsServer", "parse_listen"]

# How long a scrape waits for the event loop to read its state; a loop blocked longer than
# this has bigger problems, and the scrape fails (HTTP 500) instead of hanging.
_LOOP_READ_TIMEOUT_S = 5.0
# serve_forever's poll interval: how long closing the server can take.
_POLL_S = 0.05
_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[\w.-]*):(?P<port>\d{1,5})")


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) as (host, port); ValueError naming the value otherwise."""
    match = _LISTEN.fullmatch(value.strip())
    if match is None or int(match["port"]) > 65535:
        raise ValueError(f"metrics listen address must be HOST:PORT (port 0-65535, e.g. 127.0.0.1:9464), got {value!r}")
    return match["host"].strip("[]") or "0.0.0.0", int(match["port"])


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = setting(
        "",
        "serve Prometheus metrics at http://HOST:PORT/metrics (empty = off; port 0 = any free port; "
        "with --workers N, worker i listens on PORT+i)",
        flag="metrics-listen",
    )

    def __post_init__(self) -> None:
        if self.listen:
            parse_listen(self.listen)


# prometheus-client's own `start_http_server` is built the same way but is meant to live as long
# as the process (no way to stop it cleanly, prometheus/client_python#883); this one closes within
# `_POLL_S`, which tests and a draining dispatcher need.
class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never keeps the process alive
    block_on_close = False


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None  # one line per scrape would drown the process's own log


class MetricsServer:
    """/metrics for `registry` on HOST:PORT, from a daemon thread; `start` binds (OSError if it cannot)."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self._registry = registry
        self._listen = listen
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.address = ""

    def start(self) -> str:
        """Bind and serve; returns the bound HOST:PORT. OSError with the address when it cannot bind."""
        host, port = parse_listen(self._listen)
        server_class = type("_Server", (_Server,), {"address_family": _family(host)})
        try:
            httpd: _Server = make_server(
                host, port, make_wsgi_app(self._registry), server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {self._listen}: {exc.strerror or exc}") from exc
        self._httpd = httpd
        bound = httpd.server_address[1]
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": _POLL_S}, name="metrics-http", daemon=True
        )
        self._thread.start()
        return self.address

    def close(self) -> None:
        """Stop serving (returns within about `_POLL_S`); idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(_POLL_S * 4)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class LoopCollector(Collector):
    """A collector whose `read()` runs on `loop` at scrape time (called from the HTTP thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read: Callable[[], Iterable[Metric]]) -> None:
        self._loop = loop
        self._read = read

    def collect(self) -> Iterable[Metric]:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:  # called on the loop itself (a test, generate_latest in-process)
            return list(self._read())
        done: concurrent.futures.Future[list[Metric]] = concurrent.futures.Future()

        def read_on_loop() -> None:
            try:
                done.set_result(list(self._read()))
            except BaseException as exc:  # handed to the scraping thread, which fails the scrape
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(read_on_loop)
        return done.result(_LOOP_READ_TIMEOUT_S)
