// Batched LZ4 block compression and decompression (the LZ4 block format: tokens, literal and
// match lengths, 16-bit little-endian offsets; last 5 bytes literals, last match starting at
// least 12 bytes before the end) for the DWCP offload engine. A warp compresses one packet, its
// 32 lanes looking up 32 positions at once in the packet's hash table in shared memory (sized
// to the packet, up to 4096 entries); its output is byte for byte that of the serial
// `lz4_compress_block` below, which the host check builds. A warp decompresses a packet
// (`lz4_decompress_warp`), or one thread does (`lz4_decompress`, kept to compare on a GPU),
// both by `lz4_decompress_lanes`.

#define LZ4_HASH_LOG_MAX 12
// Warps per block of lz4_compress: each has its own table of 1 << LZ4_HASH_LOG_MAX u16.
#define LZ4_COMPRESS_WARPS 4
// Threads per block of lz4_decompress.
#define LZ4_DECOMPRESS_THREADS 32
// Warps per block of lz4_decompress_warp.
#define LZ4_DECOMPRESS_WARPS 4

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

// The hash table's size for a block of `len` bytes: about one entry per byte, 64 to 4096.
DEV u32 lz4_hash_log(u32 len) {
    u32 hl = LZ4_HASH_LOG_MAX;
    while (hl > 6 && (1u << hl) > len) hl--;
    return hl;
}

DEV u32 lz4_hash(u32 seq, u32 hl) { return (seq * 2654435761u) >> (32 - hl); }

// Compresses `src[..len]` into `dst[..cap]`; the output length, or -1 when it does not fit.
// Greedy: at each position the table gives the last position with the same hash; a match of 4
// or more bytes is extended forwards, then backwards over the pending literals. `table` holds at
// least 1 << LZ4_HASH_LOG_MAX entries: positions as 16-bit offsets + 1 from `base`, the start of
// the current window. When the input reaches 64 KiB past `base`, the table is cleared and the
// window starts again, so a match never lies more than 65534 bytes back (LZ4's offsets are
// 16-bit) and inputs of any length compress.
DEV int lz4_compress_block(const u8* src, u32 len, u8* dst, u32 cap, u16* table) {
    u32 op = 0, anchor = 0;
    if (len >= 13) {
        u32 hl = lz4_hash_log(len);
        for (u32 i = 0; i < (1u << hl); i++) table[i] = 0;
        u32 ip = 0, base = 0;
        while (ip + 12 <= len) {
            if (ip - base >= 65535) {
                for (u32 i = 0; i < (1u << hl); i++) table[i] = 0;
                base = ip;
            }
            u32 seq = load_le32(src + ip);
            u32 h = lz4_hash(seq, hl);
            u32 cand = table[h];
            table[h] = (u16)(ip - base + 1);
            if (cand != 0 && load_le32(src + base + cand - 1) == seq) {
                cand += base - 1;
                u32 ml = 4;
                while (ip + ml < len - 5 && src[cand + ml] == src[ip + ml]) ml++;
                while (ip > anchor && cand > base && src[ip - 1] == src[cand - 1]) {
                    ip--;
                    cand--;
                    ml++;
                }
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

// Reads a run length's extra bytes (after the 15 in the token) into `*r`; false when the
// input ends first.
DEV bool lz4_get_len(const u8* src, u32 len, u32* ip, u32* r) {
    u32 b;
    do {
        if (*ip >= len) return false;
        b = src[(*ip)++];
        *r += b;
    } while (b == 255);
    return true;
}

// A barrier among the `lanes` threads sharing a packet: a warp's, or none for one thread
// (and none in the host check's build, which has no warps).
DEV void lz4_lanes_sync(u32 lanes) {
#ifdef DWCP_HOST_CHECK
    (void)lanes;
#else
    if (lanes > 1) __syncwarp();
#endif
}

// Decompresses `src[..len]` into `dst[..cap]` with `lanes` threads (1, or a warp's 32), this
// one `lane`; the output length, or -1 for malformed input or output that does not fit.
// Every lane parses the tokens, lengths and offsets alike (for a warp: the same bytes, one
// load for all; the same branches, so it never splits, and a refusal is the whole warp's);
// the lanes share each sequence's copies, lane l taking bytes l, l + lanes, …. A match's byte
// i is the byte `offset` back of it, and for i ≥ offset that byte is itself a copy: the
// repeat of the last `offset` bytes before the match, byte i mod offset of them, read from
// output that was there before the match started — so the lanes copy a match, overlapping or
// not, without waiting on each other inside it. The barrier after each sequence's literals
// makes every lane's writes so far seen by the match reads that follow (the only reads of the
// output).
DEV int lz4_decompress_lanes(const u8* src, u32 len, u8* dst, u32 cap, u32 lane, u32 lanes) {
    u32 ip = 0, op = 0;
    for (;;) {
        if (ip >= len) return -1;
        u32 token = src[ip++];
        u32 lit = token >> 4;
        if (lit == 15 && !lz4_get_len(src, len, &ip, &lit)) return -1;
        if (lit > len - ip || lit > cap - op) return -1;
        for (u32 i = lane; i < lit; i += lanes) dst[op + i] = src[ip + i];
        ip += lit;
        op += lit;
        if (ip == len) return (int)op;
        if (len - ip < 2) return -1;
        u32 offset = (u32)src[ip] | ((u32)src[ip + 1] << 8);
        ip += 2;
        if (offset == 0 || offset > op) return -1;
        u32 ml = token & 15;
        if (ml == 15 && !lz4_get_len(src, len, &ip, &ml)) return -1;
        ml += 4;
        if (ml > cap - op) return -1;
        lz4_lanes_sync(lanes);
        const u8* from = dst + op - offset;
        // r = i mod offset for this lane's i, kept by adding lanes mod offset per step.
        u32 r = lane % offset, step = lanes % offset;
        for (u32 i = lane; i < ml; i += lanes) {
            dst[op + i] = from[r];
            r += step;
            if (r >= offset) r -= offset;
        }
        op += ml;
    }
}

// The serial decompressor (one thread), which the host check builds.
DEV int lz4_decompress_block(const u8* src, u32 len, u8* dst, u32 cap) {
    return lz4_decompress_lanes(src, len, dst, cap, 0, 1);
}

#ifndef DWCP_HOST_CHECK

#define LZ4_NONE 0xffffffffu
#define LZ4_ALL 0xffffffffu

// Bytes lz4_put_len writes for a run length `r` past the token's 15.
DEV u32 lz4_len_bytes(u32 r) { return r / 255 + 1; }

// lz4_emit for a whole warp (every lane calls it with the same arguments): lane 0 writes the
// token, lengths and offset, the lanes copy the literals between them.
DEV bool lz4_emit_warp(u8* dst, u32 cap, u32* op, const u8* lit_src, u32 lit, u32 offset,
                       u32 ml, u32 lane) {
    u32 need = 1 + lit + lit / 255 + 1 + (ml ? 2 + (ml - 4) / 255 + 1 : 0);
    if (need > cap - *op) return false;
    u32 o = *op;
    u32 at = o + 1 + (lit >= 15 ? lz4_len_bytes(lit - 15) : 0);
    u32 m = ml ? ml - 4 : 0;
    if (lane == 0) {
        u32 token = (lit >= 15 ? 15u : lit) << 4;
        if (ml) token |= m >= 15 ? 15u : m;
        dst[o] = (u8)token;
        u32 p = o + 1;
        if (lit >= 15) lz4_put_len(dst, &p, lit - 15);
    }
    for (u32 i = lane; i < lit; i += 32) dst[at + i] = lit_src[i];
    at += lit;
    if (ml) {
        if (lane == 0) {
            dst[at] = (u8)(offset & 0xff);
            dst[at + 1] = (u8)(offset >> 8);
            u32 p = at + 2;
            if (m >= 15) lz4_put_len(dst, &p, m - 15);
        }
        at += 2 + (m >= 15 ? lz4_len_bytes(m - 15) : 0);
    }
    *op = at;
    return true;
}

// Clears the table's first 1 << hl entries, the lanes sharing the stores; every lane sees
// them cleared after the second barrier.
DEV void lz4_clear_warp(u16* table, u32 hl, u32 lane) {
    __syncwarp();
    for (u32 i = lane; i < (1u << hl); i += 32) table[i] = 0;
    __syncwarp();
}

// lz4_compress_block by one warp, with the same output: each step, lane l takes position
// ip + l of the up to 32 the serial loop would visit next without a match or a window reset.
// A lane's candidate is the last earlier lane of the step with its hash, else the table's
// entry (what the serial loop would have found there); the first lane with a match wins;
// each hash among the lanes up to it gets its last such lane's position, as serially. The
// match is extended forwards 32 bytes per step, backwards byte by byte (every lane alike).
DEV int lz4_compress_warp(const u8* src, u32 len, u8* dst, u32 cap, u16* table, u32 lane) {
    u32 op = 0, anchor = 0;
    if (len >= 13) {
        u32 hl = lz4_hash_log(len);
        lz4_clear_warp(table, hl, lane);
        u32 ip = 0, base = 0;
        while (ip + 12 <= len) {
            if (ip - base >= 65535) {
                lz4_clear_warp(table, hl, lane);
                base = ip;
            }
            u32 w = len - 11 - ip;
            if (w > 32) w = 32;
            if (w > 65535 - (ip - base)) w = 65535 - (ip - base);
            u32 pos = ip + lane;
            bool act = lane < w;
            u32 seq = act ? load_le32(src + pos) : 0;
            // Lanes past the step get hashes no lane in it has.
            u32 h = act ? lz4_hash(seq, hl) : (1u << hl) + lane;
            u32 same = __match_any_sync(LZ4_ALL, h);
            u32 earlier = same & ((1u << lane) - 1);
            u32 cand = earlier ? ip + (u32)(31 - __clz((int)earlier)) - base + 1
                               : (act ? (u32)table[h] : 0u);
            bool hit = act && cand != 0 && load_le32(src + base + cand - 1) == seq;
            u32 hits = __ballot_sync(LZ4_ALL, hit);
            u32 last = hits ? (u32)__ffs(hits) - 1 : w - 1;
            // Each hash among the lanes up to `last` gets the position of its last such lane,
            // written by the lane that read its entry (its first lane, `earlier` empty): a
            // vote orders no memory (CUDA's guide: shuffles and votes "do not imply a memory
            // barrier"), so a read and another lane's write of one entry would need a barrier
            // between them; one lane's read and write are in program order. The barrier after
            // makes the writes seen by the next step's reads. The sim tests' race check holds
            // both.
            u32 upto = last == 31 ? LZ4_ALL : (2u << last) - 1;
            u32 mine = same & upto;
            if (act && !earlier && mine) {
                table[h] = (u16)(ip + (u32)(31 - __clz((int)mine)) - base + 1);
            }
            __syncwarp();
            if (!hits) {
                ip += w;
                continue;
            }
            u32 mp = ip + last;
            u32 mc = __shfl_sync(LZ4_ALL, base + cand - 1, last);
            u32 ml = 4;
            for (;;) {
                u32 k = mp + ml + lane;
                bool stop = k >= len - 5 || src[mc + ml + lane] != src[k];
                u32 stops = __ballot_sync(LZ4_ALL, stop);
                if (stops) {
                    ml += (u32)__ffs(stops) - 1;
                    break;
                }
                ml += 32;
            }
            while (mp > anchor && mc > base && src[mp - 1] == src[mc - 1]) {
                mp--;
                mc--;
                ml++;
            }
            if (!lz4_emit_warp(dst, cap, &op, src + anchor, mp - anchor, mp - mc, ml, lane)) {
                return -1;
            }
            ip = mp + ml;
            anchor = ip;
        }
    }
    if (!lz4_emit_warp(dst, cap, &op, src + anchor, len - anchor, 0, 0, lane)) return -1;
    return (int)op;
}

// Compresses packet i from src + src_off[i] into dst + dst_off[i] (dst_cap[i] bytes: the
// caller passes len - 1 to keep only results that are smaller), one warp per packet, blocks
// of LZ4_COMPRESS_WARPS warps. out_len[i] = LZ4_NONE when the result did not fit.
extern "C" __global__ void lz4_compress(const u8* src, const u32* src_off, const u32* src_len,
                                        u8* dst, const u32* dst_off, const u32* dst_cap,
                                        u32* out_len, u32 n) {
    __shared__ u16 tables[LZ4_COMPRESS_WARPS][1 << LZ4_HASH_LOG_MAX];
    u32 warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    u16* table = tables[warp];
    for (u32 i = blockIdx.x * LZ4_COMPRESS_WARPS + warp; i < n;
         i += gridDim.x * LZ4_COMPRESS_WARPS) {
        int r = lz4_compress_warp(src + src_off[i], src_len[i], dst + dst_off[i], dst_cap[i],
                                  table, lane);
        if (lane == 0) out_len[i] = r < 0 ? LZ4_NONE : (u32)r;
    }
}

// Decompresses packet i like lz4_decompress, one warp per packet, blocks of
// LZ4_DECOMPRESS_WARPS warps.
extern "C" __global__ void lz4_decompress_warp(const u8* src, const u32* src_off,
                                               const u32* src_len, u8* dst, const u32* dst_off,
                                               const u32* dst_cap, u32* out_len, u32 n) {
    u32 warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    for (u32 i = blockIdx.x * LZ4_DECOMPRESS_WARPS + warp; i < n;
         i += gridDim.x * LZ4_DECOMPRESS_WARPS) {
        int r = lz4_decompress_lanes(src + src_off[i], src_len[i], dst + dst_off[i],
                                     dst_cap[i], lane, 32);
        if (lane == 0) out_len[i] = r < 0 ? LZ4_NONE : (u32)r;
    }
}

// One thread per packet.
extern "C" __global__ void lz4_decompress(const u8* src, const u32* src_off, const u32* src_len,
                                          u8* dst, const u32* dst_off, const u32* dst_cap,
                                          u32* out_len, u32 n) {
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int r = lz4_decompress_block(src + src_off[i], src_len[i], dst + dst_off[i], dst_cap[i]);
        out_len[i] = r < 0 ? LZ4_NONE : (u32)r;
    }
}

#endif
