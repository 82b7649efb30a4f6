#!/usr/bin/env bash
# Re-pins image/kernel-pin.toml to the kernel package that Debian's linux-image-amd64 points
# at today (name, version and SHA-256 from the archive's index), and the same kernel's
# headers in image/nvidia-pin.toml (the GPU image builds the NVIDIA modules against them).
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

release=${pkg#linux-image-}          # 6.1.0-57-amd64
abi=${release%-amd64}                # 6.1.0-57
series=${abi%%.0-*}                  # 6.1
headers=("linux-headers-$release" "linux-headers-$abi-common" "linux-kbuild-$series")
specs=()
for h in "${headers[@]}"; do specs+=("$h=$ver"); done
uris=$(apt-get download --print-uris "${specs[@]}") || {
    echo "repin: the archive has no headers ${headers[*]} at $ver" >&2
    exit 1
}
# Each line: 'URL' FILE SIZE SHA256:HEX. Rewrite the [[headers]] tables from them.
python3 - "$uris" <<'PY'
import re, sys
lines = [l.split() for l in sys.argv[1].splitlines() if l.strip()]
tables = []
for url, name, _size, sha in lines:
    package, version = name.split("_")[:2]
    tables.append(
        f'[[headers]]\npackage = "{package}"\nversion = "{version.replace("%3a", ":")}"\n'
        f'sha256 = "{sha.removeprefix("SHA256:")}"\nurl = "{url.strip(chr(39))}"\n'
    )
path = "image/nvidia-pin.toml"
text = open(path).read()
head = text[: re.search(r"(?m)^\[\[headers\]\]$", text).start()]
open(path, "w").write(head + "\n".join(tables))
for t in tables:
    print("pinned " + t.split("\n")[1].split('"')[1])
PY
