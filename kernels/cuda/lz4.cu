// Batched LZ4 block compression and decompression (the LZ4 block format: tokens, literal and
// match lengths, 16-bit little-endian offsets; last 5 bytes literals, last match starting at
// least 12 bytes before the end) for the DWCP offload engine. One thread per packet; the
// compressor's hash table lives in shared memory, sized to the packet.

#define LZ4_HASH_LOG_MAX 9
#define LZ4_THREADS 32

DEV u32 load_le32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

// Appends a run length's extra bytes (after the 15 in the token).
DEV void lz4_put_len(u8* dst, u32* o, u32 r) {
    while (r >= 255) {
        dst[(*o)++] = 255;
        r -= 255;
    }
    dst[(*o)++] = (u8)r;
}

// Appends one sequence; a match length of 0 means the last, literals-only sequence.
DEV bool lz4_emit(u8* dst, u32 cap, u32* op, const u8* lit_src, u32 lit, u32 offset, u32 ml) {
    u32 need = 1 + lit + lit / 255 + 1 + (ml ? 2 + (ml - 4) / 255 + 1 : 0);
    if (need > cap - *op) return false;
    u32 o = *op;
    u32 token_at = o++;
    u32 token = lit >= 15 ? 15u << 4 : lit << 4;
    if (lit >= 15) lz4_put_len(dst, &o, lit - 15);
    for (u32 i = 0; i < lit; i++) dst[o++] = lit_src[i];
    if (ml) {
        dst[o++] = (u8)(offset & 0xff);
        dst[o++] = (u8)(offset >> 8);
        u32 m = ml - 4;
        token |= m >= 15 ? 15u : m;
        if (m >= 15) lz4_put_len(dst, &o, m - 15);
    }
    dst[token_at] = (u8)token;
    *op = o;
    return true;
}

// Compresses `src[..len]` into `dst[..cap]`; the output length, or -1 when it does not fit.
// `table` holds at least 1 << LZ4_HASH_LOG_MAX entries: positions as 16-bit offsets + 1 from
// `base`, the start of the current window. When the input reaches 64 KiB past `base`, the table
// is cleared and the window starts again, so a match never lies more than 65534 bytes back
// (LZ4's offsets are 16-bit) and inputs of any length compress.
DEV int lz4_compress_block(const u8* src, u32 len, u8* dst, u32 cap, u16* table) {
    u32 op = 0, anchor = 0;
    if (len >= 13) {
        u32 hl = LZ4_HASH_LOG_MAX;
        while (hl > 6 && (1u << (hl + 1)) > len) hl--;
        for (u32 i = 0; i < (1u << hl); i++) table[i] = 0;
        u32 ip = 0, base = 0;
        while (ip + 12 <= len) {
            if (ip - base >= 65535) {
                for (u32 i = 0; i < (1u << hl); i++) table[i] = 0;
                base = ip;
            }
            u32 seq = load_le32(src + ip);
            u32 h = (seq * 2654435761u) >> (32 - hl);
            u32 cand = table[h];
            table[h] = (u16)(ip - base + 1);
            if (cand != 0 && load_le32(src + base + cand - 1) == seq) {
                cand += base - 1;
                u32 ml = 4;
                while (ip + ml < len - 5 && src[cand + ml] == src[ip + ml]) ml++;
                if (!lz4_emit(dst, cap, &op, src + anchor, ip - anchor, ip - cand, ml)) return -1;
                ip += ml;
                anchor = ip;
                continue;
            }
            ip++;
        }
    }
    if (!lz4_emit(dst, cap, &op, src + anchor, len - anchor, 0, 0)) return -1;
    return (int)op;
}

// Decompresses `src[..len]` into `dst[..cap]`; the output length, or -1 for malformed input
// or output that does not fit.
DEV int lz4_decompress_block(const u8* src, u32 len, u8* dst, u32 cap) {
    u32 ip = 0, op = 0;
    for (;;) {
        if (ip >= len) return -1;
        u32 token = src[ip++];
        u32 lit = token >> 4;
        if (lit == 15) {
            u32 b;
            do {
                if (ip >= len) return -1;
                b = src[ip++];
                lit += b;
            } while (b == 255);
        }
        if (lit > len - ip || lit > cap - op) return -1;
        for (u32 i = 0; i < lit; i++) dst[op++] = src[ip++];
        if (ip == len) return (int)op;
        if (len - ip < 2) return -1;
        u32 offset = (u32)src[ip] | ((u32)src[ip + 1] << 8);
        ip += 2;
        if (offset == 0 || offset > op) return -1;
        u32 ml = token & 15;
        if (ml == 15) {
            u32 b;
            do {
                if (ip >= len) return -1;
                b = src[ip++];
                ml += b;
            } while (b == 255);
        }
        ml += 4;
        if (ml > cap - op) return -1;
        for (u32 i = 0; i < ml; i++, op++) dst[op] = dst[op - offset];
    }
}

#ifndef DWCP_HOST_CHECK

#define LZ4_NONE 0xffffffffu

// Compresses packet i from src + src_off[i] into dst + dst_off[i] (dst_cap[i] bytes: the
// caller passes len - 1 to keep only results that are smaller). out_len[i] = LZ4_NONE when
// the result did not fit.
extern "C" __global__ void lz4_compress(const u8* src, const u32* src_off, const u32* src_len,
                                        u8* dst, const u32* dst_off, const u32* dst_cap,
                                        u32* out_len, u32 n) {
    __shared__ u16 tables[LZ4_THREADS][1 << LZ4_HASH_LOG_MAX];
    u16* table = tables[threadIdx.x];
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int r = lz4_compress_block(src + src_off[i], src_len[i], dst + dst_off[i], dst_cap[i],
                                   table);
        out_len[i] = r < 0 ? LZ4_NONE : (u32)r;
    }
}

extern "C" __global__ void lz4_decompress(const u8* src, const u32* src_off, const u32* src_len,
                                          u8* dst, const u32* dst_off, const u32* dst_cap,
                                          u32* out_len, u32 n) {
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int r = lz4_decompress_block(src + src_off[i], src_len[i], dst + dst_off[i], dst_cap[i]);
        out_len[i] = r < 0 ? LZ4_NONE : (u32)r;
    }
}

#endif
