"""JSON text from a peer, parsed with one set of rules everywhere it arrives.

Tool arguments, StartSession/Ask input, a tool's result on the commander's side: each is
text a peer chose. `json.loads` on it can raise three different things (JSONDecodeError,
ValueError from a constant hook, RecursionError for `[[[[...` nested past the interpreter's
limit) and accepts NaN and Infinity, which are not JSON. Here every bad text is one
`JsonTextError` with a message fit for the peer, and the rest of the code never sees a
RecursionError.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

__all__ = ["JsonTextError", "parse_json", "parse_json_object"]


class JsonTextError(ValueError):
    """The text is not JSON we accept (syntax, NaN/Infinity, nesting, or not an object)."""


def _reject_constant(name: str) -> NoReturn:
    # NaN/Infinity are Python extensions, not JSON; a peer sending them has a bug.
    raise JsonTextError(f"{name} is not a JSON value")


# Built once: json.loads with keyword arguments would build a decoder per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(text: str, what: str) -> Any:
    """The JSON value `text` holds; JsonTextError naming `what` (e.g. "arguments_json")."""
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise JsonTextError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except JsonTextError as exc:
        raise JsonTextError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        # The C scanner recurses once per nesting level: past ~1000 levels it gives up.
        raise JsonTextError(f"{what} is nested too deeply") from None


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """`parse_json`, and the value must be an object."""
    value = parse_json(text, what)
    if type(value) is not dict:
        kind = "null" if value is None else type(value).__name__
        raise JsonTextError(f"{what} must be a JSON object, got {kind}")
    return value
