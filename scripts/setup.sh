#!/usr/bin/env bash
# Installs what building and testing the appliance needs on a Debian 12 machine.
# Idempotent: installs only what is missing. Needs root to install; without root it lists
# what is missing and stops.
set -euo pipefail

# Debian packages the build and the tests need. Later tiers (QEMU, DPDK, kernel package)
# add theirs here, so a fresh machine gets everything from this one script.
PACKAGES=(build-essential pkg-config ca-certificates apt dpkg qemu-system-x86 ovmf ipxe-qemu iproute2 iputils-ping ethtool curl python3)

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
