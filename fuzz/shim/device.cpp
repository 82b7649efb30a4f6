// The GPU's code (kernels/cuda/lz4.cu, gcm.cu) built for the host, for the fuzzer: the serial
// LZ4 device functions, and the real kernels `lz4_decompress_warp`, `lz4_compress`,
// `gcm_key_setup`, `gcm_seal` and `gcm_open` run on one warp by the simulated driver's SIMT
// emulator (kernels/sim/simt.h: each lane a fiber, votes, shuffles and barriers by switching; a
// barrier not every lane reaches at the same place is a divergence). Each call's input ends at,
// and its output buffer ends at, a page the process may not touch, so a read or write one byte
// past them faults (libFuzzer reports it as a crash).
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

// Runs `kernel` (the simulated driver's argument layout: each argument a u64) on one block of
// one warp; false when its lanes diverged.
static bool launch(void (*kernel)(const u64*), const u64* args, int nargs) {
    for (int i = 0; i < nargs; i++) simt::body_args[i] = args[i];
    simt::body = kernel;
    blockDim = SimDim3{32, 1, 1};
    gridDim = SimDim3{1, 1, 1};
    blockIdx = SimDim3{0, 0, 0};
    return simt::run_block(32);
}

static u64 ptr(const void* p) { return (u64)(uintptr_t)p; }

// Runs an LZ4 kernel on one packet; the output length, -1 for LZ4_NONE, or -3 when the warp's
// lanes diverged.
static int run_warp(void (*kernel)(const u64*), const u8* s, u32 len, u8* d, u32 cap) {
    u32 src_off = 0, src_len = len, dst_off = 0, dst_cap = cap, out_len = 0;
    const u64 args[8] = {ptr(s),    ptr(&src_off), ptr(&src_len), ptr(d),
                         ptr(&dst_off), ptr(&dst_cap), ptr(&out_len), 1};
    if (!launch(kernel, args, 8)) return -3;
    return out_len == LZ4_NONE ? -1 : (int)out_len;
}

static void key_setup_kernel(const u64* a) {
    gcm_key_setup((const u8*)a[0], (GcmKey*)a[1], (u32)a[2]);
}

static void seal_kernel(const u64* a) {
    gcm_seal((u8*)a[0], (const u32*)a[1], (const u32*)a[2], (const u32*)a[3], (const u32*)a[4],
             (const u8*)a[5], (const GcmKey*)a[6], (u8*)a[7], (u32)a[8]);
}

static void open_kernel(const u64* a) {
    gcm_open((u8*)a[0], (const u32*)a[1], (const u32*)a[2], (const u32*)a[3], (const u32*)a[4],
             (const u8*)a[5], (const GcmKey*)a[6], (u8*)a[7], (u32)a[8]);
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

// The order the emulator runs a warp's lanes in between barriers (simt::order): 0 by lane,
// 1 backwards, anything else the seed of a random order every sweep.
void dwcp_fuzz_order(u64 order) { simt::set_order(order); }

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

// The `gcm_seal` (`seal` != 0) or `gcm_open` kernel on one packet, its key expanded by
// `gcm_key_setup`: `aad[..aad_len]` then `buf[..len]` laid out as the engine stages them,
// ending at a guard page (a seal's 16 bytes of tag after the plaintext included); `buf` gets
// the result (ciphertext and tag, or plaintext: zeroed when the tag does not verify), `*ok`
// the kernel's flag. 0, -2 when a size is past LIMIT, -3 when the warp's lanes diverged.
int dwcp_fuzz_gcm(int seal, const u8* key, const u8* nonce, const u8* aad, u32 aad_len, u8* buf,
                  u32 len, u8* ok) {
    static GcmKey keys[1];
    u32 total = aad_len + len + (seal ? 16 : 0);
    if (aad_len > LIMIT || len > LIMIT || total > LIMIT) return -2;
    if (!src_buf) src_buf = guarded();
    if (!src_buf) return -2;
    u8* data = src_buf + LIMIT - total;
    memcpy(data, aad, aad_len);
    memcpy(data + aad_len, buf, len);
    u64 setup[3] = {ptr(key), ptr(keys), 1};
    if (!launch(key_setup_kernel, setup, 3)) return -3;
    u32 off = 0, al = aad_len, l = len, key_idx = 0;
    *ok = 0xA5;
    u64 args[9] = {ptr(data), ptr(&off), ptr(&al), ptr(&l), ptr(&key_idx), ptr(nonce),
                   ptr(keys), ptr(ok),  1};
    if (!launch(seal ? seal_kernel : open_kernel, args, 9)) return -3;
    memcpy(buf, data + aad_len, total - aad_len);
    return 0;
}
}
