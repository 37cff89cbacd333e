"""Exit codes and the one place where a gRPC status becomes an operator's one-line error.

`error_for_status` is pure (status code and details in, `CtlError` out) so every message
and exit code is unit-tested without a network.
"""

from __future__ import annotations

import re

import grpc

__all__ = [
    "EXIT_AUTH",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_STOPPED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CtlError",
    "error_for_status",
    "is_transport_failure",
]

EXIT_OK = 0
EXIT_FAILED = 1  # the operation did not succeed: stop not confirmed, session failed, other statuses
EXIT_USAGE = 2  # click's own code for bad flags
EXIT_STOPPED = 2  # `ask`: the session was stopped
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_AUTH = 5
EXIT_INTERRUPTED = 130  # as for a shell command ended by Ctrl-C


class CtlError(Exception):
    """A failure to report to the operator as one line on stderr, with the exit code to use.

    `status` is the gRPC status it came from, if any (watch reads it to tell "fell behind"
    from "out of range").
    """

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, status: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.status = status


# grpc core's wording when no connection could be made (refused, DNS, TLS handshake, no route).
_TRANSPORT_FAILURES = (
    "failed to connect to all addresses",
    "errors resolving",
    "dns resolution failed",
    "name resolution failure",
    "connection refused",
    "handshake failed",
    "no route to host",
)
_LAST_ERROR = re.compile(r"last error: [A-Z_]+: (?:\S+: )?(?P<reason>.+)$")
_RESOLVE = re.compile(r"errors resolving .*: (?P<reason>[^:\]]+)\]?$")


def is_transport_failure(details: str) -> bool:
    """True when an UNAVAILABLE status was made by the client's transport, not sent by a server."""
    lowered = details.lower()
    return any(marker in lowered for marker in _TRANSPORT_FAILURES)


def _transport_reason(details: str) -> str:
    """grpc core's long connection-failure text, shortened to its cause."""
    if match := _LAST_ERROR.search(details):
        return match.group("reason").strip()
    if match := _RESOLVE.search(details):
        return "name resolution failed: " + match.group("reason").strip()
    return details.strip() or "no connection"


def _oneline(text: str) -> str:
    return " ".join(text.split())


def error_for_status(
    code: grpc.StatusCode,
    details: str,
    *,
    target: str,
    session_id: str = "",
    connected: bool = True,
    timeout_s: float | None = None,
) -> CtlError:
    """The operator's line for a failed call to `target` (about `session_id`, if any).

    `connected` says whether the channel ever reached READY: a deadline that passes before
    any connection is an unreachable dispatcher, not a slow one.
    """
    details = _oneline(details or "")
    name = code.name
    if code is grpc.StatusCode.UNAVAILABLE and is_transport_failure(details):
        return CtlError(f"cannot reach dispatcher at {target}: {_transport_reason(details)}", EXIT_UNREACHABLE, code)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {timeout_s:g} s" if timeout_s is not None else ""
        if not connected:
            return CtlError(f"cannot reach dispatcher at {target}: no connection{within}", EXIT_UNREACHABLE, code)
        return CtlError(f"{name}: no answer{within} (raise --timeout)", EXIT_FAILED, code)
    if code is grpc.StatusCode.NOT_FOUND:
        if session_id:
            return CtlError(f"no session {session_id} on {target}", EXIT_NOT_FOUND, code)
        return CtlError(f"{name}: {details or 'not found'}", EXIT_NOT_FOUND, code)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        why = details or "no or unknown token"
        return CtlError(f"authentication failed: {why} (set --token or DISPATCHER_TOKEN)", EXIT_AUTH, code)
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return CtlError(f"permission denied: {details or 'this token may not make the call'}", EXIT_AUTH, code)
    if code is grpc.StatusCode.UNIMPLEMENTED:
        why = details or "method not found"
        return CtlError(f"{name}: {why} (does {target} serve SessionControlService?)", EXIT_FAILED, code)
    return CtlError(f"{name}: {details or '(no details)'}", EXIT_FAILED, code)
