from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ToolCallFate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_CALL_FATE_UNSPECIFIED: _ClassVar[ToolCallFate]
    TOOL_CALL_FATE_ABANDONED: _ClassVar[ToolCallFate]
    TOOL_CALL_FATE_RESULT_IGNORED: _ClassVar[ToolCallFate]

class StopCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_CODE_UNSPECIFIED: _ClassVar[StopCode]
    STOP_CODE_USER_CANCEL: _ClassVar[StopCode]
    STOP_CODE_POLICY_VIOLATION: _ClassVar[StopCode]
    STOP_CODE_BUDGET_EXCEEDED: _ClassVar[StopCode]
    STOP_CODE_OPERATOR: _ClassVar[StopCode]
    STOP_CODE_SHUTDOWN: _ClassVar[StopCode]
    STOP_CODE_TIMEOUT: _ClassVar[StopCode]
    STOP_CODE_IDLE_TIMEOUT: _ClassVar[StopCode]

class ToolErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_ERROR_CODE_UNSPECIFIED: _ClassVar[ToolErrorCode]
    TOOL_ERROR_CODE_UNKNOWN_TOOL: _ClassVar[ToolErrorCode]
    TOOL_ERROR_CODE_INVALID_ARGUMENTS: _ClassVar[ToolErrorCode]
    TOOL_ERROR_CODE_TIMEOUT: _ClassVar[ToolErrorCode]
    TOOL_ERROR_CODE_FAILED: _ClassVar[ToolErrorCode]
    TOOL_ERROR_CODE_CANCELLED: _ClassVar[ToolErrorCode]
    TOOL_ERROR_CODE_RESULT_TOO_LARGE: _ClassVar[ToolErrorCode]
    TOOL_ERROR_CODE_DENIED: _ClassVar[ToolErrorCode]
TOOL_CALL_FATE_UNSPECIFIED: ToolCallFate
TOOL_CALL_FATE_ABANDONED: ToolCallFate
TOOL_CALL_FATE_RESULT_IGNORED: ToolCallFate
STOP_CODE_UNSPECIFIED: StopCode
STOP_CODE_USER_CANCEL: StopCode
STOP_CODE_POLICY_VIOLATION: StopCode
STOP_CODE_BUDGET_EXCEEDED: StopCode
STOP_CODE_OPERATOR: StopCode
STOP_CODE_SHUTDOWN: StopCode
STOP_CODE_TIMEOUT: StopCode
STOP_CODE_IDLE_TIMEOUT: StopCode
TOOL_ERROR_CODE_UNSPECIFIED: ToolErrorCode
TOOL_ERROR_CODE_UNKNOWN_TOOL: ToolErrorCode
TOOL_ERROR_CODE_INVALID_ARGUMENTS: ToolErrorCode
TOOL_ERROR_CODE_TIMEOUT: ToolErrorCode
TOOL_ERROR_CODE_FAILED: ToolErrorCode
TOOL_ERROR_CODE_CANCELLED: ToolErrorCode
TOOL_ERROR_CODE_RESULT_TOO_LARGE: ToolErrorCode
TOOL_ERROR_CODE_DENIED: ToolErrorCode

class UpstreamPacket(_message.Message):
    __slots__ = ("session_id", "timestamp", "thought", "content", "tool_call", "error", "hello", "stop_confirm", "usage", "seq", "downstream_ack")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    THOUGHT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    STOP_CONFIRM_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DOWNSTREAM_ACK_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    timestamp: int
    thought: ThoughtChain
    content: ContentChunk
    tool_call: ToolCallRequest
    error: ErrorSignal
    hello: Hello
    stop_confirm: StopConfirm
    usage: Usage
    seq: int
    downstream_ack: int
    def __init__(self, session_id: _Optional[str] = ..., timestamp: _Optional[int] = ..., thought: _Optional[_Union[ThoughtChain, _Mapping]] = ..., content: _Optional[_Union[ContentChunk, _Mapping]] = ..., tool_call: _Optional[_Union[ToolCallRequest, _Mapping]] = ..., error: _Optional[_Union[ErrorSignal, _Mapping]] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., stop_confirm: _Optional[_Union[StopConfirm, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., seq: _Optional[int] = ..., downstream_ack: _Optional[int] = ...) -> None: ...

class ThoughtChain(_message.Message):
    __slots__ = ("step_name", "delta")
    STEP_NAME_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    step_name: str
    delta: str
    def __init__(self, step_name: _Optional[str] = ..., delta: _Optional[str] = ...) -> None: ...

class ContentChunk(_message.Message):
    __slots__ = ("text", "is_finish")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IS_FINISH_FIELD_NUMBER: _ClassVar[int]
    text: str
    is_finish: bool
    def __init__(self, text: _Optional[str] = ..., is_finish: _Optional[bool] = ...) -> None: ...

class ToolCallRequest(_message.Message):
    __slots__ = ("tool_name", "arguments_json", "call_id", "timeout_ms")
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    tool_name: str
    arguments_json: str
    call_id: str
    timeout_ms: int
    def __init__(self, tool_name: _Optional[str] = ..., arguments_json: _Optional[str] = ..., call_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ErrorSignal(_message.Message):
    __slots__ = ("code", "message", "seq", "call_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    seq: int
    call_id: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., seq: _Optional[int] = ..., call_id: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("session_id", "agent_name", "agent_version", "features", "awaits_assignment", "tools", "resume")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    AWAITS_ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    agent_name: str
    agent_version: str
    features: _containers.RepeatedScalarFieldContainer[str]
    awaits_assignment: bool
    tools: _containers.RepeatedScalarFieldContainer[str]
    resume: Resume
    def __init__(self, session_id: _Optional[str] = ..., agent_name: _Optional[str] = ..., agent_version: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., awaits_assignment: _Optional[bool] = ..., tools: _Optional[_Iterable[str]] = ..., resume: _Optional[_Union[Resume, _Mapping]] = ...) -> None: ...

class Resume(_message.Message):
    __slots__ = ("last_downstream_seq", "last_upstream_seq")
    LAST_DOWNSTREAM_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_UPSTREAM_SEQ_FIELD_NUMBER: _ClassVar[int]
    last_downstream_seq: int
    last_upstream_seq: int
    def __init__(self, last_downstream_seq: _Optional[int] = ..., last_upstream_seq: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "model", "estimated")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    model: str
    estimated: bool
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., model: _Optional[str] = ..., estimated: _Optional[bool] = ...) -> None: ...

class StopConfirm(_message.Message):
    __slots__ = ("stop_id", "last_seq", "pending_tool_calls", "halt_us", "discarded_packets")
    STOP_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    PENDING_TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    HALT_US_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_PACKETS_FIELD_NUMBER: _ClassVar[int]
    stop_id: str
    last_seq: int
    pending_tool_calls: _containers.RepeatedCompositeFieldContainer[PendingToolCall]
    halt_us: int
    discarded_packets: int
    def __init__(self, stop_id: _Optional[str] = ..., last_seq: _Optional[int] = ..., pending_tool_calls: _Optional[_Iterable[_Union[PendingToolCall, _Mapping]]] = ..., halt_us: _Optional[int] = ..., discarded_packets: _Optional[int] = ...) -> None: ...

class PendingToolCall(_message.Message):
    __slots__ = ("call_id", "tool_name", "fate")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    FATE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    tool_name: str
    fate: ToolCallFate
    def __init__(self, call_id: _Optional[str] = ..., tool_name: _Optional[str] = ..., fate: _Optional[_Union[ToolCallFate, str]] = ...) -> None: ...

class DownstreamPacket(_message.Message):
    __slots__ = ("ack", "stop", "tool_result", "welcome", "error", "assignment", "seq")
    ACK_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    stop: StopSignal
    tool_result: ToolCallResult
    welcome: Welcome
    error: ErrorSignal
    assignment: Assignment
    seq: int
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., stop: _Optional[_Union[StopSignal, _Mapping]] = ..., tool_result: _Optional[_Union[ToolCallResult, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., error: _Optional[_Union[ErrorSignal, _Mapping]] = ..., assignment: _Optional[_Union[Assignment, _Mapping]] = ..., seq: _Optional[int] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("session_id", "input_text", "input_json", "metadata", "started_by", "deadline_ms", "trace_context")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_TEXT_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    STARTED_BY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    input_text: str
    input_json: str
    metadata: _containers.ScalarMap[str, str]
    started_by: str
    deadline_ms: int
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, session_id: _Optional[str] = ..., input_text: _Optional[str] = ..., input_json: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., started_by: _Optional[str] = ..., deadline_ms: _Optional[int] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class StopSignal(_message.Message):
    __slots__ = ("reason", "code", "cause", "path", "stop_id", "issued_at_ms", "grace_ms")
    REASON_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STOP_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    code: StopCode
    cause: str
    path: _containers.RepeatedScalarFieldContainer[str]
    stop_id: str
    issued_at_ms: int
    grace_ms: int
    def __init__(self, reason: _Optional[str] = ..., code: _Optional[_Union[StopCode, str]] = ..., cause: _Optional[str] = ..., path: _Optional[_Iterable[str]] = ..., stop_id: _Optional[str] = ..., issued_at_ms: _Optional[int] = ..., grace_ms: _Optional[int] = ...) -> None: ...

class ToolCallResult(_message.Message):
    __slots__ = ("tool_name", "result_json", "call_id", "error", "execution_time_us")
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIME_US_FIELD_NUMBER: _ClassVar[int]
    tool_name: str
    result_json: str
    call_id: str
    error: ToolError
    execution_time_us: int
    def __init__(self, tool_name: _Optional[str] = ..., result_json: _Optional[str] = ..., call_id: _Optional[str] = ..., error: _Optional[_Union[ToolError, _Mapping]] = ..., execution_time_us: _Optional[int] = ...) -> None: ...

class ToolError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: ToolErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[ToolErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "dispatcher_id", "features", "limits", "tools", "resumed", "last_upstream_seq", "resume_window_s")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DISPATCHER_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    LAST_UPSTREAM_SEQ_FIELD_NUMBER: _ClassVar[int]
    RESUME_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    dispatcher_id: str
    features: _containers.RepeatedScalarFieldContainer[str]
    limits: SessionLimits
    tools: _containers.RepeatedCompositeFieldContainer[ToolSpec]
    resumed: bool
    last_upstream_seq: int
    resume_window_s: int
    def __init__(self, session_id: _Optional[str] = ..., dispatcher_id: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[SessionLimits, _Mapping]] = ..., tools: _Optional[_Iterable[_Union[ToolSpec, _Mapping]]] = ..., resumed: _Optional[bool] = ..., last_upstream_seq: _Optional[int] = ..., resume_window_s: _Optional[int] = ...) -> None: ...

class ToolSpec(_message.Message):
    __slots__ = ("name", "description", "parameters_json_schema", "requires_approval")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters_json_schema: str
    requires_approval: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters_json_schema: _Optional[str] = ..., requires_approval: _Optional[bool] = ...) -> None: ...

class SessionLimits(_message.Message):
    __slots__ = ("max_receive_message_bytes", "max_send_message_bytes", "max_content_chars", "max_thought_chars", "max_tool_calls", "max_session_s", "idle_timeout_s", "max_concurrent_tool_calls", "stop_grace_ms", "ack_every_packets", "ack_interval_ms")
    MAX_RECEIVE_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SEND_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTENT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_THOUGHT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSION_S_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    STOP_GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    ACK_EVERY_PACKETS_FIELD_NUMBER: _ClassVar[int]
    ACK_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    max_receive_message_bytes: int
    max_send_message_bytes: int
    max_content_chars: int
    max_thought_chars: int
    max_tool_calls: int
    max_session_s: int
    idle_timeout_s: int
    max_concurrent_tool_calls: int
    stop_grace_ms: int
    ack_every_packets: int
    ack_interval_ms: int
    def __init__(self, max_receive_message_bytes: _Optional[int] = ..., max_send_message_bytes: _Optional[int] = ..., max_content_chars: _Optional[int] = ..., max_thought_chars: _Optional[int] = ..., max_tool_calls: _Optional[int] = ..., max_session_s: _Optional[int] = ..., idle_timeout_s: _Optional[int] = ..., max_concurrent_tool_calls: _Optional[int] = ..., stop_grace_ms: _Optional[int] = ..., ack_every_packets: _Optional[int] = ..., ack_interval_ms: _Optional[int] = ...) -> None: ...
