// The GPU's LZ4 device functions (kernels/cuda/lz4.cu) built for the host, for the fuzzer.
// Each call's input ends at, and its output buffer ends at, a page the process may not touch,
// so a read or write one byte past them faults (libFuzzer reports it as a crash).
#define DWCP_HOST_CHECK 1
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "common.cuh"
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

// Copies `src` so it ends at the guard page; the copy, or null when it is too long.
static const u8* stage(const u8* src, u32 len) {
    if (!src_buf) src_buf = guarded();
    if (!dst_buf) dst_buf = guarded();
    if (!src_buf || !dst_buf || len > LIMIT) return nullptr;
    u8* at = src_buf + LIMIT - len;
    memcpy(at, src, len);
    return at;
}

extern "C" {

// `lz4_decompress_block` (the device decompressor's serial form) of `src[..len]` into an
// output of `cap` bytes ending at a guard page, copied to `out`; its result, or -2 when the
// sizes are past LIMIT.
int dwcp_fuzz_lz4_decompress(const u8* src, u32 len, u8* out, u32 cap) {
    const u8* s = stage(src, len);
    if (!s || cap > LIMIT) return -2;
    u8* d = dst_buf + LIMIT - cap;
    int r = lz4_decompress_block(s, len, d, cap);
    if (r > 0) memcpy(out, d, (size_t)r);
    return r;
}

// `lz4_compress_block` (the serial form of the GPU's compressor) likewise.
int dwcp_fuzz_lz4_compress(const u8* src, u32 len, u8* out, u32 cap) {
    const u8* s = stage(src, len);
    if (!s || cap > LIMIT) return -2;
    u8* d = dst_buf + LIMIT - cap;
    int r = lz4_compress_block(s, len, d, cap, table);
    if (r > 0) memcpy(out, d, (size_t)r);
    return r;
}
}
