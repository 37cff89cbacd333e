"""The limits that stop a session when time runs out (wall clock, the caller's deadline, idle),
and the other per-packet arithmetic of the session machine: its Ack interval, its seq rule.

Sans-IO, a part of the session machine: deadlines are monotonic seconds handed in by the
caller, so tests drive time by passing numbers.
"""

from __future__ import annotations

import zlib

from dispatcher.config import PolicyConfig
from shared.errors import ProtocolViolation
from shared.model import StopCode, StopInfo

__all__ = ["TimeLimits", "ack_interval_s", "checked_seq"]


class TimeLimits:
    __slots__ = ("_caller_deadline", "_caller_hop", "_idle_s", "_max_session_s", "_wall_deadline")

    def __init__(self, config: PolicyConfig, now: float) -> None:
        self._max_session_s = config.max_session_s
        self._wall_deadline: float | None = now + config.max_session_s if config.max_session_s else None
        self._idle_s = config.idle_timeout_s
        self._caller_deadline: float | None = None
        self._caller_hop = ""

    def set_caller_deadline(self, deadline: float, caller_hop: str) -> None:
        self._caller_deadline = deadline
        self._caller_hop = caller_hop

    def due(self, now: float, last_activity: float, tools_running: bool) -> StopInfo | None:
        """The stop a limit calls for at `now`, if any (the wall clock first)."""
        if self._wall_deadline is not None and now >= self._wall_deadline:
            return StopInfo(
                code=StopCode.TIMEOUT,
                reason="session wall-clock limit reached",
                cause=f"limit=max_session_s value={self._max_session_s:g}",
                path=("timer:max_session_s",),
            )
        if self._caller_deadline is not None and now >= self._caller_deadline:
            return StopInfo(code=StopCode.TIMEOUT, reason="the caller's deadline passed", path=(self._caller_hop,))
        idle = self._idle_deadline(last_activity, tools_running)
        if idle is not None and now >= idle:
            return StopInfo(
                code=StopCode.IDLE_TIMEOUT,
                reason="commander idle for too long",
                cause=f"limit=idle_timeout_s value={self._idle_s:g}",
                path=("timer:idle_timeout_s",),
            )
        return None

    def next_deadline(self, last_activity: float, tools_running: bool) -> float | None:
        idle = self._idle_deadline(last_activity, tools_running)
        candidates = [d for d in (self._wall_deadline, self._caller_deadline, idle) if d is not None]
        return min(candidates) if candidates else None

    def _idle_deadline(self, last_activity: float, tools_running: bool) -> float | None:
        # A session waiting for its own tool calls is not idle: the commander waits on us.
        if not self._idle_s or tools_running:
            return None
        return last_activity + self._idle_s


def ack_interval_s(session_id: str, ack_interval_ms: int) -> float:
    """The session's own Ack interval: spread over [T/2, T] by its id (deterministically).
    Sessions opened together (a reconnect storm, a benchmark) would otherwise ack in the same
    instant every T, a burst of downstream writes for both ends. Earlier than T is within the
    contract: T is how long an Ack may wait at most."""
    spread = zlib.crc32(session_id.encode()) / 0xFFFFFFFF
    return ack_interval_ms / 1000 * (0.5 + 0.5 * spread)


def checked_seq(seq: int, last_seq: int, sequenced: bool) -> tuple[int, bool]:
    """A packet's seq when it is not simply above the last one (the machine checks that fast
    path inline): 0 gets the next number unless the session numbers its packets; a repeat or
    a regression is a violation. Returns (seq in force, whether the session is sequenced)."""
    if seq:
        if seq <= last_seq:
            raise ProtocolViolation(
                f"seq {seq} after seq {last_seq}: seq must strictly increase within a session", "SEQ_REGRESSION"
            )
        return seq, True
    if sequenced:
        raise ProtocolViolation(
            f"packet without seq after seq {last_seq}: this session numbers its packets", "SEQ_MISSING"
        )
    return last_seq + 1, False
