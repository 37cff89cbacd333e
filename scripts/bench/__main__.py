"""`python -m scripts.bench [--quick]`: the benchmark run (make bench / make bench-quick).

Prints each figure as it is measured (ours beside the bare grpc.aio baseline of the same
run), then writes bench/results/<UTC timestamp>-<plan>.json and .md and copies them to
latest.json / latest.md. Never fails on timing: a case that cannot complete says why in
its figures' notes and the run goes on. Exit status 0 unless the run itself broke.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from scripts.bench.cases import CASES, METHODS, Context
from scripts.bench.plan import PLANS
from scripts.bench.procs import ROOT, use_uvloop
from scripts.bench.report import HEADER, machine_info, write_results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small plan: about three minutes")
    parser.add_argument("--reps", type=int, help="override the plan's repetitions")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(CASES), help="run only these cases (the results are then not `latest`)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    args = parser.parse_args()
    plan = PLANS["quick" if args.quick else "full"]
    if args.reps:
        from dataclasses import replace

        plan = replace(plan, reps=args.reps, capacity_reps=min(args.reps, plan.capacity_reps))
    started = time.monotonic()
    info = {
        "plan": plan.name,
        "reps": plan.reps,
        **machine_info(),
        "event_loop": "uvloop" if use_uvloop() else "asyncio",
    }
    print(
        f"benchmark plan {plan.name!r}: {plan.reps} rep(s); {info['cpu_model']}, {info['nproc']} CPUs, "
        f"Python {info['python']}, grpcio {info['grpcio']}, {info['event_loop']} loop for both servers; "
        f"load average {info['loadavg_start']}",
        flush=True,
    )
    print(" | ".join(HEADER), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    log_path = workdir / "loaders.log"
    with log_path.open("wb") as log:
        ctx = Context(plan=plan, workdir=workdir, log=log)
        for name, case in CASES.items():
            if args.only and name not in args.only:
                continue
            case_started = time.monotonic()
            try:
                case(ctx)
            except Exception:
                print(f"case {name} broke (the run goes on):\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            print(f"  [{name}: {time.monotonic() - case_started:.0f} s]", flush=True)
    info["run_s"] = time.monotonic() - started
    info["finished_utc"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    info["cases"] = args.only or list(CASES)
    json_path, md_path = write_results(args.out, ctx.figures, info, METHODS, latest=not args.only)
    print(f"\nrun time {info['run_s']:.0f} s; results: {json_path} and {md_path}; process logs: {workdir}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
