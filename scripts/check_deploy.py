"""`make deploy-check`: the example alert rules pass `promtool check rules`, the Grafana dashboards
are JSON with a PromQL expression in every target.

promtool comes from Debian's `prometheus` package (`.ci/run` installs it when it is missing).
Without it the rules check is skipped with a note, except under CI=true, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = sorted((ROOT / "deploy" / "prometheus").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))


def check_rules() -> bool:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI", "").lower() == "true":
            print("deploy-check: promtool not found (apt-get install prometheus); CI requires it", file=sys.stderr)
            return False
        print("deploy-check: promtool not found, alert rules not checked (apt-get install prometheus)")
        return True
    return subprocess.run([promtool, "check", "rules", *map(str, RULES)], check=False).returncode == 0


def check_dashboards() -> bool:
    ok = True
    for path in DASHBOARDS:
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            print(f"deploy-check: {path.relative_to(ROOT)}: not JSON: {exc}", file=sys.stderr)
            ok = False
            continue
        panels = [panel for panel in dashboard.get("panels", []) if panel.get("type") != "row"]
        empty = [panel.get("title") for panel in panels if not all(t.get("expr") for t in panel.get("targets") or [{}])]
        if not panels or empty:
            print(f"deploy-check: {path.relative_to(ROOT)}: panels without an expression: {empty}", file=sys.stderr)
            ok = False
        else:
            print(f"deploy-check: {path.relative_to(ROOT)}: {len(panels)} panels")
    return ok


def main() -> int:
    if not RULES or not DASHBOARDS:
        print("deploy-check: no rules or dashboards under deploy/", file=sys.stderr)
        return 1
    rules_ok = check_rules()
    return 0 if check_dashboards() and rules_ok else 1


if __name__ == "__main__":
    sys.exit(main())
