#!/usr/bin/env bash
# The README's main-job command: `dwcp demo` — build the appliance image (when missing or
# stale), boot two appliances in QEMU, carry site A's traffic to site B through the DWCP
# tunnel, print the report, remove everything it made. Needs root (namespaces, TAP devices).
# Extra arguments go to `dwcp demo` (e.g. --json, --mib 50).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --locked -q -p dwcp-cli --bin dwcp
exec ./target/debug/dwcp demo "$@"
