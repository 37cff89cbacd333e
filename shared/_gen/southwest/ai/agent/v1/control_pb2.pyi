from shared._gen.southwest.ai.agent.v1 import agent_pb2 as _agent_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    SESSION_STATE_OPEN: _ClassVar[SessionState]
    SESSION_STATE_ACTIVE: _ClassVar[SessionState]
    SESSION_STATE_AWAITING_TOOL: _ClassVar[SessionState]
    SESSION_STATE_STOPPING: _ClassVar[SessionState]
    SESSION_STATE_FINISHED: _ClassVar[SessionState]
    SESSION_STATE_STOPPED: _ClassVar[SessionState]
    SESSION_STATE_FAILED: _ClassVar[SessionState]
    SESSION_STATE_CANCELLED: _ClassVar[SessionState]
    SESSION_STATE_EXPIRED: _ClassVar[SessionState]
    SESSION_STATE_DETACHED: _ClassVar[SessionState]

class StopResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_RESULT_UNSPECIFIED: _ClassVar[StopResult]
    STOP_RESULT_CONFIRMED: _ClassVar[StopResult]
    STOP_RESULT_NOT_CONFIRMED: _ClassVar[StopResult]
    STOP_RESULT_ALREADY_ENDED: _ClassVar[StopResult]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_THOUGHT: _ClassVar[EventKind]
    EVENT_KIND_CONTENT: _ClassVar[EventKind]
    EVENT_KIND_TOOL_CALL: _ClassVar[EventKind]
    EVENT_KIND_TOOL_RESULT: _ClassVar[EventKind]
    EVENT_KIND_STOP: _ClassVar[EventKind]
    EVENT_KIND_STOP_CONFIRM: _ClassVar[EventKind]
    EVENT_KIND_ERROR: _ClassVar[EventKind]
    EVENT_KIND_STATE_CHANGE: _ClassVar[EventKind]
    EVENT_KIND_TOOL_RESULT_DROPPED: _ClassVar[EventKind]
    EVENT_KIND_APPROVAL_REQUEST: _ClassVar[EventKind]
    EVENT_KIND_APPROVAL_DECISION: _ClassVar[EventKind]
    EVENT_KIND_USAGE: _ClassVar[EventKind]

class DecideResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECIDE_RESULT_UNSPECIFIED: _ClassVar[DecideResult]
    DECIDE_RESULT_DECIDED: _ClassVar[DecideResult]
    DECIDE_RESULT_ALREADY_DECIDED: _ClassVar[DecideResult]
    DECIDE_RESULT_NOT_AWAITING: _ClassVar[DecideResult]
SESSION_STATE_UNSPECIFIED: SessionState
SESSION_STATE_OPEN: SessionState
SESSION_STATE_ACTIVE: SessionState
SESSION_STATE_AWAITING_TOOL: SessionState
SESSION_STATE_STOPPING: SessionState
SESSION_STATE_FINISHED: SessionState
SESSION_STATE_STOPPED: SessionState
SESSION_STATE_FAILED: SessionState
SESSION_STATE_CANCELLED: SessionState
SESSION_STATE_EXPIRED: SessionState
SESSION_STATE_DETACHED: SessionState
STOP_RESULT_UNSPECIFIED: StopResult
STOP_RESULT_CONFIRMED: StopResult
STOP_RESULT_NOT_CONFIRMED: StopResult
STOP_RESULT_ALREADY_ENDED: StopResult
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_THOUGHT: EventKind
EVENT_KIND_CONTENT: EventKind
EVENT_KIND_TOOL_CALL: EventKind
EVENT_KIND_TOOL_RESULT: EventKind
EVENT_KIND_STOP: EventKind
EVENT_KIND_STOP_CONFIRM: EventKind
EVENT_KIND_ERROR: EventKind
EVENT_KIND_STATE_CHANGE: EventKind
EVENT_KIND_TOOL_RESULT_DROPPED: EventKind
EVENT_KIND_APPROVAL_REQUEST: EventKind
EVENT_KIND_APPROVAL_DECISION: EventKind
EVENT_KIND_USAGE: EventKind
DECIDE_RESULT_UNSPECIFIED: DecideResult
DECIDE_RESULT_DECIDED: DecideResult
DECIDE_RESULT_ALREADY_DECIDED: DecideResult
DECIDE_RESULT_NOT_AWAITING: DecideResult

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "state", "commander", "commander_peer", "started_by", "dispatcher_id", "started_at_ms", "last_activity_ms", "packets_in", "packets_out", "tool_calls_running", "tool_calls_done", "packets_dropped", "first_event_seq", "last_event_seq", "outcome", "agent_name", "agent_version", "usage", "resumes", "detached_at_ms")
    class PacketsInEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class PacketsOutEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COMMANDER_FIELD_NUMBER: _ClassVar[int]
    COMMANDER_PEER_FIELD_NUMBER: _ClassVar[int]
    STARTED_BY_FIELD_NUMBER: _ClassVar[int]
    DISPATCHER_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_MS_FIELD_NUMBER: _ClassVar[int]
    PACKETS_IN_FIELD_NUMBER: _ClassVar[int]
    PACKETS_OUT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_DONE_FIELD_NUMBER: _ClassVar[int]
    PACKETS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    FIRST_EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RESUMES_FIELD_NUMBER: _ClassVar[int]
    DETACHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: SessionState
    commander: str
    commander_peer: str
    started_by: str
    dispatcher_id: str
    started_at_ms: int
    last_activity_ms: int
    packets_in: _containers.ScalarMap[str, int]
    packets_out: _containers.ScalarMap[str, int]
    tool_calls_running: int
    tool_calls_done: int
    packets_dropped: int
    first_event_seq: int
    last_event_seq: int
    outcome: SessionOutcome
    agent_name: str
    agent_version: str
    usage: SessionUsage
    resumes: int
    detached_at_ms: int
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[_Union[SessionState, str]] = ..., commander: _Optional[str] = ..., commander_peer: _Optional[str] = ..., started_by: _Optional[str] = ..., dispatcher_id: _Optional[str] = ..., started_at_ms: _Optional[int] = ..., last_activity_ms: _Optional[int] = ..., packets_in: _Optional[_Mapping[str, int]] = ..., packets_out: _Optional[_Mapping[str, int]] = ..., tool_calls_running: _Optional[int] = ..., tool_calls_done: _Optional[int] = ..., packets_dropped: _Optional[int] = ..., first_event_seq: _Optional[int] = ..., last_event_seq: _Optional[int] = ..., outcome: _Optional[_Union[SessionOutcome, _Mapping]] = ..., agent_name: _Optional[str] = ..., agent_version: _Optional[str] = ..., usage: _Optional[_Union[SessionUsage, _Mapping]] = ..., resumes: _Optional[int] = ..., detached_at_ms: _Optional[int] = ...) -> None: ...

class SessionUsage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "total_tokens", "model_requests", "model", "estimated")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    total_tokens: int
    model_requests: int
    model: str
    estimated: bool
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., model_requests: _Optional[int] = ..., model: _Optional[str] = ..., estimated: _Optional[bool] = ...) -> None: ...

class SessionOutcome(_message.Message):
    __slots__ = ("state", "reason", "ended_by", "status", "error_code", "stop", "stop_confirmed", "stop_to_confirm_us", "ended_at_ms")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENDED_BY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    STOP_TO_CONFIRM_US_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    state: SessionState
    reason: str
    ended_by: str
    status: str
    error_code: str
    stop: _agent_pb2.StopSignal
    stop_confirmed: bool
    stop_to_confirm_us: int
    ended_at_ms: int
    def __init__(self, state: _Optional[_Union[SessionState, str]] = ..., reason: _Optional[str] = ..., ended_by: _Optional[str] = ..., status: _Optional[str] = ..., error_code: _Optional[str] = ..., stop: _Optional[_Union[_agent_pb2.StopSignal, _Mapping]] = ..., stop_confirmed: _Optional[bool] = ..., stop_to_confirm_us: _Optional[int] = ..., ended_at_ms: _Optional[int] = ...) -> None: ...

class RunningToolCall(_message.Message):
    __slots__ = ("call_id", "tool_name", "started_at_ms")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    tool_name: str
    started_at_ms: int
    def __init__(self, call_id: _Optional[str] = ..., tool_name: _Optional[str] = ..., started_at_ms: _Optional[int] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("states", "commander", "min_age_s", "max_age_s", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    COMMANDER_FIELD_NUMBER: _ClassVar[int]
    MIN_AGE_S_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_S_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[SessionState]
    commander: str
    min_age_s: int
    max_age_s: int
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[SessionState, str]]] = ..., commander: _Optional[str] = ..., min_age_s: _Optional[int] = ..., max_age_s: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session", "running_tool_calls")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    session: SessionInfo
    running_tool_calls: _containers.RepeatedCompositeFieldContainer[RunningToolCall]
    def __init__(self, session: _Optional[_Union[SessionInfo, _Mapping]] = ..., running_tool_calls: _Optional[_Iterable[_Union[RunningToolCall, _Mapping]]] = ...) -> None: ...

class StopSessionRequest(_message.Message):
    __slots__ = ("session_id", "reason", "code", "cause")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    code: _agent_pb2.StopCode
    cause: str
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ..., code: _Optional[_Union[_agent_pb2.StopCode, str]] = ..., cause: _Optional[str] = ...) -> None: ...

class StopSessionResponse(_message.Message):
    __slots__ = ("session_id", "result", "stop", "stop_to_confirm_us", "outcome")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_TO_CONFIRM_US_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    result: StopResult
    stop: _agent_pb2.StopSignal
    stop_to_confirm_us: int
    outcome: SessionOutcome
    def __init__(self, session_id: _Optional[str] = ..., result: _Optional[_Union[StopResult, str]] = ..., stop: _Optional[_Union[_agent_pb2.StopSignal, _Mapping]] = ..., stop_to_confirm_us: _Optional[int] = ..., outcome: _Optional[_Union[SessionOutcome, _Mapping]] = ...) -> None: ...

class WatchSessionRequest(_message.Message):
    __slots__ = ("session_id", "from_seq", "kinds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    from_seq: int
    kinds: _containers.RepeatedScalarFieldContainer[EventKind]
    def __init__(self, session_id: _Optional[str] = ..., from_seq: _Optional[int] = ..., kinds: _Optional[_Iterable[_Union[EventKind, str]]] = ...) -> None: ...

class WatchSessionResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: SessionEvent
    def __init__(self, event: _Optional[_Union[SessionEvent, _Mapping]] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("session_id", "seq", "at_ms", "packet_seq", "thought", "content", "tool_call", "tool_result", "stop", "stop_confirm", "error", "state_change", "tool_result_dropped", "approval_request", "approval_decision", "usage")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    PACKET_SEQ_FIELD_NUMBER: _ClassVar[int]
    THOUGHT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_CONFIRM_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_DROPPED_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REQUEST_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_DECISION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seq: int
    at_ms: int
    packet_seq: int
    thought: _agent_pb2.ThoughtChain
    content: _agent_pb2.ContentChunk
    tool_call: _agent_pb2.ToolCallRequest
    tool_result: _agent_pb2.ToolCallResult
    stop: _agent_pb2.StopSignal
    stop_confirm: _agent_pb2.StopConfirm
    error: _agent_pb2.ErrorSignal
    state_change: StateChange
    tool_result_dropped: _agent_pb2.ToolCallResult
    approval_request: ApprovalRequest
    approval_decision: ApprovalDecision
    usage: _agent_pb2.Usage
    def __init__(self, session_id: _Optional[str] = ..., seq: _Optional[int] = ..., at_ms: _Optional[int] = ..., packet_seq: _Optional[int] = ..., thought: _Optional[_Union[_agent_pb2.ThoughtChain, _Mapping]] = ..., content: _Optional[_Union[_agent_pb2.ContentChunk, _Mapping]] = ..., tool_call: _Optional[_Union[_agent_pb2.ToolCallRequest, _Mapping]] = ..., tool_result: _Optional[_Union[_agent_pb2.ToolCallResult, _Mapping]] = ..., stop: _Optional[_Union[_agent_pb2.StopSignal, _Mapping]] = ..., stop_confirm: _Optional[_Union[_agent_pb2.StopConfirm, _Mapping]] = ..., error: _Optional[_Union[_agent_pb2.ErrorSignal, _Mapping]] = ..., state_change: _Optional[_Union[StateChange, _Mapping]] = ..., tool_result_dropped: _Optional[_Union[_agent_pb2.ToolCallResult, _Mapping]] = ..., approval_request: _Optional[_Union[ApprovalRequest, _Mapping]] = ..., approval_decision: _Optional[_Union[ApprovalDecision, _Mapping]] = ..., usage: _Optional[_Union[_agent_pb2.Usage, _Mapping]] = ...) -> None: ...

class ApprovalRequest(_message.Message):
    __slots__ = ("call_id", "tool_name", "arguments_json", "timeout_ms")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    tool_name: str
    arguments_json: str
    timeout_ms: int
    def __init__(self, call_id: _Optional[str] = ..., tool_name: _Optional[str] = ..., arguments_json: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ApprovalDecision(_message.Message):
    __slots__ = ("call_id", "approved", "reason", "decided_by", "timed_out")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    approved: bool
    reason: str
    decided_by: str
    timed_out: bool
    def __init__(self, call_id: _Optional[str] = ..., approved: _Optional[bool] = ..., reason: _Optional[str] = ..., decided_by: _Optional[str] = ..., timed_out: _Optional[bool] = ...) -> None: ...

class StateChange(_message.Message):
    __slots__ = ("state", "reason", "outcome")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    state: SessionState
    reason: str
    outcome: SessionOutcome
    def __init__(self, state: _Optional[_Union[SessionState, str]] = ..., reason: _Optional[str] = ..., outcome: _Optional[_Union[SessionOutcome, _Mapping]] = ...) -> None: ...

class StartSessionRequest(_message.Message):
    __slots__ = ("input_text", "input_json", "metadata", "session_id", "wait_for_commander_ms", "kinds", "timeout_ms", "tools")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INPUT_TEXT_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_COMMANDER_MS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    input_text: str
    input_json: str
    metadata: _containers.ScalarMap[str, str]
    session_id: str
    wait_for_commander_ms: int
    kinds: _containers.RepeatedScalarFieldContainer[EventKind]
    timeout_ms: int
    tools: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, input_text: _Optional[str] = ..., input_json: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., session_id: _Optional[str] = ..., wait_for_commander_ms: _Optional[int] = ..., kinds: _Optional[_Iterable[_Union[EventKind, str]]] = ..., timeout_ms: _Optional[int] = ..., tools: _Optional[_Iterable[str]] = ...) -> None: ...

class StartSessionResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: SessionEvent
    def __init__(self, event: _Optional[_Union[SessionEvent, _Mapping]] = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("input_text", "input_json", "metadata", "session_id", "wait_for_commander_ms", "timeout_ms", "tools")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INPUT_TEXT_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_COMMANDER_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    input_text: str
    input_json: str
    metadata: _containers.ScalarMap[str, str]
    session_id: str
    wait_for_commander_ms: int
    timeout_ms: int
    tools: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, input_text: _Optional[str] = ..., input_json: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., session_id: _Optional[str] = ..., wait_for_commander_ms: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., tools: _Optional[_Iterable[str]] = ...) -> None: ...

class DecideToolCallRequest(_message.Message):
    __slots__ = ("session_id", "call_id", "approve", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    call_id: str
    approve: bool
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., call_id: _Optional[str] = ..., approve: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class DecideToolCallResponse(_message.Message):
    __slots__ = ("session_id", "result", "decision")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    result: DecideResult
    decision: ApprovalDecision
    def __init__(self, session_id: _Optional[str] = ..., result: _Optional[_Union[DecideResult, str]] = ..., decision: _Optional[_Union[ApprovalDecision, _Mapping]] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("session_id", "answer", "outcome", "tool_calls")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    answer: str
    outcome: SessionOutcome
    tool_calls: int
    def __init__(self, session_id: _Optional[str] = ..., answer: _Optional[str] = ..., outcome: _Optional[_Union[SessionOutcome, _Mapping]] = ..., tool_calls: _Optional[int] = ...) -> None: ...

class ListToolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListToolsResponse(_message.Message):
    __slots__ = ("tools",)
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[_agent_pb2.ToolSpec]
    def __init__(self, tools: _Optional[_Iterable[_Union[_agent_pb2.ToolSpec, _Mapping]]] = ...) -> None: ...
