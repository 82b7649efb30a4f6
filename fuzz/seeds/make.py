#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into DIR/<target>/ (scripts/fuzz.sh runs it).

Each seed is a small input in the target's own format (see the target's module doc) that
reaches a part of the code random bytes rarely reach: valid LZ4 blocks and overlapping
matches, the example configs, and for the gateways TCP SYNs to clamp, packets too big for
the tunnel, DWCP messages of each type, replayed and mutated WAN frames, and timers.
"""
import base64
import pathlib
import struct
import sys

out = pathlib.Path(sys.argv[1])
repo = pathlib.Path(__file__).resolve().parents[2]


def seed(target, name, data):
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(bytes(data))


def u16(v):
    return struct.pack("<H", v)


# lz4_device: op (0 decompress, 1 device compress, 2 CPU compress), capacity, data.
text = (repo / "README.md").read_bytes()[:9216]
literals = bytes([0x50]) + b"hello"  # five literals, end of block
overlap = bytes([0x14]) + b"a" + u16(1) + bytes([0x50]) + b"bcdef"  # a, then 'a' x4 (offset 1)
long_match = bytes([0x2F]) + b"ab" + u16(2) + bytes([200]) + bytes([0x50]) + b"vwxyz"
seed("lz4_device", "literals", [0] + list(u16(64)) + list(literals))
seed("lz4_device", "overlap", [0] + list(u16(64)) + list(overlap))
seed("lz4_device", "long_match", [0] + list(u16(512)) + list(long_match))
seed("lz4_device", "too_small", [0] + list(u16(3)) + list(overlap))
seed("lz4_device", "empty", [0, 0, 0])
for op, name in ((1, "device"), (2, "cpu")):
    seed("lz4_device", f"{name}_text_1408", [op] + list(u16(1408)) + list(text[:1408]))
    seed("lz4_device", f"{name}_text_9216", [op] + list(u16(9300)) + list(text))
    seed("lz4_device", f"{name}_zeros", [op] + list(u16(100)) + [0] * 300)
    seed("lz4_device", f"{name}_tight", [op] + list(u16(40)) + list(text[:64]))

# gcm_device: key, nonce, AAD length, change (low bit: change a byte), where, AAD, payload.
for size in (0, 1, 15, 16, 17, 64, 1408):
    for change in (0, 0x81):
        head = bytes(range(32)) + bytes(range(12)) + bytes([16, change]) + u16(size // 2 + 3)
        seed("gcm_device", f"size_{size}_change_{change}", head + bytes(16) + text[:size])

# config: the example configs, and a dictionary of their section headers, keys and values
# (libFuzzer splices them in; scripts/fuzz.sh passes DIR/config.dict).
# The examples' key placeholders get keys (any 32 bytes in base64 are an X25519 key), so the
# seeds are valid and the fuzzer starts past the field checks, at the rules across fields.
keys = {
    "@PRIVATE_KEY@": base64.b64encode(bytes(range(32))).decode(),
    "@PEER_PUBLIC_KEY@": base64.b64encode(bytes(range(32, 64))).decode(),
    "@PRESHARED_KEY@": base64.b64encode(bytes(range(64, 96))).decode(),
}
examples = sorted((repo / "provisioning/src/example").glob("*.toml"))
tokens = set()
for f in examples + [repo / "provisioning/tests/fixtures/valid.toml"]:
    conf = f.read_text()
    for placeholder, key in keys.items():
        conf = conf.replace(placeholder, key)
    seed("config", f.stem, conf.encode())
    for line in conf.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            tokens.add(line)
        elif "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            tokens.update([key + " =", value])
with open(out / "config.dict", "w") as d:
    for t in sorted(tokens):
        if t:
            d.write('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"\n')


# gateway: actions (fuzz_targets/gateway.rs); the top bit of an action byte picks gateway B.
def ping(proto, payload, ttl=64, df=1, b=False):
    return [0x80 * b | 0, proto, ttl, df] + list(u16(len(payload))) + list(payload)


def syn(mss):
    opts = bytes([2, 4]) + struct.pack(">H", mss)
    hdr = struct.pack(">HHIIBBHHH", 40000, 80, 1, 0, (5 + 1) << 4, 0x02, 65535, 0, 0)
    return hdr + opts


SETTLE, TIME = 7, 6
seed("gateway", "tcp_syn", ping(6, syn(1460)) + [SETTLE])
seed("gateway", "too_big", ping(17, bytes(1600)) + [SETTLE] + ping(17, bytes(1600), df=0) + [SETTLE])
seed("gateway", "compressible", ping(17, text[:1400]) + ping(17, text[:900], b=True) + [SETTLE])
seed("gateway", "ttl_1", ping(1, bytes(8), ttl=1) + [SETTLE])
seed("gateway", "replay", [5, 3, 0, 0] + [5, 3, 1] + list(u16(20)) + [1, 1] + [SETTLE])
seed("gateway", "mutate_header", [5, 4, 3] + list(u16(42)) + [0x10] + list(u16(44)) + [1] + list(u16(60)) + [0xff, 1, SETTLE])
seed("gateway", "rekey", [TIME, 255] * 6 + ping(17, b"after") + [SETTLE] + [TIME, 255] * 2 + [SETTLE])
init = bytes([1, 0, 0, 0]) + bytes(4) + bytes(108)
response = bytes([2, 0, 0, 0]) + bytes(8) + bytes(48)
data = bytes([4, 1, 0, 0]) + bytes(12) + bytes(40)
for name, msg in (("dwcp_init", init), ("dwcp_response", response), ("dwcp_data", data)):
    seed("gateway", name, [4] + list(u16(len(msg))) + list(msg) + [SETTLE])
arp = bytes([0xFF] * 6) + bytes([2, 0, 0, 0, 0xA, 9]) + bytes([8, 6]) + bytes([0, 1, 8, 0, 6, 4, 0, 1]) + bytes([2, 0, 0, 0, 0xA, 9]) + bytes([10, 1, 0, 9]) + bytes(6) + bytes([10, 1, 0, 1])
seed("gateway", "arp_lan", [1] + list(u16(len(arp))) + list(arp) + [SETTLE])
