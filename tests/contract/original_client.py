"""A ChatStream client built ONLY from the original published contract.

It is written the way the original article's Python example used the contract: an async
generator of `UpstreamPacket`s handed to the stub, the `DownstreamPacket`s read with
`async for`. It sends no Hello, no session_id (except in the `session_id` scenario), no
seq and no call_id: it cannot, those fields do not exist in its generated code.

Run it as a subprocess with PYTHONPATH=<directory holding the code generated from
tests/contract/original>; the test process must never import that code (our own
generated code registers the same message names in the default descriptor pool).

usage: original_client.py TARGET SCENARIO      (scenarios: full, ordered, stop, session_id)

Prints one JSON object on stdout: the initial and trailing metadata, the tool results in
arrival order, acks and stops seen, the final status, and any error of the client itself.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from southwest.ai.agent.v1 import agent_pb2 as pb
from southwest.ai.agent.v1 import agent_pb2_grpc as pb_grpc

WAIT_S = 5.0  # every wait of the upstream generator is bounded by this
RPC_DEADLINE_S = 8.0  # and the whole call by this (under the test's 10 s bound on the process)
EXPLICIT_SESSION_ID = "original-client-session-42"
ECHO_ARGS = {"question": "what is 2+3*4?", "nested": {"list": [1, 2, 3]}, "unicode": "héllo"}


class Observed:
    """What came downstream, shared by the reader and the upstream generator."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.tool_results: list[dict[str, Any]] = []
        self.acks = 0
        self.stops: list[str] = []
        self.unknown_signals = 0
        self.sent = 0
        self.errors: list[str] = []
        self.changed = asyncio.Condition()

    async def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(predicate), WAIT_S)
            except TimeoutError:
                raise TimeoutError(f"no {what} within {WAIT_S} s") from None

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


Packet = Callable[..., pb.UpstreamPacket]
Scenario = Callable[[Packet, Observed], AsyncIterator[pb.UpstreamPacket]]


def tool_call(packet: Packet, name: str, args: dict[str, Any]) -> pb.UpstreamPacket:
    return packet(tool_call=pb.ToolCallRequest(tool_name=name, arguments_json=json.dumps(args)))


async def full(packet: Packet, seen: Observed) -> AsyncIterator[pb.UpstreamPacket]:
    """Think, call two tools, use their results in the answer, finish."""
    yield packet(thought=pb.ThoughtChain(step_name="plan", delta="echo the question, then compute 2+3*4"))
    yield tool_call(packet, "echo", ECHO_ARGS)
    yield tool_call(packet, "calculator", {"expression": "2+3*4"})
    await seen.wait_until(lambda: len(seen.tool_results) >= 2, "two tool results")
    value = (seen.tool_results[1]["result"] or {}).get("value")
    yield packet(content=pb.ContentChunk(text="The answer "))
    yield packet(content=pb.ContentChunk(text=f"is {value}."))
    yield packet(content=pb.ContentChunk(text="", is_finish=True))


async def ordered(packet: Packet, seen: Observed) -> AsyncIterator[pb.UpstreamPacket]:
    """A slow call and a fast one back to back, then finish and half-close at once."""
    yield tool_call(packet, "sleep", {"seconds": 0.3})
    yield tool_call(packet, "echo", {"after": "sleep"})
    yield packet(content=pb.ContentChunk(text="done", is_finish=True))


async def stop(packet: Packet, seen: Observed) -> AsyncIterator[pb.UpstreamPacket]:
    """Stream content the dispatcher's block-list matches; after the stop, one late chunk, then half-close."""
    yield packet(thought=pb.ThoughtChain(step_name="plan", delta="answer the question"))
    yield packet(content=pb.ContentChunk(text="Here is the plan: "))
    yield packet(content=pb.ContentChunk(text="do the forbidden thing"))
    await seen.wait_until(lambda: bool(seen.stops), "StopSignal")
    yield packet(content=pb.ContentChunk(text="a late chunk the original client still had"))


async def session_id(packet: Packet, seen: Observed) -> AsyncIterator[pb.UpstreamPacket]:
    """Every packet names the session the client chose."""
    yield packet(thought=pb.ThoughtChain(step_name="plan", delta="say hello"))
    yield tool_call(packet, "echo", {"hello": "world"})
    await seen.wait_until(lambda: len(seen.tool_results) >= 1, "tool result")
    yield packet(content=pb.ContentChunk(text="hello"))
    yield packet(content=pb.ContentChunk(text="", is_finish=True))


SCENARIOS: dict[str, Scenario] = {"full": full, "ordered": ordered, "stop": stop, "session_id": session_id}


def metadata_dict(metadata: Any) -> dict[str, str]:
    return {key: value for key, value in (metadata or ()) if isinstance(value, str)}


async def chat(target: str, scenario: str) -> dict[str, Any]:
    seen = Observed()
    wanted_session = EXPLICIT_SESSION_ID if scenario == "session_id" else ""

    def packet(**payload: Any) -> pb.UpstreamPacket:
        return pb.UpstreamPacket(session_id=wanted_session, timestamp=int(time.time() * 1000), **payload)

    async def upstream() -> AsyncIterator[pb.UpstreamPacket]:
        try:
            async for item in SCENARIOS[scenario](packet, seen):
                seen.sent += 1
                yield item
        except Exception as exc:  # reported in the summary; returning half-closes the call
            seen.errors.append(f"upstream: {type(exc).__name__}: {exc}")

    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.AgentInteractionStub(channel).ChatStream(upstream(), timeout=RPC_DEADLINE_S)
        try:
            async for down in call:
                kind = down.WhichOneof("signal")
                if kind == "tool_result":
                    raw = down.tool_result.result_json
                    seen.tool_results.append(
                        {
                            "tool_name": down.tool_result.tool_name,
                            "result": json.loads(raw) if raw else None,
                            "at_ms": round((time.monotonic() - seen.started) * 1000, 1),
                        }
                    )
                elif kind == "ack":
                    seen.acks += 1
                elif kind == "stop":
                    seen.stops.append(down.stop.reason)
                else:  # a signal newer than the original contract: nothing to do with it
                    seen.unknown_signals += 1
                await seen.notify()
        except grpc.aio.AioRpcError:
            pass  # the status is read below
        code = await call.code()
        return {
            "contract": {
                "upstream_fields": sorted(pb.UpstreamPacket.DESCRIPTOR.fields_by_name),
                "downstream_fields": sorted(pb.DownstreamPacket.DESCRIPTOR.fields_by_name),
                "generated_from": pb.__file__,
            },
            "initial_metadata": metadata_dict(await call.initial_metadata()),
            "trailing_metadata": metadata_dict(await call.trailing_metadata()),
            "tool_results": seen.tool_results,
            "acks": seen.acks,
            "stops": seen.stops,
            "unknown_signals": seen.unknown_signals,
            "sent": seen.sent,
            "code": code.name,
            "details": await call.details() or "",
            "errors": seen.errors,
        }


def main() -> None:
    target, scenario = sys.argv[1], sys.argv[2]
    if scenario not in SCENARIOS:
        raise SystemExit(f"unknown scenario {scenario!r}; one of {sorted(SCENARIOS)}")
    print(json.dumps(asyncio.run(chat(target, scenario))), flush=True)


if __name__ == "__main__":
    main()
