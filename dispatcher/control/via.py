"""The hops in front of a control-plane caller: who it acts for, origin first.

A caller that relays for someone else (the HTTP gateway: a browser at `http:10.0.0.7:51234`,
relayed by `gateway:gw-1`) sends them as `x-via` metadata, comma-separated, origin first.
They go in front of the caller's own hop in the paths of the stops it causes (a StopSession,
or a StartSession whose call ends first), so a stop's path starts where the stop started.

A control call one dispatcher forwards to another (dispatcher/control/members.py) names the
forwarding dispatcher in `x-dispatcher-forwarded-by`: it goes after the caller's own hop, so a
stop made through replica A for a session on replica C has the path
`operator:alice -> dispatcher:A -> dispatcher:C`.

The hops only describe; they grant nothing: the caller's own hop (its token's role and name)
stays in the path and is the one access is checked against. A malformed header is the
caller's error (INVALID_ARGUMENT), never silently dropped.
"""

from __future__ import annotations

from typing import Any

from dispatcher.auth import Principal
from shared.errors import BadRequest

__all__ = ["FORWARDED_BY", "MAX_VIA_HOPS", "VIA", "caller_path", "via_hops"]

VIA = "x-via"
FORWARDED_BY = "x-dispatcher-forwarded-by"
_FORWARDED = "x-dispatcher-forwarded"  # dispatcher/cluster/peers.py: the mark of a forwarded call
MAX_VIA_HOPS = 4
_MAX_HOP_CHARS = 128


def via_hops(context: Any) -> tuple[str, ...]:
    """The `x-via` hops of the call, origin first; () without the header."""
    values = [v for k, v in context.invocation_metadata() or () if k == VIA and isinstance(v, str)]
    if not values:
        return ()
    return _checked(VIA, tuple(hop.strip() for value in values for hop in value.split(",")))


def forwarded_by(context: Any) -> tuple[str, ...]:
    """The dispatcher that forwarded this call, if it was forwarded; () otherwise."""
    metadata = context.invocation_metadata() or ()
    if not any(k == _FORWARDED for k, _ in metadata):
        return ()
    return _checked(FORWARDED_BY, tuple(v.strip() for k, v in metadata if k == FORWARDED_BY and isinstance(v, str)))


def caller_path(principal: Principal, context: Any) -> tuple[str, ...]:
    """The start of a stop's path for this caller: its `x-via` hops, its own hop, then the
    dispatcher that forwarded its call here."""
    return (*via_hops(context), principal.hop, *forwarded_by(context))


def _checked(header: str, hops: tuple[str, ...]) -> tuple[str, ...]:
    if len(hops) > MAX_VIA_HOPS:
        raise BadRequest(f"{header} has {len(hops)} hops; at most {MAX_VIA_HOPS}")
    for hop in hops:
        if not (0 < len(hop) <= _MAX_HOP_CHARS and hop.isascii() and hop.isprintable() and " " not in hop):
            raise BadRequest(f"{header} hop {hop[:_MAX_HOP_CHARS]!r} must be 1-{_MAX_HOP_CHARS} printable ASCII "
                             "characters without spaces")  # fmt: skip
    return hops
