"""The expected-failures file: requirements a target is known to fail, each with a reason.

Format (plain text, UTF-8): one requirement id per line, then the reason; `#` starts a comment.

    # our gateway strips trailers
    STOP-007   trailers are not forwarded by the proxy in front of the server
    KA-001     the load balancer answers pings itself

A listed requirement that fails is reported XFAIL and does not fail the run; a listed
requirement that passes fails the run, so the file cannot go stale.
"""

from __future__ import annotations

from pathlib import Path

from conformance.requirements import BY_ID

__all__ = ["ExpectedFailuresError", "load_expected_failures", "parse_expected_failures"]


class ExpectedFailuresError(ValueError):
    """The expected-failures file is malformed or names an unknown requirement."""


def parse_expected_failures(text: str, source: str = "<text>") -> dict[str, str]:
    """Requirement id -> reason. Unknown or repeated ids are errors (a typo must not hide a failure)."""
    expected: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req_id, _, reason = line.partition(" ")
        req_id = req_id.strip().rstrip(":").upper()
        if req_id not in BY_ID:
            raise ExpectedFailuresError(f"{source}:{number}: unknown requirement id {req_id!r}")
        if req_id in expected:
            raise ExpectedFailuresError(f"{source}:{number}: {req_id} is listed twice")
        expected[req_id] = reason.strip() or "listed as an expected failure"
    return expected


def load_expected_failures(path: str) -> dict[str, str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ExpectedFailuresError(f"cannot read the expected-failures file {path}: {exc}") from exc
    return parse_expected_failures(text, path)
