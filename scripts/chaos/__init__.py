"""The fault-injection suite (`make chaos`, issue 17): real processes through a loopback fault proxy.

`proxy` (FaultProxy: pass, reset, blackhole, delay, throttle, switched at run time; a CLI with a
control port), `agent` (the numbered chaos agent: `commander run --agent scripts.chaos.agent:numbered`),
`tools` (the `chaos_record` tool, which writes each execution's call id to `$CHAOS_TOOL_LOG`),
`ledger` (reads that file and a journal: lost, duplicated and executed-twice counts), `run` (the
scenarios and their table: `python -m scripts.chaos.run`). Run from the repository root, where
`scripts` is importable (`--agent` and `--tools` put the current directory on the path).
"""

__all__: list[str] = []
