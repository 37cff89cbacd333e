"""Sans-IO parts of issue 13, fed directly: the commander core's model figures and named
failures, the dispatcher machine's tool catalog, tool subsets, usage sums and token budgets,
the policy tracker, and the tool catalog's wire form."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from commander.actions import Action, Send
from commander.core import CommanderSession
from dispatcher.config import PolicyConfig, SessionConfig
from dispatcher.core.policies import Policy
from dispatcher.core.session import Session
from dispatcher.tools import ToolRegistry, ToolSpec, default_registry
from dispatcher.tools.catalog import ToolCatalog
from shared import wire
from shared.errors import AgentFailure
from shared.model import SessionState, StopCode, StopInfo

pytestmark = pytest.mark.timeout(10)


# -- the commander core ---------------------------------------------------------------------


def running_core(*, tools: Sequence[str] = ()) -> CommanderSession:
    core = CommanderSession(session_id="s1", prompt="p", agent_name="a", agent_version="1", now=0.0, tools=tools)
    welcome = wire.pb.Welcome(session_id="s1", dispatcher_id="dispatcher:test")
    welcome.tools.add(name="echo", description="Echo.", parameters_json_schema='{"type":"object"}')
    core.on_downstream(wire.pb.DownstreamPacket(welcome=welcome), 0.0)
    assert core.start_agent()
    return core


def sent(actions: Sequence[Action]) -> list[wire.pb.UpstreamPacket]:
    return [a.packet for a in actions if isinstance(a, Send)]


def test_the_hello_carries_the_tool_subset() -> None:
    core = CommanderSession(session_id="s1", prompt="p", agent_name="a", agent_version="1", now=0.0,
                            tools=("echo", "clock"))  # fmt: skip
    [hello] = sent(core.start())
    assert list(hello.hello.tools) == ["echo", "clock"]


def test_an_agent_failure_names_its_code_upstream_and_in_the_result() -> None:
    core = running_core()
    [error] = sent(core.on_agent_failed(AgentFailure("MODEL_UNAUTHORIZED", "HTTP 401: bad key"), 1.0))
    assert (error.error.code, error.error.message) == ("MODEL_UNAUTHORIZED", "HTTP 401: bad key")
    core.on_stream_end("OK", "", {}, {})
    result = core.result(now=2.0, packets_sent=2)
    assert result.state is SessionState.FAILED and result.error_code == "MODEL_UNAUTHORIZED"
    assert result.reason == "agent failed: MODEL_UNAUTHORIZED: HTTP 401: bad key"


def test_any_other_exception_is_agent_error() -> None:
    core = running_core()
    [error] = sent(core.on_agent_failed(KeyError("x"), 1.0))
    assert error.error.code == "AGENT_ERROR"


def test_stop_to_abort_is_measured_from_the_stop_to_the_first_model_close_after_it() -> None:
    core = running_core()
    core.on_model_request_closed(0.5)  # a request that ended before any stop: not the stop's doing
    stop = StopInfo(code=StopCode.OPERATOR, reason="r", path=("operator:x",))
    core.on_downstream(wire.pb.DownstreamPacket(stop=wire.stop_to_wire(stop)), 1.0)
    core.on_model_request_closed(1.002)
    core.on_model_request_closed(1.5)  # a later close does not move the figure
    core.on_agent_returned(1.004)
    confirm = sent(core.on_queue_discarded(0))[0].stop_confirm
    core.on_stream_end("ABORTED", "stopped", {}, {})
    result = core.result(now=2.0, packets_sent=3)
    assert result.stop_to_abort_ms == pytest.approx(2.0)
    assert result.stop_to_halt_ms == pytest.approx(4.0) and confirm.halt_us == 4000


def test_without_a_model_request_open_at_the_stop_there_is_no_abort_figure() -> None:
    core = running_core()
    stop = StopInfo(code=StopCode.OPERATOR, reason="r")
    core.on_downstream(wire.pb.DownstreamPacket(stop=wire.stop_to_wire(stop)), 1.0)
    core.on_agent_returned(1.1)
    assert core.result(now=2.0, packets_sent=1).stop_to_abort_ms is None


def test_usage_is_summed_and_goes_upstream_except_in_compatibility_mode() -> None:
    core = running_core()
    assert core.on_usage(wire.pb.Usage(prompt_tokens=10, completion_tokens=3, model="m1"))
    assert core.on_usage(wire.pb.Usage(prompt_tokens=20, completion_tokens=4, reasoning_tokens=1, estimated=True))
    usage = core.result(now=1.0, packets_sent=0).usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens) == (30, 7, 1)
    assert (usage.model_requests, usage.model, usage.estimated) == (2, "m1", True)
    old = CommanderSession(session_id="s1", prompt="p", agent_name="a", agent_version="1", now=0.0)
    old.on_handshake_timeout()
    assert not old.on_usage(wire.pb.Usage(prompt_tokens=1))  # the original contract has no Usage


# -- the dispatcher's session machine -----------------------------------------------------


def machine(*, allowed: frozenset[str] | None = None, **policy: Any) -> Session:
    return Session(
        session_id="s1",
        dispatcher_hop="dispatcher:test",
        config=SessionConfig(ack_every_packets=1000),
        policy=Policy(PolicyConfig(max_session_s=0, idle_timeout_s=0, **policy)),
        limits=wire.pb.SessionLimits(),
        now=0.0,
        catalog=ToolCatalog(default_registry()),
        allowed_tools=allowed,
    )


def up(seq: int, **payload: Any) -> wire.pb.UpstreamPacket:
    return wire.pb.UpstreamPacket(seq=seq, **payload)


def downstream(actions: Sequence[Any], kind: str) -> list[Any]:
    return [getattr(a.packet, kind) for a in actions if hasattr(a, "packet") and a.packet.WhichOneof("signal") == kind]


def test_the_welcome_lists_the_tools_served_with_their_schemas() -> None:
    session = machine()
    [welcome] = downstream(session.on_packet(up(1, hello=wire.pb.Hello(agent_name="x")), 0.1), "welcome")
    names = [tool.name for tool in welcome.tools]
    assert names == sorted(names) and {"calculator", "clock", "echo"} <= set(names)
    calculator = next(tool for tool in welcome.tools if tool.name == "calculator")
    assert json.loads(calculator.parameters_json_schema)["required"] == ["expression"]
    assert calculator.description


def test_a_hello_subset_intersects_the_callers_and_unknown_names_are_reported() -> None:
    session = machine(allowed=frozenset({"echo", "clock"}))
    actions = session.on_packet(up(1, hello=wire.pb.Hello(tools=["echo", "calculator", "ghost"])), 0.1)
    [welcome] = downstream(actions, "welcome")
    assert [tool.name for tool in welcome.tools] == ["echo"]
    [error] = downstream(actions, "error")
    assert error.code == "UNKNOWN_TOOLS" and "ghost" in error.message
    assert actions[0].packet.WhichOneof("signal") == "welcome"  # the Welcome is always first


def test_a_call_outside_the_subset_is_answered_unknown_tool_without_running() -> None:
    session = machine(allowed=frozenset({"echo"}))
    session.on_packet(up(1, hello=wire.pb.Hello()), 0.1)
    call = wire.pb.ToolCallRequest(tool_name="calculator", arguments_json='{"expression":"1"}', call_id="c1")
    actions = session.on_packet(up(2, tool_call=call), 0.2)
    assert not [a for a in actions if type(a).__name__ == "StartTool"]
    [answer] = downstream(actions, "tool_result")
    assert answer.error.code == wire.pb.TOOL_ERROR_CODE_UNKNOWN_TOOL and answer.call_id == "c1"
    assert "not enabled for this session (enabled: echo)" in answer.error.message
    assert session.state is SessionState.ACTIVE and not session.tools.has_running
    allowed = session.on_packet(up(3, tool_call=wire.pb.ToolCallRequest(tool_name="echo", call_id="c2")), 0.3)
    assert [a for a in allowed if type(a).__name__ == "StartTool"]


def test_usage_packets_are_summed_into_the_session_info() -> None:
    session = machine()
    session.on_packet(up(1, usage=wire.pb.Usage(prompt_tokens=10, completion_tokens=5, model="m")), 0.1)
    session.on_packet(up(2, usage=wire.pb.Usage(prompt_tokens=20, completion_tokens=7, reasoning_tokens=2,
                                                estimated=True)), 0.2)  # fmt: skip
    usage = session.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (30, 12, 42)
    assert (usage.reasoning_tokens, usage.model_requests, usage.model, usage.estimated) == (2, 2, "m", True)
    assert session.journal.event(session.journal.last_seq).WhichOneof("event") == "usage"  # type: ignore[union-attr]
    assert session.packets_in["usage"] == 2


@pytest.mark.parametrize(
    ("policy", "cause"),
    [
        ({"max_completion_tokens": 10}, "budget=completion_tokens limit=10 used=12"),
        ({"max_total_tokens": 40}, "budget=total_tokens limit=40 used=42"),
    ],
)
def test_crossing_a_token_budget_is_a_budget_exceeded_stop_with_the_figures(policy: dict[str, int], cause: str) -> None:
    session = machine(**policy)
    assert not downstream(session.on_packet(up(1, usage=wire.pb.Usage(prompt_tokens=10, completion_tokens=5)), 0.1),
                          "stop")  # fmt: skip
    [stop] = downstream(session.on_packet(up(2, usage=wire.pb.Usage(prompt_tokens=20, completion_tokens=7)), 0.2),
                        "stop")  # fmt: skip
    assert stop.code == wire.pb.STOP_CODE_BUDGET_EXCEEDED and stop.cause == cause
    assert session.state is SessionState.STOPPING


def test_token_budgets_off_by_default() -> None:
    tracker = Policy(PolicyConfig()).tracker()
    assert tracker.on_usage(10**9, 10**9) is None


# -- the catalog ---------------------------------------------------------------------------


def test_the_catalog_follows_the_registry_and_marks_approval() -> None:
    registry = ToolRegistry()

    @registry.tool(schema={"type": "object", "properties": {"q": {"type": "string"}}})
    async def search(args: dict[str, Any]) -> Any:
        """Search the web."""
        return args

    catalog = ToolCatalog(registry)
    [spec] = catalog.specs()
    assert (spec.name, spec.description, spec.requires_approval) == ("search", "Search the web.", False)
    assert catalog.specs() is catalog.specs()  # rebuilt only on a change
    registry.approve_matching(["sea*"])
    assert catalog.specs()[0].requires_approval
    registry.register(ToolSpec(name="b", func=search, schema={"type": "object"}))
    assert [s.name for s in catalog.specs()] == ["b", "search"]
    assert [s.name for s in catalog.specs(frozenset({"b", "zzz"}))] == ["b"]
    assert catalog.unknown(["b", "zzz", "aaa"]) == ["aaa", "zzz"]


# -- the model backend's function list ------------------------------------------------------


def test_tool_names_a_model_would_refuse_are_mapped_and_mapped_back() -> None:
    from commander.context import ToolInfo
    from commander.models.openai_chat import _functions

    tools = [
        ToolInfo("fs.read_text_file", "Read a file.", {"type": "object"}),
        ToolInfo("fs_read_text_file", "", {"type": "object"}),
        ToolInfo("echo", "Echo.", {"type": "object", "properties": {}}),
    ]
    functions, back = _functions(tools)
    names = [f["function"]["name"] for f in functions]
    assert names[0] == "fs_read_text_file" and names[1] != names[0] and names[2] == "echo"
    assert {back[name] for name in names} == {"fs.read_text_file", "fs_read_text_file", "echo"}
    assert "description" not in functions[1]["function"] and functions[0]["function"]["description"] == "Read a file."


def test_dispatcherctl_renders_usage_and_tools() -> None:
    from dispatcherctl.render import tool_rows, usage_text

    usage = wire.ctl.SessionUsage(prompt_tokens=80, completion_tokens=18, reasoning_tokens=2, total_tokens=98,
                                  model_requests=2, model="m", estimated=True)  # fmt: skip
    assert (
        usage_text(usage)
        == "80 prompt + 18 completion = 98 (2 reasoning) in 2 model request(s), m, counted by the commander"
    )
    spec = wire.pb.ToolSpec(name="t", description="Does\nthings.", parameters_json_schema="{}", requires_approval=True)
    assert tool_rows([spec]) == [["t", "approval", "Does things.", "{}"]]
