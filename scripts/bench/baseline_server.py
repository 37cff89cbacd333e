"""The bare baseline: a minimal grpc.aio servicer of the same `AgentInteraction.ChatStream`.

It does the least a server of this contract can do, so that "ours / baseline" prices
everything the dispatcher adds (session state machine, policies, journal, tool executor,
outbox, timers, sparse acks, control plane bookkeeping):

- Hello          -> a Welcome carrying only the session id (the load client waits for it);
- content        -> nothing, except: a text containing the stop marker -> a StopSignal at once,
                    and from then on every packet but StopConfirm is ignored;
- tool_call      -> Ack(seq), then a ToolCallResult echoing the arguments (the dispatcher also
                    acks every tool call at once, so both send two packets per call);
- StopConfirm    -> the stream ends;
- end of upstream -> one final Ack(last seq), then the stream ends.

Run as `python -m scripts.bench.baseline_server --listen 127.0.0.1:0 --ready-file F`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from shared import wire

__all__ = ["BareServicer", "main"]


class BareServicer(wire.AgentInteractionServicer):  # type: ignore[misc]
    def __init__(self, marker: str) -> None:
        self._marker = marker

    async def ChatStream(  # noqa: N802 - the proto's name
        self, request_iterator: AsyncIterator[wire.pb.UpstreamPacket], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[wire.pb.DownstreamPacket]:
        last_seq = 0
        stopped = False
        async for packet in request_iterator:
            last_seq = packet.seq or last_seq + 1
            kind = packet.WhichOneof("payload")
            if stopped:
                if kind == "stop_confirm":
                    return
                continue
            if kind == "content":
                if self._marker in packet.content.text:
                    stopped = True
                    stop = wire.StopSignal(
                        reason="content matched the stop marker",
                        code=wire.pb.STOP_CODE_POLICY_VIOLATION,
                        stop_id=f"{packet.session_id}-stop",
                        issued_at_ms=time.time_ns() // 1_000_000,
                    )
                    yield wire.DownstreamPacket(stop=stop)
            elif kind == "tool_call":
                call = packet.tool_call
                yield wire.DownstreamPacket(ack=wire.Ack(seq=last_seq))
                result = wire.ToolCallResult(
                    tool_name=call.tool_name, result_json=call.arguments_json, call_id=call.call_id
                )
                yield wire.DownstreamPacket(tool_result=result)
            elif kind == "hello":
                yield wire.DownstreamPacket(welcome=wire.Welcome(session_id=packet.hello.session_id))
        yield wire.DownstreamPacket(ack=wire.Ack(seq=last_seq))


async def serve(listen: str, ready_file: Path, marker: str, max_concurrent_streams: int) -> None:
    options = [("grpc.max_concurrent_streams", max_concurrent_streams)] if max_concurrent_streams else []
    server = grpc.aio.server(options=options)
    wire.add_servicer(BareServicer(marker), server)
    port = server.add_insecure_port(listen)
    await server.start()
    host = listen.rsplit(":", 1)[0]
    temporary = ready_file.with_suffix(".tmp")
    temporary.write_text(f"{host}:{port}")
    temporary.replace(ready_file)  # readers never see a half-written file
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop(grace=1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--marker", default="BENCHSTOP", help="content containing this word is stopped")
    parser.add_argument("--max-concurrent-streams", type=int, default=0, help="per connection (0 = grpc default)")
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=False, help="run on uvloop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.listen, args.ready_file, args.marker, args.max_concurrent_streams))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
