"""The console scripts' entry points: `dispatcher`, `commander`, `dispatcherctl`, `dispatcher-gateway`.

Each one sets `GRPC_VERBOSITY` (ERROR unless the user set it) *before* grpc is imported, so
grpc's C core does not print its own lines into the scripts' output (it reads the variable
once, when it starts), then runs the script's click group. `--version` comes from the
installed package's metadata.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

__all__ = ["DISTRIBUTION", "commander", "dispatcher", "dispatcherctl", "gateway", "quiet_grpc", "version_option"]

DISTRIBUTION = "southwest-agent-runtime"


def quiet_grpc() -> None:
    """grpc core logs at ERROR only, unless GRPC_VERBOSITY says otherwise (call before importing grpc)."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def version_option() -> Callable[[Any], Any]:
    """`--version`: `<script> <version>` from the package metadata."""
    return click.version_option(package_name=DISTRIBUTION, message="%(prog)s %(version)s")


def dispatcher() -> None:
    quiet_grpc()
    from dispatcher.cli import main

    main(prog_name="dispatcher")


def commander() -> None:
    quiet_grpc()
    from commander.cli import main

    main(prog_name="commander")


def dispatcherctl() -> None:
    quiet_grpc()
    from dispatcherctl.cli import main

    main(prog_name="dispatcherctl")


def gateway() -> None:
    quiet_grpc()
    from gateway.cli import main

    main(prog_name="dispatcher-gateway")
