"""A minimal AgentInteraction server built ONLY from the original published contract.

Like the original article's Go server it knows nothing of Hello, Welcome, seq, call_id
or StopConfirm: packets whose payload it does not know are ignored (and counted), tool
calls are answered in order with ToolCallResult(tool_name, result_json), and an empty
Ack goes out now and then.

Run it as a subprocess with PYTHONPATH=<directory holding the code generated from
tests/contract/original>; never import it into the test process.

usage: original_server.py MODE [STOP_AFTER]
  normal       answer tools, ack every second content chunk, end when the client half-closes
  ack_first    as normal, and answer the very first packet (whatever it is) with an Ack
  stop_linger  after STOP_AFTER content chunks send StopSignal("original stop"), then end
               the RPC once the client half-closes (at most LINGER_S later)
  stop_abrupt  the same stop, then end the RPC at once
  stop_first   answer the very first packet with the stop, then linger like stop_linger

The first stdout line is the bound port. On SIGTERM/SIGINT (or after MAX_LIFETIME_S) the
server stops and prints one JSON line: for every RPC, what it received.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.unknown_fields import UnknownFieldSet
from southwest.ai.agent.v1 import agent_pb2 as pb
from southwest.ai.agent.v1 import agent_pb2_grpc as pb_grpc

MODES = ("normal", "ack_first", "stop_linger", "stop_abrupt", "stop_first")
STOP_REASON = "original stop"
LINGER_S = 3.0
MAX_LIFETIME_S = 60.0  # never outlive a test that forgot us
_END = object()


class OriginalServer(pb_grpc.AgentInteractionServicer):
    def __init__(self, mode: str, stop_after: int) -> None:
        self.mode = mode
        self.stop_after = stop_after
        self.rpcs: list[dict[str, Any]] = []

    async def ChatStream(  # noqa: N802 - the proto's name
        self, request_iterator: AsyncIterator[pb.UpstreamPacket], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DownstreamPacket]:
        record: dict[str, Any] = {
            "kinds": {},  # payload kind -> count, for the kinds this contract knows
            "unknown_payloads": 0,  # packets with no payload this contract knows (Hello, StopConfirm...)
            "unknown_fields": {},  # top-level field number this contract lacks -> packets carrying it
            "session_ids": [],
            "tool_calls": [],
            "is_finish": False,
            "half_closed": False,
            "stop_sent": False,
            "ended": "",
            "cancelled": False,
        }
        self.rpcs.append(record)
        out: asyncio.Queue[Any] = asyncio.Queue(maxsize=256)
        reader = asyncio.create_task(self._read(request_iterator, record, out))
        try:
            while True:
                item = await out.get()
                if item is _END:
                    record["ended"] = "client half-closed"
                    return
                yield item
                if item.HasField("stop"):
                    record["stop_sent"] = True
                    if self.mode != "stop_abrupt":
                        try:
                            await asyncio.wait_for(asyncio.shield(reader), LINGER_S)
                            record["ended"] = "after stop: client half-closed"
                        except TimeoutError:
                            record["ended"] = f"after stop: no half-close within {LINGER_S} s"
                    else:
                        record["ended"] = "right after stop"
                    return
        except asyncio.CancelledError:
            record["cancelled"] = True
            raise
        finally:
            if not reader.done():
                reader.cancel()
                try:
                    await reader
                except (asyncio.CancelledError, Exception):
                    pass

    async def _read(
        self, requests: AsyncIterator[pb.UpstreamPacket], record: dict[str, Any], out: asyncio.Queue[Any]
    ) -> None:
        contents = 0
        stopping = False
        first = True
        async for packet in requests:
            for field in UnknownFieldSet(packet):
                key = str(field.field_number)
                record["unknown_fields"][key] = record["unknown_fields"].get(key, 0) + 1
            if packet.session_id and packet.session_id not in record["session_ids"]:
                record["session_ids"].append(packet.session_id)
            kind = packet.WhichOneof("payload")
            if first and self.mode == "ack_first":
                await out.put(pb.DownstreamPacket(ack=pb.Ack()))
            if first and self.mode == "stop_first":
                stopping = True
                await out.put(pb.DownstreamPacket(stop=pb.StopSignal(reason=STOP_REASON)))
            first = False
            if kind is None:
                record["unknown_payloads"] += 1
                continue
            record["kinds"][kind] = record["kinds"].get(kind, 0) + 1
            if kind == "content" and packet.content.is_finish:
                record["is_finish"] = True
            if stopping:
                continue  # after the stop: counted, never answered
            if kind == "tool_call":
                call = packet.tool_call
                record["tool_calls"].append(call.tool_name)
                result = call.arguments_json if call.tool_name == "echo" else json.dumps({"ok": True})
                await out.put(
                    pb.DownstreamPacket(tool_result=pb.ToolCallResult(tool_name=call.tool_name, result_json=result))
                )
                await out.put(pb.DownstreamPacket(ack=pb.Ack()))
            elif kind == "content":
                contents += 1
                if self.mode in ("stop_linger", "stop_abrupt") and contents == self.stop_after:
                    stopping = True
                    await out.put(pb.DownstreamPacket(stop=pb.StopSignal(reason=STOP_REASON)))
                elif contents % 2 == 0:
                    await out.put(pb.DownstreamPacket(ack=pb.Ack()))
        record["half_closed"] = True
        await out.put(_END)


async def serve(mode: str, stop_after: int) -> None:
    servicer = OriginalServer(mode, stop_after)
    server = grpc.aio.server()
    pb_grpc.add_AgentInteractionServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await asyncio.wait_for(stopping.wait(), MAX_LIFETIME_S)
    except TimeoutError:
        pass
    await server.stop(grace=0.2)
    print(json.dumps({"mode": mode, "rpcs": servicer.rpcs}), flush=True)


def main() -> None:
    mode = sys.argv[1]
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}; one of {MODES}")
    stop_after = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    asyncio.run(serve(mode, stop_after))


if __name__ == "__main__":
    main()
