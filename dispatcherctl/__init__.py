"""`dispatcherctl`: the operator's CLI for a dispatcher's SessionControlService.

It speaks only the control API (and grpc.health.v1) over gRPC: list, show, watch, stop
and start sessions, check health. Nothing here imports the dispatcher's server code.
"""

from __future__ import annotations

import os

# grpc's C core reads this once, when grpc is first imported, and by default logs transport
# events (a failed TLS handshake...) at INFO to stderr: an operator gets one line per error.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

__all__: list[str] = []
