//! Known-answer vectors and sample data for checking engines: the McGrew–Viega/NIST
//! AES-256-GCM vectors, a small deterministic generator, and compressible packets. The
//! start-up check of a GPU uses them, and so do the tests and benchmarks.

/// A GCM test vector: key, IV, plaintext, AAD, ciphertext, tag (hex).
pub struct GcmVector {
    /// Name in the source.
    pub name: &'static str,
    /// 256-bit key.
    pub key: &'static str,
    /// 96-bit IV.
    pub iv: &'static str,
    /// Plaintext.
    pub pt: &'static str,
    /// Additional authenticated data.
    pub aad: &'static str,
    /// Ciphertext.
    pub ct: &'static str,
    /// Tag.
    pub tag: &'static str,
}

/// The 256-bit-key test cases 13–16 of McGrew and Viega, "The Galois/Counter Mode of
/// Operation", the vectors NIST SP 800-38D's validation refers to.
pub const GCM_VECTORS: [GcmVector; 4] = [
    GcmVector {
        name: "test case 13",
        key: "0000000000000000000000000000000000000000000000000000000000000000",
        iv: "000000000000000000000000",
        pt: "",
        aad: "",
        ct: "",
        tag: "530f8afbc74536b9a963b4f1c4cb738b",
    },
    GcmVector {
        name: "test case 14",
        key: "0000000000000000000000000000000000000000000000000000000000000000",
        iv: "000000000000000000000000",
        pt: "00000000000000000000000000000000",
        aad: "",
        ct: "cea7403d4d606b6e074ec5d3baf39d18",
        tag: "d0d1c8a799996bf0265b98b5d48ab919",
    },
    GcmVector {
        name: "test case 15",
        key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        iv: "cafebabefacedbaddecaf888",
        pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
        aad: "",
        ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
        tag: "b094dac5d93471bdec1a502270e3cc6c",
    },
    GcmVector {
        name: "test case 16",
        key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        iv: "cafebabefacedbaddecaf888",
        pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        tag: "76fc6ece0f4e1768cddf8853bb2d551b",
    },
];

/// Decodes hex (test data only).
pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|_| panic!("bad hex {s}")))
        .collect()
}

/// A small deterministic generator (SplitMix64) for test data.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A compressible packet: text-like runs mixed with random bytes.
pub fn compressible(rng: &mut Rng, size: usize) -> Vec<u8> {
    const WORDS: [&[u8]; 6] = [
        b"checkpoint ",
        b"shard-0001 ",
        b"GET /data HTTP/1.1\r\n",
        b"\x00\x00\x00\x00\x00\x00\x00\x00",
        b"tensor[",
        b"] = 0.0;\n",
    ];
    let mut v = Vec::with_capacity(size);
    while v.len() < size {
        if rng.below(5) == 0 {
            v.push(u8::try_from(rng.below(256)).unwrap_or(0));
        } else {
            v.extend_from_slice(WORDS[rng.below(WORDS.len())]);
        }
    }
    v.truncate(size);
    v
}
