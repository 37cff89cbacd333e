"""The server under test, as the suite's tests see it: options, channels, sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from conformance.client import KitOptions, RawSession, open_channel
from conformance.plugin import KitState

__all__ = ["Target"]


class Target:
    def __init__(self, state: KitState) -> None:
        self.state = state
        self.options: KitOptions = state.options

    @asynccontextmanager
    async def channel(self, options: Sequence[tuple[str, Any]] = ()) -> AsyncIterator[grpc.aio.Channel]:
        """A channel of the test's own (a session left open is cancelled when it closes)."""
        channel = open_channel(self.options, options)
        try:
            yield channel
        finally:
            await channel.close()

    def session(self, channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]] = ()) -> RawSession:
        return RawSession(channel, self.options, metadata)

    def require_stop_word(self) -> str:
        """The content that makes the target stop a session; skips the test when none is configured."""
        if not self.options.stop_word:
            pytest.skip("no stop word configured (--stop-word ''): the kit cannot make the target stop a session")
        return self.options.stop_word
