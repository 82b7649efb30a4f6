# Site host A: send MIB mebibytes of random-looking data (a marker string every 4 KiB, so a
# capture can prove it never shows in clear), print bytes, SHA-256 and seconds.
import hashlib, os, socket, sys, time
dst, port, mib, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
base = bytearray(os.urandom(1 << 20))
h = hashlib.sha256()
s = socket.create_connection((dst, port), timeout=60)
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
