#!/usr/bin/env bash
# The kernels under NVIDIA's compute-sanitizer, on a GPU machine: racecheck (shared-memory
# hazards between threads), synccheck (barriers misused), memcheck (out-of-bounds and
# misaligned accesses) and initcheck (reads of device memory never written), each on a small
# run of every kernel (the GPU test `gpu_small_run_of_every_kernel`). The hardware's side of
# what the simulated driver's race check (decision 0023) holds the kernels to.
#
#   scripts/gpu-sanitize.sh [GPU_TESTS]   GPU_TESTS: the built `gpu` test binary (default:
#                                         gpu-tests beside this script, as in a bundle)
# Prints each tool's verdict; exits 1 if a tool reported an error, 2 if compute-sanitizer could
# not run here (not on the PATH, or the device refused it), else 0.
set -uo pipefail
here=$(dirname "$0")
tests=${1:-$here/gpu-tests}
limit=${DWCP_SANITIZE_SECONDS:-240}
if ! command -v compute-sanitizer >/dev/null; then
    echo "gpu-sanitize: NOT RUN: compute-sanitizer is not on the PATH (it comes with the CUDA toolkit)" >&2
    exit 2
fi
status=0
for tool in racecheck synccheck memcheck initcheck; do
    start=$(date +%s)
    out=$(timeout "$limit" compute-sanitizer --tool "$tool" --error-exitcode 9 \
        "$tests" --ignored --exact gpu_small_run_of_every_kernel --test-threads 1 2>&1)
    rc=$?
    took=$(($(date +%s) - start))
    summary=$(echo "$out" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY" | tail -1)
    if [[ $rc == 0 ]] && echo "$out" | grep -q "test result: ok. 1 passed"; then
        echo "gpu-sanitize: $tool: clean in ${took} s (${summary:-no summary line})"
    elif [[ $rc == 9 ]] || echo "$summary" | grep -qE "[1-9][0-9]* (errors|hazards)"; then
        echo "$out" | grep -vE "^test |^running " | head -60
        echo "gpu-sanitize: $tool: FOUND ERRORS in ${took} s: $summary"
        status=1
    elif [[ $rc == 124 ]]; then
        echo "gpu-sanitize: $tool: NOT FINISHED within ${limit} s (DWCP_SANITIZE_SECONDS)"
        [[ $status == 0 ]] && status=2
    else
        echo "$out" | tail -20
        echo "gpu-sanitize: $tool: NOT RUN or failed (exit $rc) in ${took} s"
        [[ $status == 0 ]] && status=2
    fi
done
exit $status
