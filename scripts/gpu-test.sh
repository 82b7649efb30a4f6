#!/usr/bin/env bash
# The GPU test command (docs/gpu.md): on a machine with an NVIDIA GPU and driver, runs the GPU half
# of the kernels' correctness suite (GPU AES-256-GCM byte-identical to the CPU engine on
# 100,000 random packets, NIST vectors, tampering, LZ4 both ways with lz4_flex), the pipeline
# through the offload engine with offload.gpu = on against the CPU engine (with the kernels
# compiled by NVRTC 13, then by the GPU image's NVRTC 12.x; and in bursts of 256), then
# `bench offload`.
#
#   scripts/gpu-test.sh                 build and run here (needs cargo)
#   scripts/gpu-test.sh --bundle DIR    build here, put the binaries, a run.sh and a
#                                       sanitize.sh (scripts/gpu-sanitize.sh) in DIR (for a
#                                       GPU machine without a Rust toolchain)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --bundle ]]; then
    dir=${2:?usage: scripts/gpu-test.sh --bundle DIR}
    mkdir -p "$dir"
    test_bin=$(cargo test --release --locked -p dwcp-kernels --test gpu --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')
    cargo build --release --locked -p dwcp-dataplane --bin dwcp-dataplane
    cp "$test_bin" "$dir/gpu-tests"
    cp scripts/gpu-sanitize.sh "$dir/sanitize.sh"
    cp target/release/dwcp-dataplane "$dir/"
    # The GPU image's NVRTC (12.x, image/nvidia-pin.toml), xz'd to fit the device's 64 MiB:
    # run.sh compiles and runs the kernels with it too, as the GPU image's data plane would.
    pin() { sed -n "/^\[nvrtc\]/,/^\[/s/^$1 = \"\(.*\)\"/\1/p" image/nvidia-pin.toml; }
    ver=$(pin version)
    root="$HOME/.cache/dwcp/nvrtc/$ver"
    nvrtc12="$root/nvidia/cuda_nvrtc/lib"
    if [[ ! -f $root/.complete ]]; then
        # Where `dwcp image build --gpu` unpacks it too (image/src/nvidia.rs, fetch_wheel).
        echo "gpu-test: fetching $(pin wheel) $ver (the GPU image's NVRTC)"
        dl=$(mktemp -d)
        python3 -m pip download --quiet --no-deps --only-binary=:all: \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux1_x86_64 --python-version 3.11 -d "$dl" "$(pin wheel)==$ver"
        whl=$(ls "$dl"/*.whl)
        echo "$(pin sha256)  $whl" | sha256sum --check --quiet
        rm -rf "$root"
        python3 -m zipfile -e "$whl" "$root"
        touch "$root/.complete"
        rm -rf "$dl"
    fi
    if [[ ! -d $nvrtc12 ]]; then
        echo "gpu-test: no $nvrtc12 in the unpacked $(pin wheel) $ver" >&2
        exit 1
    fi
    mkdir -p "$dir/nvrtc12"
    for f in "$nvrtc12"/libnvrtc*.so*; do xz -T0 -6 -c "$f" >"$dir/nvrtc12/$(basename "$f").xz"; done
    echo "${ver%.*}" >"$dir/nvrtc12/version"
    cat >"$dir/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the bundled GPU tests and benchmarks. NVRTC: the CUDA toolkit's, found below, or $DWCP_NVRTC.
set -uo pipefail
here=$(dirname "$0")
if [[ -z ${DWCP_NVRTC:-} ]]; then
    DWCP_NVRTC=$(find /usr/local /usr/lib /opt -name 'libnvrtc.so.1[23]*' 2>/dev/null | grep -v alt | head -1)
    export DWCP_NVRTC
fi
echo "NVRTC: ${DWCP_NVRTC:-on the library path}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
status=0
"$here/gpu-tests" --ignored --test-threads 1 --nocapture || status=1
out=$("$here/dwcp-dataplane" bench pipeline --offload on --seconds 0.3 2>&1) || status=1
echo "$out"
echo "$out" | grep -q "passed its start-up check against the CPU engine" ||
    { echo "the GPU did not pass the data plane's start-up check"; status=1; }
# A batch the GPU got wrong is corrected (no mismatch), so only the counter shows it.
echo "$out" | grep -q ", wrong 0, packets corrected 0" ||
    { echo "a GPU batch checked against the CPU engine was wrong"; status=1; }
# The same through bursts of 256 (`dataplane.burst`): each engine batch 8 times larger, its
# fixed cost spread over more packets (compare the encap/decap Gb/s with the line above).
out=$("$here/dwcp-dataplane" bench pipeline --offload on --burst 256 --packets 20000 --seconds 0.05 2>&1) || status=1
echo "$out" | head -3
echo "$out" | grep -q ", wrong 0, packets corrected 0" ||
    { echo "a GPU batch (bursts of 256) checked against the CPU engine was wrong"; status=1; }
# The GPU image's compile path: the same pipeline check with the kernels compiled by NVRTC
# 12.x (first on the library path, under the unversioned name cudarc tries first).
n12=$(mktemp -d)
python3 - "$here/nvrtc12" "$n12" <<'PY' || status=1
import lzma, pathlib, sys
src, dst = map(pathlib.Path, sys.argv[1:])
for f in src.glob("*.xz"):
    (dst / f.stem).write_bytes(lzma.decompress(f.read_bytes()))
PY
ln -s libnvrtc.so.12 "$n12/libnvrtc.so"
out=$(LD_LIBRARY_PATH="$n12" DWCP_NVRTC= "$here/dwcp-dataplane" bench pipeline --offload on \
    --packets 20000 --seconds 0.05 2>&1) || status=1
echo "$out" | head -3
v12=$(cat "$here/nvrtc12/version")
echo "$out" | grep -q "kernels compiled by NVRTC $v12" || { echo "NVRTC $v12 was not the one used"; status=1; }
echo "$out" | grep -q ", wrong 0, packets corrected 0" ||
    { echo "a GPU batch (NVRTC $v12) checked against the CPU engine was wrong"; status=1; }
rm -rf "$n12"
"$here/dwcp-dataplane" bench offload "$@" || status=1
exit $status
RUN
    chmod +x "$dir/run.sh"
    echo "bundle in $dir: run $dir/run.sh on the GPU machine, then $dir/sanitize.sh (compute-sanitizer)"
    exit 0
fi

scripts/setup.sh
cargo test --release --locked -p dwcp-kernels --test gpu -- --ignored --test-threads 1 --nocapture
cargo run --release --locked -q -p dwcp-dataplane -- bench pipeline --offload on --seconds 0.3
cargo run --release --locked -q -p dwcp-dataplane -- bench pipeline --offload on --burst 256 --packets 20000 --seconds 0.05
cargo run --release --locked -q -p dwcp-dataplane -- bench offload "$@"
