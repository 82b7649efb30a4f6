#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo fuzz, libFuzzer) for a short while from its seeds
# (fuzz/seeds/make.py) and its regression inputs (fuzz/regressions/TARGET: inputs that once
# crashed it), with debug assertions and overflow checks on. Closes with one line,
# "fuzz: N passed, N failed"; a failure names the input that crashed and how to rerun it.
#
#   scripts/fuzz.sh [TARGET...]        DWCP_FUZZ_SECONDS (default 60) per target
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${DWCP_FUZZ_SECONDS:-60}
command -v cargo-fuzz >/dev/null || {
    echo "fuzz: cargo-fuzz not found (scripts/setup.sh installs it)" >&2
    exit 1
}
mapfile -t targets < <(if (($#)); then printf '%s\n' "$@"; else cargo fuzz list; fi)

# cargo fuzz on the pinned stable toolchain: no sanitizer (they need nightly), so the
# targets check their own bounds (the device shim puts guard pages after its buffers).
flags=(--sanitizer none --debug-assertions)
echo "== fuzz: building ${targets[*]}"
cargo fuzz build "${flags[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 seeds/make.py "$work/seeds"

passed=0
failed=0
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "$work/seeds/$t" "artifacts/$t"
    dirs=("$work/corpus/$t" "$work/seeds/$t")
    [[ -d "regressions/$t" ]] && dirs+=("regressions/$t")
    echo "== fuzz: $t for ${seconds}s from $(find "${dirs[@]:1}" -type f | wc -l) seed and regression inputs"
    dict=()
    [[ -f "$work/seeds/$t.dict" ]] && dict=(-dict="$work/seeds/$t.dict")
    if cargo fuzz run "${flags[@]}" "$t" "${dirs[@]}" -- "${dict[@]}" \
        -max_total_time="$seconds" -max_len=20000 -timeout=20 -rss_limit_mb=4096 \
        -print_final_stats=1 >"$work/$t.log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^Done' "$work/$t.log" | sed "s/^/  $t: /"
        passed=$((passed + 1))
    else
        tail -n 40 "$work/$t.log"
        echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/; rerun it with:"
        echo "  (cd fuzz && cargo fuzz run ${flags[*]} $t artifacts/$t/<file>)"
        failed=$((failed + 1))
    fi
done
echo "fuzz: ${passed} passed, ${failed} failed"
((failed == 0))
