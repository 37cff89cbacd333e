"""The only door to the generated code: message classes, stubs, conversions, metadata keys.

Everything else imports wire types from here, never from `shared._gen` directly, so a
regeneration or a package move touches one file.
"""

from __future__ import annotations

from typing import cast
from urllib.parse import quote, unquote

from shared._gen.southwest.ai.agent.v1 import agent_pb2 as pb
from shared._gen.southwest.ai.agent.v1 import agent_pb2_grpc as pb_grpc
from shared._gen.southwest.ai.agent.v1 import control_pb2 as ctl
from shared._gen.southwest.ai.agent.v1 import control_pb2_grpc as ctl_grpc
from shared.model import SessionState, StopCode, StopInfo

__all__ = [
    "CONTROL_SERVICE_NAME",
    "FEATURES",
    "SERVICE_NAME",
    "Ack",
    "ContentChunk",
    "DownstreamPacket",
    "ErrorSignal",
    "Hello",
    "PendingToolCall",
    "SessionControlServiceServicer",
    "SessionControlServiceStub",
    "SessionLimits",
    "StopConfirm",
    "StopSignal",
    "ThoughtChain",
    "ToolCallFate",
    "ToolCallRequest",
    "ToolCallResult",
    "ToolError",
    "ToolErrorCode",
    "UpstreamPacket",
    "Welcome",
    "add_control_servicer",
    "add_servicer",
    "ctl",
    "ctl_grpc",
    "decode_metadata_value",
    "encode_metadata_value",
    "pb",
    "pb_grpc",
    "session_state_from_wire",
    "session_state_to_wire",
    "stop_from_wire",
    "stop_to_wire",
    "tool_call_fate_to_wire",
    "tool_error_code_name",
    "tool_error_code_to_wire",
]

UpstreamPacket = pb.UpstreamPacket
DownstreamPacket = pb.DownstreamPacket
ThoughtChain = pb.ThoughtChain
ContentChunk = pb.ContentChunk
ToolCallRequest = pb.ToolCallRequest
ToolCallResult = pb.ToolCallResult
ToolError = pb.ToolError
ErrorSignal = pb.ErrorSignal
Hello = pb.Hello
Welcome = pb.Welcome
SessionLimits = pb.SessionLimits
Ack = pb.Ack
StopSignal = pb.StopSignal
StopConfirm = pb.StopConfirm
PendingToolCall = pb.PendingToolCall
ToolCallFate = pb.ToolCallFate
ToolErrorCode = pb.ToolErrorCode

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["AgentInteraction"].full_name
AgentInteractionStub = pb_grpc.AgentInteractionStub
AgentInteractionServicer = pb_grpc.AgentInteractionServicer
add_servicer = pb_grpc.add_AgentInteractionServicer_to_server

CONTROL_SERVICE_NAME: str = ctl.DESCRIPTOR.services_by_name["SessionControlService"].full_name
SessionControlServiceStub = ctl_grpc.SessionControlServiceStub
SessionControlServiceServicer = ctl_grpc.SessionControlServiceServicer
add_control_servicer = ctl_grpc.add_SessionControlServiceServicer_to_server

# Protocol features this implementation speaks (Hello.features / Welcome.features).
FEATURES: tuple[str, ...] = ("seq", "call_id", "stop_confirm", "ack")


class MetadataKey:
    """Response metadata keys. Initial: session id. Trailing: how the session ended."""

    SESSION_ID = "x-session-id"
    DISPATCHER_ID = "x-dispatcher-id"
    SESSION_STATE = "x-session-state"
    STOP_CODE = "x-stop-code"
    STOP_REASON = "x-stop-reason"
    STOP_CAUSE = "x-stop-cause"
    STOP_PATH = "x-stop-path"
    STOP_ID = "x-stop-id"
    STOP_CONFIRMED = "x-stop-confirmed"
    STOP_TO_CONFIRM_MS = "x-stop-to-confirm-ms"


def encode_metadata_value(text: str) -> str:
    """Metadata values must be printable ASCII: percent-encode anything else."""
    return quote(text, safe=" !#$&'()*+,/:;=?@[]^_`{|}~-.")


def decode_metadata_value(text: str) -> str:
    return unquote(text)


def stop_to_wire(stop: StopInfo) -> pb.StopSignal:
    return pb.StopSignal(
        reason=stop.reason,
        code=stop.code.value,  # type: ignore[arg-type]  # proto enums are ints on the wire
        cause=stop.cause,
        path=list(stop.path),
        stop_id=stop.stop_id,
        issued_at_ms=stop.issued_at_ms,
        grace_ms=stop.grace_ms,
    )


def stop_from_wire(signal: pb.StopSignal) -> StopInfo:
    """A StopSignal as a StopInfo; an original-contract stop (reason only) is UNSPECIFIED."""
    try:
        code = StopCode(signal.code)
    except ValueError:  # a newer dispatcher's code this build does not know
        code = StopCode.UNSPECIFIED
    return StopInfo(
        code=code,
        reason=signal.reason,
        cause=signal.cause,
        path=tuple(signal.path),
        stop_id=signal.stop_id,
        issued_at_ms=signal.issued_at_ms,
        grace_ms=signal.grace_ms,
    )


def session_state_to_wire(state: SessionState) -> int:
    """A SessionState as the proto's SessionState number (SESSION_STATE_<NAME>)."""
    return int(ctl.SessionState.Value("SESSION_STATE_" + state.value))


def session_state_from_wire(number: int) -> SessionState | None:
    """The proto's SessionState number as a SessionState; None for UNSPECIFIED or unknown."""
    try:
        name = ctl.SessionState.Name(number)
    except ValueError:
        return None
    try:
        return SessionState(name.removeprefix("SESSION_STATE_"))
    except ValueError:
        return None


# The proto's enums carry their type's name as a prefix (buf's ENUM_VALUE_PREFIX rule); the rest
# of the code speaks the bare names ("UNKNOWN_TOOL", "ABANDONED"). These are the only places
# that add or strip a prefix.
_TOOL_ERROR_PREFIX = "TOOL_ERROR_CODE_"
_FATE_PREFIX = "TOOL_CALL_FATE_"


def tool_error_code_to_wire(name: str) -> pb.ToolErrorCode:
    """`"TIMEOUT"` as the proto's ToolErrorCode number; ValueError for a name it lacks."""
    # An int at run time; the stubs type enum fields by the enum's wrapper class.
    return cast("pb.ToolErrorCode", pb.ToolErrorCode.Value(_TOOL_ERROR_PREFIX + name))


def tool_error_code_name(number: int) -> str:
    """The proto's ToolErrorCode number as its bare name; "" for UNSPECIFIED, the number
    itself (as text) for a code a newer peer sent that this build does not know."""
    if not number:
        return ""
    try:
        return str(pb.ToolErrorCode.Name(number)).removeprefix(_TOOL_ERROR_PREFIX)
    except ValueError:
        return str(number)


def tool_call_fate_to_wire(name: str) -> pb.ToolCallFate:
    """`"ABANDONED"` / `"RESULT_IGNORED"` as the proto's ToolCallFate number."""
    return cast("pb.ToolCallFate", pb.ToolCallFate.Value(_FATE_PREFIX + name))
