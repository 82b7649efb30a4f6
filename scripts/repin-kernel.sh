#!/usr/bin/env bash
# Re-pins image/kernel-pin.toml to the kernel package that Debian's linux-image-amd64 points
# at today (name, version and SHA-256 from the archive's index).
set -euo pipefail
cd "$(dirname "$0")/.."
apt-get update -qq || true
pkg=$(apt-cache show linux-image-amd64 | sed -n 's/^Depends: \(linux-image-[^ ]*\) .*/\1/p' | head -1)
ver=$(apt-cache show "$pkg" | sed -n 's/^Version: //p' | head -1)
sha=$(apt-cache show "$pkg" | sed -n 's/^SHA256: //p' | head -1)
[[ -n $pkg && -n $ver && -n $sha ]] || { echo "repin: cannot read the archive's index" >&2; exit 1; }
sed -i -e "s/^package = .*/package = \"$pkg\"/" -e "s/^version = .*/version = \"$ver\"/" \
    -e "s/^sha256 = .*/sha256 = \"$sha\"/" image/kernel-pin.toml
echo "pinned $pkg $ver ($sha)"
