"""Benchmarks of the dispatcher beside a bare grpc.aio server, as real processes on loopback.

`python -m scripts.bench [--quick]` (make bench / make bench-quick); see bench/README.md.
Orchestrator: `plan` (sizes), `runner` (context, driving loaders, merging results), `cases`
and `stops` (what is measured), `procs` (server and loader processes), `report` (figures,
targets, result files), `serialization` (codec micro-benchmark), `stats`.
Processes: `load` (the load generator; `streams` its building blocks, `paced` its paced
agents) and `baseline_server` (the bare servicer).
"""

__all__: list[str] = []
