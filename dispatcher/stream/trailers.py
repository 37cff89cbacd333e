"""How a session's outcome ends its stream: the status, its details and the `x-*` trailers."""

from __future__ import annotations

from typing import Any

import grpc

from dispatcher.boundary import status_code
from dispatcher.core.actions import SessionOutcome
from shared.wire import MetadataKey, encode_metadata_value

__all__ = ["set_final_status"]


def set_final_status(
    context: grpc.aio.ServicerContext[Any, Any], outcome: SessionOutcome | None, session_id: str
) -> None:
    if outcome is None:  # pragma: no cover - the runner always records one
        context.set_code(grpc.StatusCode.INTERNAL)
        context.set_details("session ended without an outcome")
        return
    trailers: list[tuple[str, str]] = [
        (MetadataKey.SESSION_ID, session_id),
        (MetadataKey.SESSION_STATE, outcome.state.value),
    ]
    stop = outcome.stop
    if stop is not None:
        trailers += [
            (MetadataKey.STOP_CODE, stop.code.name),
            (MetadataKey.STOP_REASON, encode_metadata_value(stop.reason)),
            (MetadataKey.STOP_PATH, encode_metadata_value(",".join(stop.path))),
            (MetadataKey.STOP_ID, stop.stop_id),
            (MetadataKey.STOP_CONFIRMED, "true" if outcome.stop_confirmed else "false"),
        ]
        if outcome.stop_to_confirm_ms is not None:
            trailers.append((MetadataKey.STOP_TO_CONFIRM_MS, f"{outcome.stop_to_confirm_ms:.3f}"))
        if stop.cause:
            trailers.append((MetadataKey.STOP_CAUSE, encode_metadata_value(stop.cause)))
    context.set_trailing_metadata(tuple(trailers))
    if outcome.status != "OK":
        context.set_code(status_code(outcome.status))
        if stop is not None:
            context.set_details(f"session {outcome.state.value}: {stop.describe()}")
        else:
            context.set_details(f"session {outcome.state.value}: {outcome.reason}")
