"""Domain types both processes share: stop codes, session states, stop descriptions.

Plain Python, no grpc and no protobuf: `shared.wire` converts these to and from the
generated messages, so the rest of the code never spells a wire enum.
"""

from __future__ import annotations

import enum
import re
import time
import uuid
from dataclasses import dataclass, field

__all__ = [
    "TERMINAL_STATES",
    "SessionState",
    "StopCode",
    "StopInfo",
    "now_ms",
    "valid_session_id",
]

_SESSION_ID = re.compile(r"[\x21-\x7e]{1,128}")


def valid_session_id(session_id: str) -> bool:
    """1-128 printable ASCII characters, spaces excluded: safe in metadata, logs and paths."""
    return _SESSION_ID.fullmatch(session_id) is not None


def now_ms() -> int:
    """Wall-clock Unix epoch milliseconds (the unit of every *_ms timestamp on the wire)."""
    return time.time_ns() // 1_000_000


class StopCode(enum.Enum):
    """Why a generation was stopped; mirrors the proto's StopCode (names without prefix)."""

    UNSPECIFIED = 0
    USER_CANCEL = 1
    POLICY_VIOLATION = 2
    BUDGET_EXCEEDED = 3
    OPERATOR = 4
    SHUTDOWN = 5
    TIMEOUT = 6
    IDLE_TIMEOUT = 7


class SessionState(enum.Enum):
    """The session lifecycle (docs/architecture.md, "Sessions") plus STOPPING: a stop was sent, not yet confirmed."""

    OPEN = "OPEN"
    ACTIVE = "ACTIVE"
    AWAITING_TOOL = "AWAITING_TOOL"
    STOPPING = "STOPPING"
    FINISHED = "FINISHED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    DETACHED = "DETACHED"  # the stream broke; waiting for the commander to resume (not terminal)


TERMINAL_STATES = frozenset(
    {
        SessionState.FINISHED,
        SessionState.STOPPED,
        SessionState.FAILED,
        SessionState.CANCELLED,
        SessionState.EXPIRED,
    }
)


@dataclass(frozen=True, slots=True)
class StopInfo:
    """One stop order: what, why, and every hop it went through (origin first)."""

    code: StopCode
    reason: str
    cause: str = ""
    path: tuple[str, ...] = ()
    stop_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    issued_at_ms: int = field(default_factory=now_ms)
    grace_ms: int = 0

    def relayed_by(self, hop: str) -> StopInfo:
        """The same stop with `hop` appended to its path."""
        return StopInfo(
            code=self.code,
            reason=self.reason,
            cause=self.cause,
            path=(*self.path, hop),
            stop_id=self.stop_id,
            issued_at_ms=self.issued_at_ms,
            grace_ms=self.grace_ms,
        )

    def with_grace(self, grace_ms: int) -> StopInfo:
        return StopInfo(
            code=self.code,
            reason=self.reason,
            cause=self.cause,
            path=self.path,
            stop_id=self.stop_id,
            issued_at_ms=self.issued_at_ms,
            grace_ms=grace_ms,
        )

    def describe(self) -> str:
        """One line for humans: `POLICY_VIOLATION: reason (cause) via a -> b`."""
        text = f"{self.code.name}: {self.reason}"
        if self.cause:
            text += f" ({self.cause})"
        if self.path:
            text += " via " + " -> ".join(self.path)
        return text
