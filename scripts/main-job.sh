#!/usr/bin/env bash
# The README's main-job command, for now: build the appliance image (pinned kernel, static
# init and data plane), boot one node under QEMU with the config matching the VM, wait for
# DWCP READY, power it off. (`dwcp demo`, two appliances carrying traffic, takes this place
# once the data plane lands.)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --locked -q -p dwcp-provisioning --bin dwcp
out=target/artifacts
./target/debug/dwcp image build --out "$out"
./target/debug/dwcp qemu boot --artifacts "$out"
