"""`make chaos`: the fault-injection suite (issue 17), printed as a table.

`python -m scripts.chaos.run [--full] [--only NAME ...] [--results FILE]` (`make chaos
CHAOS_ARGS='--full'`). Real processes on loopback: per scenario a `dispatcher serve` (the
chaos tool, 1 s keepalive), `commander run` processes of the chaos agent through an
in-process `FaultProxy`, `dispatcherctl watch` for the journals, a `commander serve` pool for
the bystanders. The small size (default) runs in about a minute; `--full` uses the issue's
sizes (20 s blackhole, 1 000 bystanders). Exit 1 when an invariant failed (a session lost or
duplicated a chunk, a tool call ran twice, an outcome is missing or wrong, detection took
longer than the keepalive bound); skipped scenarios (a feature this build lacks) do not fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from scripts.chaos.procs import ROOT, Features
from scripts.chaos.report import Row, render_table, write_results
from scripts.chaos.scenarios import FULL, SCENARIOS, SMALL, Context

__all__ = ["main", "run"]

SCENARIO_BOUND_S = {"small": 120.0, "full": 600.0}


async def run(names: list[str], full: bool, workdir: Path) -> list[Row]:
    size = FULL if full else SMALL
    features = await Features.detect()
    ctx = Context(workdir, features, size)
    rows = []
    for name in names:
        started = time.monotonic()
        try:
            async with asyncio.timeout(SCENARIO_BOUND_S[size.name]):
                row = await SCENARIOS[name](ctx)
        except TimeoutError:
            row = Row(name, problems=[f"did not finish within {SCENARIO_BOUND_S[size.name]:g} s"])
        except Exception as exc:  # a scenario that broke is a failed row, and the others still run
            row = Row(name, problems=[f"{type(exc).__name__}: {exc}"])
            traceback.print_exc()
        finally:
            await ctx.reap()
        row.wall_s = time.monotonic() - started
        print(f"{row.verdict:>7}  {row.fault} ({row.wall_s:.1f} s)", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.chaos.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the issue's sizes (minutes) instead of the small run")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), metavar="NAME",
                        help=f"run only these scenarios: {', '.join(SCENARIOS)}")  # fmt: skip
    default_results = os.environ.get("CHAOS_RESULTS") or ROOT / "bench" / "results" / "chaos-latest.md"
    parser.add_argument("--results", type=Path, default=default_results,
                        help="markdown result file (and .json beside it) [$CHAOS_RESULTS or "
                             "bench/results/chaos-latest.md]")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, tool log)")
    args = parser.parse_args(argv)
    names = args.only or list(SCENARIOS)
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    rows = asyncio.run(run(names, args.full, workdir))
    table = render_table(rows)
    print(table)
    command = "make chaos" + (" CHAOS_ARGS='--full'" if args.full else "")
    write_results(rows, args.results, size="full" if args.full else "small", command=command)
    failed = [row for row in rows if row.failed]
    if failed or args.keep:
        print(f"logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
