"""One reader of one session's events for the gateway case (a child process of the bench):
`--mode watch` reads WatchSession directly, `--mode sse` reads the gateway's
`GET /v1/sessions/{id}/events`. Prints `ready` once the first event is in, then, at the end of
the session, one JSON line: events read, receive times of the first and last content event,
and each content event's delivery latency (receipt, this clock, minus the event's `at_ms`,
the dispatcher's clock when it journaled it: one machine, 1 ms resolution)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc
import httpx

from shared import wire


class _Tally:
    def __init__(self) -> None:
        self.events = 0
        self.first_s = 0.0
        self.last_s = 0.0
        self.latencies_ms: list[float] = []
        self.ready = False

    def saw(self, kind: str, at_ms: int) -> None:
        now = time.time()
        self.events += 1
        if not self.ready:
            self.ready = True
            print("ready", flush=True)
        if kind == "content":
            self.first_s = self.first_s or now
            self.last_s = now
            self.latencies_ms.append(now * 1000 - at_ms)

    def result(self) -> dict[str, Any]:
        return {"events": self.events, "first_s": self.first_s, "last_s": self.last_s,
                "latencies_ms": self.latencies_ms}  # fmt: skip


async def _watch(target: str, session_id: str, tally: _Tally) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        call = wire.SessionControlServiceStub(channel).WatchSession(wire.ctl.WatchSessionRequest(session_id=session_id))
        while (response := await call.read()) is not grpc.aio.EOF:
            event = response.event
            tally.saw(event.WhichOneof("event") or "", event.at_ms)


async def _sse(url: str, session_id: str, tally: _Tally) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=None) as client:
        async with client.stream("GET", f"/v1/sessions/{session_id}/events") as response:
            response.raise_for_status()
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind not in ("end", "error"):
                    # the at_ms field without parsing all of it: the JSON is ours, compact
                    data = line[6:]
                    start = data.index('"at_ms":') + 8
                    tally.saw(kind, int(data[start : data.index(",", start)]))
                elif line.startswith("data: ") and kind == "error":
                    raise RuntimeError(f"the stream failed: {line[6:]}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("watch", "sse"), required=True)
    parser.add_argument("--target", required=True, help="HOST:PORT (watch) or the gateway's URL (sse)")
    parser.add_argument("--session", required=True)
    args = parser.parse_args()
    tally = _Tally()
    reader = _watch if args.mode == "watch" else _sse
    try:
        asyncio.run(reader(args.target, args.session, tally))
    except Exception as exc:  # reported, not raised: the bench notes it on the figure
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:500]}), flush=True)
        return 1
    print(json.dumps(tally.result()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
