"""Keepalive policy as one object, turned into grpc channel args on each side.

Defaults are chosen for LLM silences of a minute or more (notes/grpc-streaming.md):
the server pings every 20 s while streams are open, allows client pings every 5 s
(grpc's 5-minute default GOAWAYs 20-30 s pingers during a silent prefill), and a
client pinging faster than that is refused with GOAWAY `too_many_pings`.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.settings import setting

__all__ = ["KeepaliveConfig"]


@dataclass(frozen=True, slots=True)
class KeepaliveConfig:
    time_ms: int = setting(20_000, "send a keepalive PING after this long without activity (grpc.keepalive_time_ms)")
    timeout_ms: int = setting(
        10_000, "close the connection when a PING is not answered within this (grpc.keepalive_timeout_ms)"
    )
    permit_without_calls: bool = setting(
        True, "allow keepalive PINGs on a connection with no open stream (grpc.keepalive_permit_without_calls)"
    )
    min_ping_interval_ms: int = setting(
        5_000,
        "server: shortest gap allowed between client PINGs while no data flows; faster ones are strikes "
        "(grpc.http2.min_ping_interval_without_data_ms)",
    )
    max_ping_strikes: int = setting(
        2, "server: strikes tolerated before GOAWAY too_many_pings; 0 = unlimited (grpc.http2.max_ping_strikes)"
    )

    def __post_init__(self) -> None:
        if self.time_ms < 1 or self.timeout_ms < 1:
            raise ValueError("keepalive time_ms and timeout_ms must be positive")
        if self.min_ping_interval_ms < 0 or self.max_ping_strikes < 0:
            raise ValueError("keepalive min_ping_interval_ms and max_ping_strikes must be >= 0")

    def server_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            *self._ping_timeout(),
            ("grpc.keepalive_permit_without_calls", int(self.permit_without_calls)),
            ("grpc.http2.min_ping_interval_without_data_ms", self.min_ping_interval_ms),
            ("grpc.http2.max_ping_strikes", self.max_ping_strikes),
        ]

    def client_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            *self._ping_timeout(),
            ("grpc.keepalive_permit_without_calls", int(self.permit_without_calls)),
            # 0 = keep pinging through long silences; the server's interval policy bounds the rate.
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def _ping_timeout(self) -> list[tuple[str, int]]:
        # grpcio 1.85's chttp2 gives an unanswered keepalive PING the transport's generic ping
        # timeout (grpc.http2.ping_timeout_ms, 60 s by default: "Set ping timeout timer of 60000ms"
        # with GRPC_TRACE=http2_ping), not keepalive_timeout_ms: with timeout_ms 1000 a blackholed
        # link went unnoticed for the whole 5 s it lasted. Setting both makes timeout_ms the bound
        # it claims to be (tests/integration/test_fault_proxy.py, the blackhole case).
        return [("grpc.http2.ping_timeout_ms", self.timeout_ms)]

    def accepts_client(self, client: KeepaliveConfig) -> bool:
        """Whether a client pinging per `client` stays within this server's policy."""
        if client.permit_without_calls and not self.permit_without_calls:
            return False  # its pings on an idle connection would be strikes
        return client.time_ms >= self.min_ping_interval_ms
