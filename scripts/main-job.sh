#!/usr/bin/env bash
# The README's main-job command, for now: build `dwcp`, write the example node config and
# check it. (`dwcp demo` takes this place once the boot path and data plane land.)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --locked -q -p dwcp-provisioning --bin dwcp
./target/debug/dwcp config example | ./target/debug/dwcp config check -
