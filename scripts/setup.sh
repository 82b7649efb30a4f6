#!/usr/bin/env bash
# Installs what building and testing the appliance needs on a Debian 12 machine.
# Idempotent: installs only what is missing. Needs root to install; without root it lists
# what is missing and stops.
set -euo pipefail

# Debian packages the build and the tests need. Later tiers (QEMU, DPDK, kernel package)
# add theirs here, so a fresh machine gets everything from this one script.
# libelf1 and libssl3: the kernel's prebuilt kbuild tools, for the GPU image's NVIDIA modules.
# libtsan2: ThreadSanitizer, for the kernels' race check (decision 0023; g++ pulls it in too).
# libibverbs-dev, libnl-3-dev, libnl-route-3-dev: rdma-core 44 and libnl for rdma-sys (decision 0028).
# prometheus: promtool, which checks the metrics, the alert rules and their tests (monitoring/).
PACKAGES=(build-essential libtsan2 libelf1 libssl3 pkg-config ca-certificates apt dpkg qemu-system-x86 ovmf ipxe-qemu iproute2 iputils-ping ethtool curl python3 python3-pip libdpdk-dev dpdk dpdk-dev libibverbs-dev libnl-3-dev libnl-route-3-dev prometheus)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing Debian packages: ${missing[*]}" >&2
        echo "setup: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found: install the Rust toolchain pinned in rust-toolchain.toml" >&2
    exit 1
fi

# cargo-fuzz for the fuzz targets (scripts/fuzz.sh), pinned; built from crates.io once.
CARGO_FUZZ_VERSION=0.13.2
if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "setup: installing cargo-fuzz $CARGO_FUZZ_VERSION (for scripts/fuzz.sh)"
    cargo install --quiet --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi

# NVRTC for compiling the CUDA kernels (kernels/cuda) on machines without a GPU or driver:
# NVIDIA's nvidia-cuda-nvrtc wheel, pinned by version and SHA-256, unpacked into the cache.
NVRTC_VERSION=13.0.88
NVRTC_SHA256=ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvrtc_dir="$HOME/.cache/dwcp/nvrtc/$NVRTC_VERSION"
if [[ ! -f "$nvrtc_dir/nvidia/cu13/lib/libnvrtc.so.13" ]]; then
    echo "setup: fetching nvidia-cuda-nvrtc $NVRTC_VERSION (NVRTC for the CUDA kernel tests)"
    dl=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --python-version 3.11 -d "$dl" "nvidia-cuda-nvrtc==$NVRTC_VERSION"
    whl=$(ls "$dl"/nvidia_cuda_nvrtc-*.whl)
    echo "$NVRTC_SHA256  $whl" | sha256sum --check --quiet
    mkdir -p "$nvrtc_dir"
    python3 -m zipfile -e "$whl" "$nvrtc_dir"
    rm -rf "$dl"
fi
