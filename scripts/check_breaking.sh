#!/usr/bin/env bash
# Wire and JSON compatibility of proto/ with everything ever published (`make buf-breaking`).
#
# "Anything that was ever on main is published": the working tree's proto/ is checked with
# `buf breaking` (buf.yaml's rules: WIRE_JSON plus no deleted service or rpc) against
#   1. the original published contract, tests/contract/original, and
#   2. the state of proto/ at every commit that touched it (`git log -- proto/`) and at HEAD.
# Identical proto/ trees are checked once. In a shallow clone only the fetched history can be
# checked: the script says so and checks what it has. Outside a git checkout it checks (1) only.
#
# usage: scripts/check_breaking.sh            (BUF=/path/to/buf to use another binary)
set -euo pipefail

cd "$(dirname "$0")/.."
BUF=${BUF:-interop/node/node_modules/.bin/buf}
BASELINE=tests/contract/original
ADVICE="this change breaks clients already built from the contract; add a new major package version (southwest.ai.agent.v2) instead"

if [[ ! -x "$BUF" ]]; then
    echo "check_breaking: $BUF not found: run \`make node-deps\` (npm ci in interop/node)" >&2
    exit 2
fi

failed=()
checked=0

# check LABEL AGAINST-INPUT: one `buf breaking` run; buf prints the violations itself.
check() {
    local label=$1 against=$2
    checked=$((checked + 1))
    if "$BUF" breaking proto --against "$against"; then
        echo "ok      proto/ vs $label"
    else
        echo "BREAKS  proto/ vs $label"
        failed+=("$label")
    fi
}

check "the original published contract ($BASELINE)" "$BASELINE"

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "check_breaking: warning: not a git checkout: checked against the original contract only," \
        "not against the history of proto/" >&2
else
    if [[ "$(git rev-parse --is-shallow-repository)" == "true" ]]; then
        echo "check_breaking: warning: shallow clone: only the fetched history of proto/ is checked;" \
            "run \`git fetch --unshallow\` for the full check" >&2
    fi
    # buf clones from the repository's git directory; the common dir also works in a worktree.
    git_dir=$(git rev-parse --path-format=absolute --git-common-dir)
    declare -A seen_trees=()
    commits=()
    if git rev-parse --verify --quiet HEAD >/dev/null; then
        commits+=("$(git rev-parse HEAD)")
        mapfile -t -O 1 commits < <(git log --format=%H -- proto/)
    fi
    for sha in "${commits[@]}"; do
        tree=$(git rev-parse --verify --quiet "$sha:proto" || true)
        if [[ -z "$tree" ]]; then
            continue  # proto/ did not exist (or was removed) at this commit: nothing published there
        fi
        if [[ -n "${seen_trees[$tree]:-}" ]]; then
            continue  # the same proto/ as a commit already checked
        fi
        seen_trees[$tree]=1
        label="commit $(git log -1 --format='%h %s' "$sha")"
        [[ "$sha" == "${commits[0]}" ]] && label="HEAD, $label"
        check "$label" "$git_dir#format=git,ref=$sha,subdir=proto"
    done
fi

if ((${#failed[@]})); then
    echo >&2
    echo "check_breaking: proto/ is not wire/JSON compatible with ${#failed[@]} of $checked published state(s):" >&2
    printf '  - %s\n' "${failed[@]}" >&2
    echo "check_breaking: $ADVICE" >&2
    exit 1
fi
echo "check_breaking: proto/ is compatible with all $checked published state(s)"
