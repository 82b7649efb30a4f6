// Host build of the CUDA kernels' device functions, so that their arithmetic is checked on a
// machine with no GPU (kernels/tests/cuda_host_check.rs drives it). The warp is emulated by
// running the 32 lanes' shares one after another and XOR-ing them, as the kernel's shuffle
// reduction does.
//
// Usage: host_check gcm-seal|gcm-open|lz4-compress|lz4-decompress < records > results
//   gcm records:  key[32] nonce[12] u32 aad_len, aad, u32 len, data   (little-endian u32)
//   gcm results:  u8 ok, u32 len, data (ciphertext and tag, or plaintext)
//   lz4 records:  u32 cap, u32 len, data
//   lz4 results:  i32 out_len, data
#define DWCP_HOST_CHECK 1
#include <cstdio>
#include <cstring>
#include <vector>

#include "common.cuh"
#include "gcm.cu"
#include "lz4.cu"

static bool read_exact(void* p, size_t n) { return fread(p, 1, n, stdin) == n; }
static void write_u32(u32 v) { fwrite(&v, 4, 1, stdout); }

static Tables tabs;

static int gcm(bool seal) {
    for (;;) {
        u8 raw[32], nonce[12];
        u32 aad_len, len;
        if (!read_exact(raw, 32)) return 0;
        if (!read_exact(nonce, 12) || !read_exact(&aad_len, 4)) return 2;
        std::vector<u8> aad(aad_len);
        if (!read_exact(aad.data(), aad_len) || !read_exact(&len, 4)) return 2;
        std::vector<u8> data(len + 16);
        if (!read_exact(data.data(), len)) return 2;
        GcmKey key;
        gcm_key_make(&tabs, raw, &key);
        u8 ok = 1;
        u32 ct_len = seal ? len : len - 16;
        if (!seal && len < 16) {
            ok = 0;
        } else {
            Block s = {0, 0};
            for (u32 lane = 0; lane < 32; lane++) {
                s = block_xor(s, gcm_lane(&tabs, &key, aad.data(), aad_len, data.data(), ct_len,
                                          nonce, lane, 32, seal));
            }
            u8 tag[16];
            gcm_tag(&tabs, &key, nonce, s, tag);
            if (seal) {
                memcpy(data.data() + len, tag, 16);
            } else {
                ok = memcmp(data.data() + ct_len, tag, 16) == 0;
            }
        }
        u32 out = seal ? len + 16 : ct_len;
        if (!ok) out = 0;
        fwrite(&ok, 1, 1, stdout);
        write_u32(out);
        fwrite(data.data(), 1, out, stdout);
    }
}

static int lz4(bool compress) {
    static u16 table[1 << LZ4_HASH_LOG_MAX];
    for (;;) {
        u32 cap, len;
        if (!read_exact(&cap, 4)) return 0;
        if (!read_exact(&len, 4)) return 2;
        std::vector<u8> src(len), dst(cap);
        if (!read_exact(src.data(), len)) return 2;
        int r = compress ? lz4_compress_block(src.data(), len, dst.data(), cap, table)
                         : lz4_decompress_block(src.data(), len, dst.data(), cap);
        fwrite(&r, 4, 1, stdout);
        if (r > 0) fwrite(dst.data(), 1, (size_t)r, stdout);
    }
}

int main(int argc, char** argv) {
    for (u32 i = 0; i < 256; i++) tables_fill(&tabs, i);
    if (tabs.sbox[0] != 0x63 || tabs.sbox[1] != 0x7c || tabs.sbox[0x53] != 0xed) {
        fprintf(stderr, "S-box self-check failed\n");
        return 3;
    }
    if (argc != 2) return 1;
    if (!strcmp(argv[1], "gcm-seal")) return gcm(true);
    if (!strcmp(argv[1], "gcm-open")) return gcm(false);
    if (!strcmp(argv[1], "lz4-compress")) return lz4(true);
    if (!strcmp(argv[1], "lz4-decompress")) return lz4(false);
    return 1;
}
