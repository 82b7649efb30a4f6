#!/usr/bin/env bash
# The README's test command: sets up what is missing, then runs every test tier that exists,
# and closes with one line adding up all of them.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== unit and integration tests (cargo test --workspace)"
status=0
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?

passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
ignored=$(grep -Eo '[0-9]+ ignored;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "all tiers: ${passed} passed, ${failed} failed, ${ignored} ignored"
if ((ignored != 0)); then
    echo "ignored: the GPU tests (they need an NVIDIA GPU; run scripts/gpu-test.sh on one):"
    grep -E '^test .* \.\.\. ignored' "$log" | sed 's/^/  /'
fi
if ((status != 0 || failed != 0)); then
    exit 1
fi
if ((passed == 0)); then
    echo "no test ran" >&2
    exit 1
fi
