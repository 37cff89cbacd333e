"""`python -m scripts.metrics_cost`: what `--metrics-listen` costs per upstream packet, in process.

1. The interceptor's counting wrapper around a request stream, per message (timeit: an async
   iterator of N messages read directly, then through the wrapper; best of R runs).
2. The same around a response stream (the wrapper the interceptor puts around an async generator).
3. End to end in one process: a real dispatcher on 127.0.0.1:0 and one RawSession-style client
   on a real channel writing N content packets, metrics off and on alternated: the process's CPU
   time per packet (client and server together: the client's share is the same both ways) and
   packets/s.
The bench case `metrics` (python -m scripts.bench --only metrics) measures the same with real
processes, the dispatcher with and without --metrics-listen.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from dispatcher.app import Dispatcher
from dispatcher.config import DispatcherConfig, PolicyConfig
from dispatcher.metrics.grpc_server import GrpcServerMetrics, _Call, _counted, _streaming
from shared import wire
from shared.log import configure_logging
from shared.metrics import MetricsConfig


async def _source(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def _drain(iterator: AsyncIterator[Any]) -> None:
    async for _ in iterator:
        pass


class _Context:
    """Just what the response wrapper reads at the end (a microbenchmark, not a test)."""

    def code(self) -> None:
        return None


def _per_message_ns(n: int, runs: int) -> tuple[float, float, float, float]:
    async def plain() -> float:
        started = time.perf_counter_ns()
        await _drain(_source(n))
        return (time.perf_counter_ns() - started) / n

    async def counted_requests() -> float:
        started = time.perf_counter_ns()
        await _drain(_counted(_source(n), _Call(0)))
        return (time.perf_counter_ns() - started) / n

    metrics = GrpcServerMetrics(CollectorRegistry())
    handler = grpc.stream_stream_rpc_method_handler(lambda r, c: r)
    method = metrics.method("/bench.Service/Method", handler)

    async def responses(_request: Any, _context: Any) -> AsyncIterator[int]:
        async for i in _source(n):
            yield i

    wrapped = _streaming(responses, method, 1)

    async def counted_responses() -> float:
        started = time.perf_counter_ns()
        await _drain(wrapped(None, _Context()))
        return (time.perf_counter_ns() - started) / n

    async def best(measure: Any) -> float:
        return min([await measure() for _ in range(runs)])

    async def all_four() -> tuple[float, float, float, float]:
        base = await best(plain)
        return base, await best(counted_requests), base, await best(counted_responses)

    return asyncio.run(all_four())


async def _end_to_end(packets: int, metrics_on: bool) -> tuple[float, float]:
    """(process CPU µs per packet, packets/s) of one run."""
    config = DispatcherConfig.for_tests(
        policy=PolicyConfig(max_session_s=0, idle_timeout_s=0),
        metrics=MetricsConfig(listen="127.0.0.1:0" if metrics_on else ""),
    )
    dispatcher = Dispatcher(config)
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    class Started:
        def started(self, value: str) -> None:
            ready.set_result(value)

    serving = asyncio.create_task(dispatcher.serve(task_status=Started()))
    address = await ready
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = wire.AgentInteractionStub(channel).ChatStream()
            await call.write(wire.pb.UpstreamPacket(seq=1, hello=wire.pb.Hello(session_id="cost")))
            await call.read()  # the Welcome
            started, cpu_started = time.perf_counter(), time.process_time()
            for seq in range(2, packets + 2):
                await call.write(wire.pb.UpstreamPacket(seq=seq, content=wire.pb.ContentChunk(text="tok ")))
            await call.write(wire.pb.UpstreamPacket(seq=packets + 2, content=wire.pb.ContentChunk(is_finish=True)))
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        dispatcher.request_shutdown("measured")
        await serving
    return cpu / packets * 1e6, packets / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    configure_logging("warning", json=True)
    base_in, counted_in, base_out, counted_out = _per_message_ns(args.messages, args.runs)
    print(f"request stream: {base_in:.0f} ns/message plain, {counted_in:.0f} counted: +{counted_in - base_in:.0f} ns")
    extra_out = counted_out - base_out
    print(f"response stream: {base_out:.0f} ns/message plain, {counted_out:.0f} counted: +{extra_out:.0f} ns")
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for pair in range(args.pairs):
        for on in (False, True) if pair % 2 == 0 else (True, False):
            runs[on].append(asyncio.run(_end_to_end(args.packets, on)))
    for on in (False, True):
        cpu = sorted(run[0] for run in runs[on])
        rates = sorted(run[1] for run in runs[on])
        print(
            f"end to end, metrics {'on ' if on else 'off'}: CPU {cpu[0]:.0f}-{cpu[-1]:.0f} µs/packet "
            f"(median {cpu[len(cpu) // 2]:.0f}), {rates[0]:,.0f}-{rates[-1]:,.0f} packets/s "
            f"(median {rates[len(rates) // 2]:,.0f})"
        )


if __name__ == "__main__":
    main()
