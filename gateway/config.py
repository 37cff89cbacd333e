"""The gateway's settings: one frozen object, validated on construction."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from dispatcherctl.client import ClientConfig

__all__ = ["DEFAULT_MODEL", "GatewayConfig"]

DEFAULT_MODEL = "southwest-agent"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Where the dispatcher is (`upstream`: target, TLS; its token stays empty: the gateway
    forwards each caller's own) and how the HTTP side behaves."""

    upstream: ClientConfig = field(default_factory=ClientConfig)
    host: str = "127.0.0.1"
    port: int = 8080
    gateway_id: str = field(default_factory=socket.gethostname)
    keepalive_s: float = 15.0  # SSE comment lines on idle streams, so proxies keep them
    send_timeout_s: float = 30.0  # a client that takes no bytes this long is gone
    list_refresh_s: float = 0.5  # how often a session-table stream re-reads ListSessions
    cors_origins: tuple[str, ...] = ()
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    max_body_bytes: int = 2 * 1024 * 1024
    max_kept_sessions: int = 1000  # "on_disconnect": "keep" sessions held open at once
    wait_for_commander_ms: int = 0  # 0 = the dispatcher's default

    def __post_init__(self) -> None:
        if self.upstream.token:
            raise ValueError("the gateway holds no token of its own: callers send theirs")
        if not 0 <= self.port <= 65535:
            raise ValueError("--listen port must be 0-65535")
        hop = self.gateway_id
        if not (0 < len(hop) <= 100 and hop.isascii() and hop.isprintable() and " " not in hop and "," not in hop):
            raise ValueError("--id must be 1-100 printable ASCII characters without spaces or commas")
        if not self.keepalive_s > 0:
            raise ValueError("--keepalive-s must be more than 0")
        if not self.send_timeout_s > 0 or not self.list_refresh_s > 0:
            raise ValueError("--send-timeout-s and --list-refresh-s must be more than 0")
        if not self.models:
            raise ValueError("at least one --model name is required")
        if self.max_kept_sessions < 1 or self.max_body_bytes < 1024:
            raise ValueError("--max-kept-sessions must be at least 1 and the body limit at least 1 KiB")

    @property
    def hop(self) -> str:
        """How the gateway appears in a stop's path."""
        return f"gateway:{self.gateway_id}"
