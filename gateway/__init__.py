"""The front door: an HTTP/SSE gateway in front of a dispatcher's control API.

A separate process (`dispatcher-gateway`) that speaks only SessionControlService, like
`dispatcherctl`: sessions as Server-Sent Events (`/v1/sessions`), an OpenAI-compatible
`/v1/chat/completions`, and a browser operator console at `/`. It holds no privilege of its
own: every call carries the HTTP caller's bearer token. Nothing here imports the dispatcher.
"""

from __future__ import annotations

import os

# As in dispatcherctl: grpc's C core reads this once, at import, and would log transport
# events at INFO.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

__all__: list[str] = []
