// The GPU's LZ4 device functions (kernels/cuda/lz4.cu) built for the host, for the fuzzer.
// Each call's input ends at, and its output buffer ends at, a page the process may not touch,
// so a read or write one byte past them faults (libFuzzer reports it as a crash).
//
// The warp decompressor (`lz4_decompress_warp`: 32 lanes, a `__syncwarp` per sequence) is
// emulated with one fiber per lane: each lane runs until it reaches the barrier, then the
// next lane runs, and after the last one the first goes on. A lane that reaches the barrier
// when another has returned, or lanes that return different results, are reported as a
// divergence; running the lanes in reverse order as well shows a read of bytes another lane
// writes between the same two barriers (a race on a GPU).
#define DWCP_HOST_CHECK 1
#define DWCP_HOST_LANES_SYNC(lanes) lanes_sync(lanes)
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstring>

#include "common.cuh"

static void lanes_sync(unsigned lanes);

#include "lz4.cu"

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

// The emulated warp.
static const u32 WARP = 32;
static ucontext_t scheduler;
static ucontext_t lane_ctx[WARP];
static char lane_stack[WARP][64 * 1024];
static u32 running;
static u32 barriers[WARP];
static int lane_result[WARP];
static bool lane_done[WARP];
static const u8* warp_src;
static u32 warp_len;
static u8* warp_dst;
static u32 warp_cap;

static void lanes_sync(unsigned lanes) {
    if (lanes <= 1) return;
    barriers[running]++;
    swapcontext(&lane_ctx[running], &scheduler);
}

static void lane_main(int lane) {
    lane_result[lane] = lz4_decompress_lanes(warp_src, warp_len, warp_dst, warp_cap, (u32)lane, WARP);
    lane_done[lane] = true;
}

// Runs the 32 lanes on `s`, `d`; the warp's result, or -3 when the lanes diverged.
static int run_warp(const u8* s, u32 len, u8* d, u32 cap, bool reverse) {
    warp_src = s;
    warp_len = len;
    warp_dst = d;
    warp_cap = cap;
    for (u32 l = 0; l < WARP; l++) {
        getcontext(&lane_ctx[l]);
        lane_ctx[l].uc_stack.ss_sp = lane_stack[l];
        lane_ctx[l].uc_stack.ss_size = sizeof lane_stack[l];
        lane_ctx[l].uc_link = &scheduler;
        makecontext(&lane_ctx[l], (void (*)())lane_main, 1, (int)l);
        barriers[l] = 0;
        lane_done[l] = false;
    }
    bool diverged = false;
    for (u32 round = 0;; round++) {
        u32 ran = 0;
        for (u32 k = 0; k < WARP; k++) {
            u32 l = reverse ? WARP - 1 - k : k;
            if (lane_done[l]) continue;
            running = l;
            swapcontext(&scheduler, &lane_ctx[l]);
            ran++;
        }
        if (ran == 0) break;
        // After a round every lane has returned, or every lane waits at barrier round + 1.
        u32 done = 0;
        for (u32 l = 0; l < WARP; l++) done += lane_done[l];
        if (done != 0 && done != WARP) diverged = true;
        for (u32 l = 0; l < WARP; l++)
            if (!lane_done[l] && barriers[l] != round + 1) diverged = true;
        if (diverged) {
            // Let the rest finish (they see no more barriers waiting on them).
            for (u32 l = 0; l < WARP; l++)
                while (!lane_done[l]) {
                    running = l;
                    swapcontext(&scheduler, &lane_ctx[l]);
                }
            break;
        }
    }
    for (u32 l = 1; l < WARP; l++)
        if (lane_result[l] != lane_result[0]) diverged = true;
    return diverged ? -3 : lane_result[0];
}

extern "C" {

// `lz4_decompress_block` (the device decompressor's serial form) of `src[..len]` into an
// output of `cap` bytes ending at a guard page, copied to `out`; its result, or -2 when the
// sizes are past LIMIT.
int dwcp_fuzz_lz4_decompress(const u8* src, u32 len, u8* out, u32 cap) {
    const u8* s = stage(src, len, cap);
    if (!s) return -2;
    u8* d = dst_buf + LIMIT - cap;
    int r = lz4_decompress_block(s, len, d, cap);
    if (r > 0) memcpy(out, d, (size_t)r);
    return r;
}

// `lz4_decompress_warp`'s work on one packet, its 32 lanes emulated (in reverse order when
// `reverse`), likewise; -3 when the lanes diverged.
int dwcp_fuzz_lz4_decompress_warp(const u8* src, u32 len, u8* out, u32 cap, int reverse) {
    const u8* s = stage(src, len, cap);
    if (!s) return -2;
    u8* d = dst_buf + LIMIT - cap;
    int r = run_warp(s, len, d, cap, reverse != 0);
    if (r > 0) memcpy(out, d, (size_t)r);
    return r;
}

// `lz4_compress_block` (the serial form of the GPU's compressor) likewise.
int dwcp_fuzz_lz4_compress(const u8* src, u32 len, u8* out, u32 cap) {
    const u8* s = stage(src, len, cap);
    if (!s) return -2;
    u8* d = dst_buf + LIMIT - cap;
    int r = lz4_compress_block(s, len, d, cap, table);
    if (r > 0) memcpy(out, d, (size_t)r);
    return r;
}
}
