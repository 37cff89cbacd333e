"""Regenerate the requirements table of docs/contract.md from conformance/requirements.py.

usage: python scripts/gen_requirements_doc.py [--check]   (--check: exit 1 when the doc is stale)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from conformance.doc import replace_table  # noqa: E402

DOC = ROOT / "docs" / "contract.md"


def main(argv: list[str]) -> int:
    current = DOC.read_text(encoding="utf-8")
    wanted = replace_table(current)
    if "--check" in argv:
        if current != wanted:
            print(f"{DOC} is stale: run python scripts/gen_requirements_doc.py", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        DOC.write_text(wanted, encoding="utf-8")
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
