"""`make model-stop-latency`: how fast a stop aborts a real model request, over real processes.

One `dispatcher serve`, and per round one `commander run --model openai:slow` subprocess
against the test suite's OpenAI-compatible server (tests/fake_openai.py: a real HTTP/1.1
server on loopback, streaming one chunk every --chunk-interval-s). Once the model has streamed
some chunks, the session is stopped through the control API (StopSession, as `dispatcherctl
stop` does). Per stop it records the commander's stop->abort (stop received -> model request
closed) and stop->halt from `--json`, the time from the StopSession call to the server seeing
its client go (the server's clock = this process's), and how many chunks the server wrote
after the stop was issued. Not a test: it never fails on timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import grpc

from scripts.bench.procs import BIN, running_dispatcher
from shared import wire
from tests.fake_openai import Reply, content_chunks, fake_openai_in_thread


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stops", type=int, default=30)
    parser.add_argument("--chunk-interval-s", type=float, default=0.02, help="the model's pace (0.02: 50 chunks/s)")
    args = parser.parse_args()
    figures: dict[str, list[float]] = {"stop->abort": [], "stop->halt": [], "StopSession -> client gone": []}
    after: list[int] = []
    with tempfile.TemporaryDirectory() as workdir, running_dispatcher(Path(workdir)) as server:
        for n in range(args.stops):
            slow = Reply(chunks=content_chunks(*(f" w{i}" for i in range(5_000))), delay_s=args.chunk_interval_s)
            with fake_openai_in_thread(slow) as model:
                command = [str(BIN / "commander"), "run", "--target", server.target, "--prompt", "Talk", "--json",
                           "--quiet", "--session-id", f"model-stop-{n}", "--model", "openai:slow", "--base-url",
                           model.base_url]  # fmt: skip
                with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
                    deadline = time.monotonic() + 20
                    while len(model.written) < 30 and time.monotonic() < deadline:
                        time.sleep(0.01)  # sleep-ok: polling another thread's counter in a measurement script
                    with grpc.insecure_channel(server.target) as channel:
                        grpc.channel_ready_future(channel).result(timeout=10)  # connected before the clock starts
                        model.mark_stop()
                        request = wire.ctl.StopSessionRequest(session_id=f"model-stop-{n}", reason="measure")
                        wire.SessionControlServiceStub(channel).StopSession(request, timeout=20)
                    out, _ = proc.communicate(timeout=30)
                result = next(json.loads(line) for line in out.splitlines() if '"SessionResult"' in line)
                figures["stop->abort"].append(result["stop_to_abort_ms"])
                figures["stop->halt"].append(result["stop_to_halt_ms"])
                assert model.disconnected_at is not None and model.stop_marked_at is not None
                figures["StopSession -> client gone"].append((model.disconnected_at - model.stop_marked_at) * 1000)
                after.append(len(model.written_after_stop))
    for name, values in figures.items():
        print(f"{name:28} n={len(values)} p50={statistics.median(values):.3f} ms "
              f"p99={_quantile(values, 0.99):.3f} ms max={max(values):.3f} ms")  # fmt: skip
    print(
        f"chunks written after the stop was issued: {sum(after)} in {sum(1 for a in after if a)} of {len(after)} stops"
    )


if __name__ == "__main__":
    main()
