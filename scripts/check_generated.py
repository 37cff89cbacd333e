"""Fail when shared/_gen differs from what `make proto` would generate from proto/."""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from gen_proto import ROOT, generate

GEN = ROOT / "shared" / "_gen"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        fresh = {p.relative_to(fresh_root) for p in fresh_root.rglob("*.py*")}
        committed = {p.relative_to(GEN) for p in GEN.rglob("*.py*") if "__pycache__" not in p.parts}
        stale = sorted(
            str(GEN.relative_to(ROOT) / rel)
            for rel in fresh | committed
            if rel not in fresh or rel not in committed or not filecmp.cmp(fresh_root / rel, GEN / rel, shallow=False)
        )
    if stale:
        print(f"generated code is stale: {', '.join(stale)}\nrun `make proto` and commit the result.", file=sys.stderr)
        return 1
    print("generated code matches proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
