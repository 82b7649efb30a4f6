// Shared definitions for the DWCP CUDA kernels. NVRTC compiles each kernel file with this
// header prepended (no system headers are needed); `host_check.cpp` compiles the same device
// functions with a host C++ compiler so their arithmetic is checked without a GPU.
#ifndef DWCP_COMMON_CUH
#define DWCP_COMMON_CUH

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#ifdef DWCP_HOST_CHECK
#define DEV static inline
#else
#define DEV __device__ __forceinline__ static
#endif

// A 128-bit GHASH value: `hi` holds bytes 0..7 and `lo` bytes 8..15, each big-endian, so bit 0
// of the GCM bit order is the most significant bit of `hi`.
struct Block {
    u64 hi;
    u64 lo;
};

DEV Block block_xor(Block a, Block b) {
    Block r;
    r.hi = a.hi ^ b.hi;
    r.lo = a.lo ^ b.lo;
    return r;
}

DEV u64 load_be64(const u8* p) {
    u64 v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | (u64)p[i];
    return v;
}

DEV void store_be64(u8* p, u64 v) {
    for (int i = 7; i >= 0; i--) {
        p[i] = (u8)(v & 0xff);
        v >>= 8;
    }
}

DEV u32 load_be32(const u8* p) {
    return ((u32)p[0] << 24) | ((u32)p[1] << 16) | ((u32)p[2] << 8) | (u32)p[3];
}

DEV void store_be32(u8* p, u32 v) {
    p[0] = (u8)(v >> 24);
    p[1] = (u8)(v >> 16);
    p[2] = (u8)(v >> 8);
    p[3] = (u8)v;
}

// Loads up to 16 bytes as a block, zero-padded (GHASH pads partial blocks with zeros).
DEV Block load_block(const u8* p, u32 n) {
    u8 b[16];
    for (u32 i = 0; i < 16; i++) b[i] = i < n ? p[i] : (u8)0;
    Block r;
    r.hi = load_be64(b);
    r.lo = load_be64(b + 8);
    return r;
}

#endif
