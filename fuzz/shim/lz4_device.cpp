// The GPU's LZ4 code (kernels/cuda/lz4.cu) built for the host, for the fuzzer: the serial device
// functions, and the real kernels `lz4_decompress_warp` and `lz4_compress` run on one warp by
// the simulated driver's SIMT emulator (kernels/cuda/simt.h: each lane a fiber, votes,
// shuffles and barriers by switching; a barrier not every lane reaches at the same place is a
// divergence). Each call's input ends at, and its output buffer ends at, a page the process may
// not touch, so a read or write one byte past them faults (libFuzzer reports it as a crash).
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "simt.h"

// Largest input and output a call takes.
static const size_t LIMIT = 1 << 17;

// A buffer of LIMIT bytes followed by a page mapped PROT_NONE.
static u8* guarded() {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = (LIMIT + page - 1) / page * page;
    void* p = mmap(nullptr, len + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    u8* base = (u8*)p;
    if (mprotect(base + len, page, PROT_NONE) != 0) return nullptr;
    return base + len - LIMIT;
}

static u8* src_buf;
static u8* dst_buf;
static u16 table[1 << LZ4_HASH_LOG_MAX];

// Copies `src` so it ends at the guard page and fills the output buffer's last `cap` bytes
// with a pattern (so nothing an earlier call wrote can stand in for a byte this one fails to
// write); the copy, or null when a size is too large.
static const u8* stage(const u8* src, u32 len, u32 cap) {
    if (!src_buf) src_buf = guarded();
    if (!dst_buf) dst_buf = guarded();
    if (!src_buf || !dst_buf || len > LIMIT || cap > LIMIT) return nullptr;
    u8* at = src_buf + LIMIT - len;
    memcpy(at, src, len);
    memset(dst_buf + LIMIT - cap, 0xA5, cap);
    return at;
}

// Runs an LZ4 kernel (the simulated driver's argument layout) on one packet with one warp;
// the output length, -1 for LZ4_NONE, or -3 when the warp's lanes diverged.
static int run_warp(void (*kernel)(const u64*), const u8* s, u32 len, u8* d, u32 cap) {
    u32 src_off = 0, src_len = len, dst_off = 0, dst_cap = cap, out_len = 0;
    const void* args[8] = {s, &src_off, &src_len, d, &dst_off, &dst_cap, &out_len, nullptr};
    for (int i = 0; i < 7; i++) simt::body_args[i] = (u64)(uintptr_t)args[i];
    simt::body_args[7] = 1;  // n: one packet
    simt::body = kernel;
    blockDim = SimDim3{32, 1, 1};
    gridDim = SimDim3{1, 1, 1};
    blockIdx = SimDim3{0, 0, 0};
    if (!simt::run_block(32)) return -3;
    return out_len == LZ4_NONE ? -1 : (int)out_len;
}

static void decompress_warp_kernel(const u64* a) {
    lz4_decompress_warp((const u8*)a[0], (const u32*)a[1], (const u32*)a[2], (u8*)a[3],
                        (const u32*)a[4], (const u32*)a[5], (u32*)a[6], (u32)a[7]);
}

static void compress_kernel(const u64* a) {
    lz4_compress((const u8*)a[0], (const u32*)a[1], (const u32*)a[2], (u8*)a[3], (const u32*)a[4],
                 (const u32*)a[5], (u32*)a[6], (u32)a[7]);
}

extern "C" {

// One of the device's LZ4 codes on `src[..len]` into an output of `cap` bytes ending at a
// guard page, copied to `out`: 0 `lz4_decompress_block` (serial), 1 the `lz4_decompress_warp`
// kernel, 2 `lz4_compress_block` (serial), 3 the `lz4_compress` kernel. Its result (bytes
// written, or -1), -2 when a size is past LIMIT, -3 when the warp's lanes diverged.
int dwcp_fuzz_lz4(int which, const u8* src, u32 len, u8* out, u32 cap) {
    const u8* s = stage(src, len, cap);
    if (!s) return -2;
    u8* d = dst_buf + LIMIT - cap;
    int r;
    switch (which) {
        case 0: r = lz4_decompress_block(s, len, d, cap); break;
        case 1: r = run_warp(decompress_warp_kernel, s, len, d, cap); break;
        case 2: r = lz4_compress_block(s, len, d, cap, table); break;
        case 3: r = run_warp(compress_kernel, s, len, d, cap); break;
        default: return -2;
    }
    if (r > 0) memcpy(out, d, (size_t)r);
    return r;
}
}
