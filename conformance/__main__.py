"""`python -m conformance --target HOST:PORT ...`: the kit's command line (pytest underneath)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from conformance.client import DEFAULT_STOP_WORD
from conformance.requirements import AREAS, REQUIREMENTS

SUITE = Path(__file__).resolve().parent / "suite"

EPILOG = f"""\
areas: {", ".join(AREAS)}

exit status: 0 when no MUST requirement failed (with --strict: no requirement failed) and no
expected failure passed; 1 otherwise; 2-4 as pytest (interrupted, internal error, usage).
Other arguments (and everything after `--`) go to pytest unchanged, e.g. `-x -v`.
"""


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m conformance",
        description="Grade a server claiming to implement southwest.ai.agent.v1.AgentInteraction, given its address.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", help="HOST:PORT of the server to grade (required unless --list)")
    parser.add_argument(
        "--junit-xml",
        metavar="FILE",
        help="write a JUnit XML report (requirement id and level are properties of each test case)",
    )
    parser.add_argument(
        "--expected-failures",
        metavar="FILE",
        default="",
        help="requirements the target is known to fail, one `ID reason` a line; a listed one that passes fails the run",
    )
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--tls", action="store_true", help="dial with TLS (system roots unless --ca-file)")
    tls.add_argument("--insecure", action="store_true", help="dial in plaintext (the default)")
    parser.add_argument("--ca-file", default="", help="PEM root certificates for --tls")
    parser.add_argument("--cert-file", default="", help="PEM client certificate for --tls (mutual TLS)")
    parser.add_argument("--key-file", default="", help="PEM key of --cert-file")
    parser.add_argument(
        "--token",
        default=os.environ.get("CONFORMANCE_TOKEN", ""),
        help="bearer token sent as `authorization: Bearer T` (default: $CONFORMANCE_TOKEN)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="AREA",
        help="run only these areas (or requirement ids); repeatable or comma-separated",
    )
    parser.add_argument("--strict", action="store_true", help="SHOULD and MAY failures fail the run too")
    parser.add_argument(
        "--stop-word",
        default=DEFAULT_STOP_WORD,
        help="content the target stops with POLICY_VIOLATION (start it with a block pattern "
        f"matching this; default {DEFAULT_STOP_WORD}); '' skips the stop requirements",
    )
    parser.add_argument("--wait-s", type=float, default=10.0, help="bound of every single wait (default 10)")
    parser.add_argument(
        "--keepalive-budget-s",
        type=float,
        default=15.0,
        help="how long the too-frequent pinger may go unrefused (default 15)",
    )
    parser.add_argument("--list", action="store_true", help="list the requirements and exit")
    args, unknown = parser.parse_known_args(argv)
    if not args.list and not args.target:
        parser.error("--target HOST:PORT is required")
    return args, [*unknown, *extra]


def pytest_args(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """The pytest command line: the suite, the plugin, and no configuration file of the caller's project."""
    out = [
        str(SUITE),
        "-p", "conformance.plugin",
        "-c", os.devnull,  # whatever project we run from, its pytest settings do not apply
        "--rootdir", str(SUITE),
        "-p", "no:cacheprovider",
        "-o", "junit_family=xunit1",  # test-case <properties> are valid in xunit1
        "-o", "junit_suite_name=conformance",
        "-rfE",
        "--conformance-target", args.target,
        "--conformance-stop-word", args.stop_word,
        "--conformance-wait-s", str(args.wait_s),
        "--conformance-keepalive-budget-s", str(args.keepalive_budget_s),
    ]  # fmt: skip
    if args.junit_xml:
        out += ["--junit-xml", args.junit_xml]
    if args.expected_failures:
        out += ["--conformance-expected-failures", args.expected_failures]
    if args.tls:
        out.append("--conformance-tls")
    if args.ca_file:
        out += ["--conformance-ca-file", args.ca_file]
    if args.cert_file:
        out += ["--conformance-cert-file", args.cert_file]
    if args.key_file:
        out += ["--conformance-key-file", args.key_file]
    if args.token:
        out += ["--conformance-token", args.token]
    for only in args.only:
        out += ["--conformance-only", only]
    if args.strict:
        out.append("--conformance-strict")
    return out + list(extra)


def list_requirements() -> None:
    for r in REQUIREMENTS:
        print(f"{r.id:<11} {r.level.value:<6} {r.sentence}")


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        list_requirements()
        return 0
    try:
        import pytest
    except ImportError:
        print("the conformance kit runs on pytest: pip install 'pytest>=8.2'", file=sys.stderr)
        return 4
    return int(pytest.main(pytest_args(args, extra)))


if __name__ == "__main__":
    sys.exit(main())
