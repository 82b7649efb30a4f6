# Site host A: send MIB mebibytes of random-looking data, or with KIND "text" of log-like text
# (compressible), a marker string every 4 KiB (so a capture can prove it never shows in
# clear); from source port SPORT when given. Print bytes, SHA-256 and seconds.
# Usage: sender.py DST PORT MIB MARKER [random|text] [SPORT]
import hashlib, os, random, socket, sys, time
dst, port, mib, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
kind = sys.argv[5] if len(sys.argv) > 5 else "random"
sport = int(sys.argv[6]) if len(sys.argv) > 6 else 0
if kind == "text":
    rng = random.Random(7)
    lines, n = [], 0
    while n < 1 << 20:
        line = ("2026-11-23T18:%02d:%02d.%06dZ site-a-gw ckpt job=%04d shard=%05d "
                "offset=%010d bytes=%d status=%s path=/ckpt/layer-%04d/shard-%04d\n" % (
                    n >> 16 & 59, n >> 10 & 59, rng.randrange(10**6), rng.randrange(40),
                    rng.randrange(4096), n, rng.choice((1408, 9000, 65536)),
                    rng.choice(("200 OK", "200 OK", "206 PARTIAL")), rng.randrange(48),
                    rng.randrange(256))).encode()
        lines.append(line)
        n += len(line)
    base = bytearray(b"".join(lines)[:1 << 20])
elif kind == "random":
    base = bytearray(os.urandom(1 << 20))
else:
    sys.exit("sender.py: KIND must be random or text, not %r" % kind)
h = hashlib.sha256()
s = socket.create_connection((dst, port), timeout=60, source_address=("", sport))
t0 = time.time()
for i in range(mib):
    chunk = bytearray(base)
    for off in range(0, len(chunk) - 64, 4096):
        chunk[off:off + len(marker)] = marker
    chunk[64:68] = i.to_bytes(4, "big")
    h.update(chunk)
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
s.recv(1)
dt = time.time() - t0
print(mib << 20, h.hexdigest(), "%.3f" % dt, flush=True)
