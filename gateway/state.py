"""What every handler needs, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from gateway.config import GatewayConfig
from gateway.kept import KeptSessions
from gateway.upstream import Upstream

__all__ = ["GatewayState", "state_of"]


@dataclass(frozen=True, slots=True)
class GatewayState:
    config: GatewayConfig
    upstream: Upstream
    kept: KeptSessions


def state_of(connection: HTTPConnection) -> GatewayState:
    state: GatewayState = connection.app.state.gateway
    return state
