"""A deliberately broken AgentInteraction server, for grading the conformance kit itself.

What it gets wrong, on purpose:
- tool results carry an empty call_id (it ignores ToolCallRequest.call_id) and calls run one
  at a time, inline;
- it never sends a StopSignal, whatever the content;
- it serves neither health nor reflection, and sends no initial metadata.
What it gets right: Hello -> Welcome first, `echo` and `sleep`, an Ack after a tool call and
after is_finish, ending OK on half-close.

usage: python -m tests.conformance_fixtures.broken_server   (prints its port, serves until SIGTERM)
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from shared import wire

MAX_SLEEP_S = 5.0


class BrokenService(wire.AgentInteractionServicer):  # type: ignore[misc]
    async def ChatStream(  # noqa: N802 - the proto's name
        self, request_iterator: AsyncIterator[wire.pb.UpstreamPacket], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[wire.pb.DownstreamPacket]:
        received = 0
        async for packet in request_iterator:
            received += 1
            seq = packet.seq or received
            kind = packet.WhichOneof("payload")
            if kind == "hello":
                welcome = wire.pb.Welcome(
                    session_id=packet.hello.session_id or str(uuid.uuid4()), dispatcher_id="dispatcher:broken"
                )
                yield wire.pb.DownstreamPacket(welcome=welcome)
            elif kind == "tool_call":
                yield wire.pb.DownstreamPacket(ack=wire.pb.Ack(seq=seq))
                yield wire.pb.DownstreamPacket(tool_result=await _run(packet.tool_call))
            elif kind == "content" and packet.content.is_finish:
                yield wire.pb.DownstreamPacket(ack=wire.pb.Ack(seq=seq))


async def _run(call: wire.pb.ToolCallRequest) -> wire.pb.ToolCallResult:
    result = wire.pb.ToolCallResult(tool_name=call.tool_name, call_id="")  # the bug: call_id ignored
    try:
        args = json.loads(call.arguments_json)
    except ValueError:
        args = None
    if call.tool_name == "echo" and isinstance(args, dict):
        result.result_json = json.dumps(args)
    elif call.tool_name == "sleep" and isinstance(args, dict) and isinstance(args.get("seconds"), int | float):
        await asyncio.sleep(min(float(args["seconds"]), MAX_SLEEP_S))
        result.result_json = json.dumps({"slept_s": args["seconds"]})
    else:
        result.error.CopyFrom(wire.pb.ToolError(code=wire.pb.TOOL_ERROR_CODE_FAILED, message="cannot run that"))
    return result


async def main() -> None:
    server = grpc.aio.server()
    wire.add_servicer(BrokenService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=None)


if __name__ == "__main__":
    asyncio.run(main())
