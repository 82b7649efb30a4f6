// Batched AES-256-GCM (NIST SP 800-38D, 96-bit IVs) for the DWCP offload engine.
//
// One warp per packet. Lane `l` owns GHASH blocks l, l+32, l+64, ... of the sequence
// AAD blocks | ciphertext blocks | length block; it encrypts the counter blocks of the
// ciphertext blocks it owns and folds its blocks by Horner's rule with H^32. Each lane then
// multiplies its sum by H^(m - last) so that every block X_g carries H^(m - g); the lanes' sums
// are XOR-reduced and lane 0 adds E_K(J0) to make the tag. Packets are edited in place.
//
// AES is the classic four-T-table form; the S-box and tables are computed into shared memory
// by every block at start (no typed-in tables), and per-key material (round keys and
// H^1..H^32) is made once per key by `gcm_key_setup`.

// The S-box and the four encryption T-tables.
struct Tables {
    u32 te[4][256];
    u8 sbox[256];
};

// Per-key material: round keys (big-endian words) and H^1..H^32 at hpow[0..31].
struct GcmKey {
    u32 rk[60];
    u32 pad[4];
    Block hpow[32];
};

DEV u32 gf8_mul(u32 a, u32 b) {
    u32 r = 0;
    for (int i = 0; i < 8; i++) {
        if (b & 1) r ^= a;
        b >>= 1;
        a <<= 1;
        if (a & 0x100) a ^= 0x11b;
    }
    return r & 0xff;
}

DEV u32 sbox_of(u32 x) {
    // x^254 is x's inverse in GF(2^8) (0 for 0).
    u32 inv = 1, base = x, e = 254;
    while (e) {
        if (e & 1) inv = gf8_mul(inv, base);
        base = gf8_mul(base, base);
        e >>= 1;
    }
    if (x == 0) inv = 0;
    u32 s = inv;
    u32 r = inv;
    for (int i = 0; i < 4; i++) {
        r = ((r << 1) | (r >> 7)) & 0xff;
        s ^= r;
    }
    return s ^ 0x63;
}

DEV u32 ror32(u32 v, u32 n) { return (v >> n) | (v << (32 - n)); }

// Fills entry `i` of every table.
DEV void tables_fill(Tables* t, u32 i) {
    u32 s = sbox_of(i);
    u32 s2 = ((s << 1) ^ ((s & 0x80) ? 0x1b : 0)) & 0xff;
    u32 s3 = s2 ^ s;
    u32 w = (s2 << 24) | (s << 16) | (s << 8) | s3;
    t->sbox[i] = (u8)s;
    t->te[0][i] = w;
    t->te[1][i] = ror32(w, 8);
    t->te[2][i] = ror32(w, 16);
    t->te[3][i] = ror32(w, 24);
}

DEV u32 sub_word(const Tables* t, u32 w) {
    return ((u32)t->sbox[w >> 24] << 24) | ((u32)t->sbox[(w >> 16) & 0xff] << 16) |
           ((u32)t->sbox[(w >> 8) & 0xff] << 8) | (u32)t->sbox[w & 0xff];
}

// AES-256 key expansion (FIPS-197 §5.2, Nk = 8, 60 words).
DEV void aes256_expand(const Tables* t, const u8* key, u32* rk) {
    for (int i = 0; i < 8; i++) rk[i] = load_be32(key + 4 * i);
    u32 rcon = 1;
    for (int i = 8; i < 60; i++) {
        u32 temp = rk[i - 1];
        if (i % 8 == 0) {
            temp = sub_word(t, (temp << 8) | (temp >> 24)) ^ (rcon << 24);
            rcon = ((rcon << 1) ^ ((rcon & 0x80) ? 0x1b : 0)) & 0xff;
        } else if (i % 8 == 4) {
            temp = sub_word(t, temp);
        }
        rk[i] = rk[i - 8] ^ temp;
    }
}

// Encrypts one block given as four big-endian words, in place.
DEV void aes256_encrypt(const Tables* t, const u32* rk, u32* s) {
    u32 s0 = s[0] ^ rk[0], s1 = s[1] ^ rk[1], s2 = s[2] ^ rk[2], s3 = s[3] ^ rk[3];
    for (int r = 1; r < 14; r++) {
        const u32* k = rk + 4 * r;
        u32 t0 = t->te[0][s0 >> 24] ^ t->te[1][(s1 >> 16) & 0xff] ^ t->te[2][(s2 >> 8) & 0xff] ^
                 t->te[3][s3 & 0xff] ^ k[0];
        u32 t1 = t->te[0][s1 >> 24] ^ t->te[1][(s2 >> 16) & 0xff] ^ t->te[2][(s3 >> 8) & 0xff] ^
                 t->te[3][s0 & 0xff] ^ k[1];
        u32 t2 = t->te[0][s2 >> 24] ^ t->te[1][(s3 >> 16) & 0xff] ^ t->te[2][(s0 >> 8) & 0xff] ^
                 t->te[3][s1 & 0xff] ^ k[2];
        u32 t3 = t->te[0][s3 >> 24] ^ t->te[1][(s0 >> 16) & 0xff] ^ t->te[2][(s1 >> 8) & 0xff] ^
                 t->te[3][s2 & 0xff] ^ k[3];
        s0 = t0;
        s1 = t1;
        s2 = t2;
        s3 = t3;
    }
    const u32* k = rk + 56;
    const u8* sb = t->sbox;
    s[0] = (((u32)sb[s0 >> 24] << 24) | ((u32)sb[(s1 >> 16) & 0xff] << 16) |
            ((u32)sb[(s2 >> 8) & 0xff] << 8) | (u32)sb[s3 & 0xff]) ^ k[0];
    s[1] = (((u32)sb[s1 >> 24] << 24) | ((u32)sb[(s2 >> 16) & 0xff] << 16) |
            ((u32)sb[(s3 >> 8) & 0xff] << 8) | (u32)sb[s0 & 0xff]) ^ k[1];
    s[2] = (((u32)sb[s2 >> 24] << 24) | ((u32)sb[(s3 >> 16) & 0xff] << 16) |
            ((u32)sb[(s0 >> 8) & 0xff] << 8) | (u32)sb[s1 & 0xff]) ^ k[2];
    s[3] = (((u32)sb[s3 >> 24] << 24) | ((u32)sb[(s0 >> 16) & 0xff] << 16) |
            ((u32)sb[(s1 >> 8) & 0xff] << 8) | (u32)sb[s2 & 0xff]) ^ k[3];
}

// Multiplication in GF(2^128) with GCM's bit order and polynomial (SP 800-38D, Algorithm 1).
DEV Block gf128_mul(Block x, Block y) {
    Block z;
    z.hi = 0;
    z.lo = 0;
    Block v = y;
    for (int i = 0; i < 128; i++) {
        u64 bit = i < 64 ? (x.hi >> (63 - i)) & 1 : (x.lo >> (127 - i)) & 1;
        u64 mask = (u64)0 - bit;
        z.hi ^= v.hi & mask;
        z.lo ^= v.lo & mask;
        u64 carry = (u64)0 - (v.lo & 1);
        v.lo = (v.lo >> 1) | (v.hi << 63);
        v.hi = (v.hi >> 1) ^ (carry & 0xe100000000000000ULL);
    }
    return z;
}

// Makes one key's material.
DEV void gcm_key_make(const Tables* t, const u8* raw, GcmKey* out) {
    aes256_expand(t, raw, out->rk);
    out->pad[0] = out->pad[1] = out->pad[2] = out->pad[3] = 0;
    u32 zero[4] = {0, 0, 0, 0};
    aes256_encrypt(t, out->rk, zero);
    Block h;
    h.hi = ((u64)zero[0] << 32) | zero[1];
    h.lo = ((u64)zero[2] << 32) | zero[3];
    out->hpow[0] = h;
    for (int i = 1; i < 32; i++) out->hpow[i] = gf128_mul(out->hpow[i - 1], h);
}

// The keystream block for counter value `ctr` of a 96-bit nonce: E_K(nonce || ctr).
DEV void gcm_keystream(const Tables* t, const u32* rk, const u8* nonce, u32 ctr, u8* out) {
    u32 s[4] = {load_be32(nonce), load_be32(nonce + 4), load_be32(nonce + 8), ctr};
    aes256_encrypt(t, rk, s);
    for (int i = 0; i < 4; i++) store_be32(out + 4 * i, s[i]);
}

// One lane's share of a packet: CTR over its ciphertext blocks and its partial GHASH sum,
// already multiplied into place. `seal` encrypts `payload[..ct_len]`, otherwise decrypts it
// (GHASH is always over the ciphertext).
DEV Block gcm_lane(const Tables* t, const GcmKey* k, const u8* aad, u32 aad_len, u8* payload,
                   u32 ct_len, const u8* nonce, u32 lane, u32 lanes, bool seal) {
    u32 a_blocks = (aad_len + 15) / 16;
    u32 c_blocks = (ct_len + 15) / 16;
    u32 m = a_blocks + c_blocks + 1;
    Block acc;
    acc.hi = 0;
    acc.lo = 0;
    Block h_stride = k->hpow[lanes - 1];
    u32 last = 0;
    bool any = false;
    for (u32 g = lane; g < m; g += lanes) {
        Block x;
        if (g < a_blocks) {
            u32 o = 16 * g;
            u32 n = aad_len - o < 16 ? aad_len - o : 16;
            x = load_block(aad + o, n);
        } else if (g < a_blocks + c_blocks) {
            u32 j = g - a_blocks;
            u32 o = 16 * j;
            u32 n = ct_len - o < 16 ? ct_len - o : 16;
            u8* p = payload + o;
            u8 ks[16];
            gcm_keystream(t, k->rk, nonce, j + 2, ks);
            if (seal) {
                for (u32 i = 0; i < n; i++) p[i] ^= ks[i];
                x = load_block(p, n);
            } else {
                x = load_block(p, n);
                for (u32 i = 0; i < n; i++) p[i] ^= ks[i];
            }
        } else {
            x.hi = (u64)aad_len * 8;
            x.lo = (u64)ct_len * 8;
        }
        acc = any ? block_xor(gf128_mul(acc, h_stride), x) : x;
        any = true;
        last = g;
    }
    if (any) acc = gf128_mul(acc, k->hpow[m - last - 1]);
    return acc;
}

// The tag from the lanes' XOR-reduced sum: E_K(J0) xor S.
DEV void gcm_tag(const Tables* t, const GcmKey* k, const u8* nonce, Block s, u8* tag) {
    u8 ek[16];
    gcm_keystream(t, k->rk, nonce, 1, ek);
    u8 sb[16];
    store_be64(sb, s.hi);
    store_be64(sb + 8, s.lo);
    for (int i = 0; i < 16; i++) tag[i] = ek[i] ^ sb[i];
}

#ifndef DWCP_HOST_CHECK

DEV void tables_init_shared(Tables* t) {
    for (u32 i = threadIdx.x; i < 256; i += blockDim.x) tables_fill(t, i);
    __syncthreads();
}

// One thread per key: raw 32-byte keys in, GcmKey records out.
extern "C" __global__ void gcm_key_setup(const u8* raw, GcmKey* keys, u32 n) {
    __shared__ Tables tabs;
    tables_init_shared(&tabs);
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        gcm_key_make(&tabs, raw + 32 * (u64)i, &keys[i]);
    }
}

DEV Block warp_xor(Block v) {
    for (int d = 16; d > 0; d >>= 1) {
        v.hi ^= __shfl_xor_sync(0xffffffffu, v.hi, d);
        v.lo ^= __shfl_xor_sync(0xffffffffu, v.lo, d);
    }
    return v;
}

// Structure-of-arrays batch: packet i's AAD starts at data + off[i], its payload follows the
// AAD. Seal: len[i] is the plaintext length and the tag is written after it. Open: len[i] is
// ciphertext plus tag; a packet whose tag does not verify has its plaintext zeroed.
DEV void gcm_batch(u8* data, const u32* off, const u32* aad_len, const u32* len,
                   const u32* key_idx, const u8* nonces, const GcmKey* keys, u8* ok, u32 n,
                   bool seal) {
    __shared__ Tables tabs;
    tables_init_shared(&tabs);
    u32 lane = threadIdx.x & 31;
    u32 warps = blockDim.x / 32;
    for (u32 p = blockIdx.x * warps + threadIdx.x / 32; p < n; p += gridDim.x * warps) {
        const GcmKey* k = &keys[key_idx[p]];
        u8* aad = data + off[p];
        u32 al = aad_len[p];
        u8* payload = aad + al;
        u32 l = len[p];
        const u8* nonce = nonces + 12 * (u64)p;
        if (!seal && l < 16) {
            if (lane == 0) ok[p] = 0;
            continue;
        }
        u32 ct_len = seal ? l : l - 16;
        Block s = warp_xor(gcm_lane(&tabs, k, aad, al, payload, ct_len, nonce, lane, 32, seal));
        u32 good = 1;
        if (lane == 0) {
            u8 tag[16];
            gcm_tag(&tabs, k, nonce, s, tag);
            u8* t = payload + ct_len;
            if (seal) {
                for (int i = 0; i < 16; i++) t[i] = tag[i];
            } else {
                u32 diff = 0;
                for (int i = 0; i < 16; i++) diff |= (u32)(t[i] ^ tag[i]);
                good = diff == 0;
            }
            ok[p] = (u8)good;
        }
        good = __shfl_sync(0xffffffffu, good, 0);
        if (!good) {
            // Lane 0 read the tag, and every lane its share of the ciphertext, that this
            // zeroing overwrites: a shuffle orders no memory, a barrier does (`good` is the
            // warp's, so the whole warp is here). No barrier after: the next packet's bytes
            // are others (the sim tests' race check holds both).
            __syncwarp();
            for (u32 i = lane; i < l; i += 32) payload[i] = 0;
        }
    }
}

extern "C" __global__ void gcm_seal(u8* data, const u32* off, const u32* aad_len, const u32* len,
                                    const u32* key_idx, const u8* nonces, const GcmKey* keys,
                                    u8* ok, u32 n) {
    gcm_batch(data, off, aad_len, len, key_idx, nonces, keys, ok, n, true);
}

extern "C" __global__ void gcm_open(u8* data, const u32* off, const u32* aad_len, const u32* len,
                                    const u32* key_idx, const u8* nonces, const GcmKey* keys,
                                    u8* ok, u32 n) {
    gcm_batch(data, off, aad_len, len, key_idx, nonces, keys, ok, n, false);
}

#endif
