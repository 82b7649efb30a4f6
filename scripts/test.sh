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

echo
echo "== fuzz tier (scripts/fuzz.sh: each target for ${DWCP_FUZZ_SECONDS:-60}s)"
fuzz_log=$(mktemp)
trap 'rm -f "$log" "$fuzz_log"' EXIT
scripts/fuzz.sh 2>&1 | tee "$fuzz_log" || status=$?

passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
# The fuzz tier's line: "fuzz: N passed, N failed" (a target that did not build counts failed).
fuzz_counts=$(grep -E '^fuzz: [0-9]+ passed, [0-9]+ failed$' "$fuzz_log" || echo "fuzz: 0 passed, 1 failed")
passed=$((passed + $(echo "$fuzz_counts" | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+')))
failed=$((failed + $(echo "$fuzz_counts" | grep -Eo '[0-9]+ failed' | grep -Eo '[0-9]+')))
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
