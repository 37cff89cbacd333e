"""Fail when shared/_gen differs from what `make proto` would generate from proto/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "proto/southwest/ai/agent/v1/agent.proto"
GEN = "shared/_gen"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable, "-m", "grpc_tools.protoc", f"-I{GEN}=proto",
                f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", PROTO,
            ],
            cwd=ROOT,
            check=True,
        )  # fmt: skip
        stale = []
        for fresh in sorted(Path(tmp).rglob("*.py*")):
            committed = ROOT / fresh.relative_to(tmp)
            if not committed.exists() or not filecmp.cmp(fresh, committed, shallow=False):
                stale.append(str(committed.relative_to(ROOT)))
    if stale:
        names = ", ".join(stale)
        print(f"generated code is stale: {names}\nrun `make proto` and commit the result.", file=sys.stderr)
        return 1
    print("generated code matches proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
