"""Enum names as operators type and read them: `active`, `live`, `operator`, `tool_call`.

Pure functions over the proto enums (through `shared.wire`): names are case-insensitive and
the proto prefix (`SESSION_STATE_`, `STOP_CODE_`, `EVENT_KIND_`) is optional. Parsers return
the proto's full names (`SESSION_STATE_ACTIVE`), which message constructors accept for enum
fields; a bad name raises `ValueError` whose message lists the accepted ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared import wire
from shared.model import TERMINAL_STATES, SessionState

__all__ = [
    "ENDED_STATES",
    "LIVE_STATES",
    "event_kind_names",
    "kind_name",
    "parse_kinds",
    "parse_states",
    "parse_stop_code",
    "result_name",
    "session_state_names",
    "state_name",
    "state_names_of",
    "stop_code_name",
    "stop_code_names",
]

LIVE_STATES: tuple[SessionState, ...] = tuple(s for s in SessionState if s not in TERMINAL_STATES)
ENDED_STATES: tuple[SessionState, ...] = tuple(s for s in SessionState if s in TERMINAL_STATES)

_STATE_PREFIX = "SESSION_STATE_"
_CODE_PREFIX = "STOP_CODE_"
_KIND_PREFIX = "EVENT_KIND_"
_RESULT_PREFIX = "STOP_RESULT_"


def _short_names(enum: Any, prefix: str) -> list[str]:
    """The enum's names without prefix, lower case, UNSPECIFIED left out."""
    return [name.removeprefix(prefix).lower() for name in enum.keys() if not name.endswith("_UNSPECIFIED")]


def _full_name(enum: Any, prefix: str, text: str, what: str) -> str:
    name = text.strip().upper().replace("-", "_")
    name = prefix + name.removeprefix(prefix)
    if name.endswith("_UNSPECIFIED") or name not in enum.keys():
        accepted = ", ".join(_short_names(enum, prefix))
        raise ValueError(f"unknown {what} {text!r} (one of: {accepted})")
    return name


def _in_enum_order(enum: Any, names: set[str]) -> list[str]:
    return sorted(names, key=lambda name: int(enum.Value(name)))


def session_state_names() -> list[str]:
    """What `--state` accepts: every state, plus `live` and `ended`."""
    return [*_short_names(wire.ctl.SessionState, _STATE_PREFIX), "live", "ended"]


def stop_code_names() -> list[str]:
    return _short_names(wire.pb.StopCode, _CODE_PREFIX)


def event_kind_names() -> list[str]:
    return _short_names(wire.ctl.EventKind, _KIND_PREFIX)


def state_names_of(states: Iterable[SessionState]) -> list[str]:
    """Domain states as the proto's full names, in enum order."""
    return _in_enum_order(wire.ctl.SessionState, {_STATE_PREFIX + state.value for state in states})


def parse_states(values: Iterable[str]) -> list[str]:
    """`--state` values (each may be comma-separated) as full SessionState names, in enum order."""
    names: set[str] = set()
    for value in values:
        for part in value.split(","):
            word = part.strip().lower()
            if word in ("live", "ended"):
                names.update(state_names_of(LIVE_STATES if word == "live" else ENDED_STATES))
            elif word:
                try:
                    names.add(_full_name(wire.ctl.SessionState, _STATE_PREFIX, word, "state"))
                except ValueError:
                    raise ValueError(
                        f"unknown state {part.strip()!r} (one of: {', '.join(session_state_names())})"
                    ) from None
    return _in_enum_order(wire.ctl.SessionState, names)


def parse_stop_code(text: str) -> str:
    """A StopCode name (`operator`, `POLICY_VIOLATION`, `stop_code_timeout`) as its full name."""
    return _full_name(wire.pb.StopCode, _CODE_PREFIX, text, "stop code")


def parse_kinds(values: Iterable[str]) -> list[str]:
    """`--kind` values (each may be comma-separated) as full EventKind names, in enum order."""
    names = {
        _full_name(wire.ctl.EventKind, _KIND_PREFIX, part, "event kind")
        for value in values
        for part in value.split(",")
        if part.strip()
    }
    return _in_enum_order(wire.ctl.EventKind, names)


def _name(enum: Any, prefix: str, number: int) -> str:
    try:
        return str(enum.Name(number)).removeprefix(prefix)
    except ValueError:  # a newer dispatcher's value this build does not know
        return f"{prefix}{number}"


def state_name(number: int) -> str:
    """`ACTIVE`, `STOPPED`... (`UNSPECIFIED` for 0)."""
    return _name(wire.ctl.SessionState, _STATE_PREFIX, number)


def stop_code_name(number: int) -> str:
    return _name(wire.pb.StopCode, _CODE_PREFIX, number)


def kind_name(number: int) -> str:
    return _name(wire.ctl.EventKind, _KIND_PREFIX, number)


def result_name(number: int) -> str:
    return _name(wire.ctl.StopResult, _RESULT_PREFIX, number)
