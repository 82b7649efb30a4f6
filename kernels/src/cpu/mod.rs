//! The CPU engine: AES-256-GCM from `ring` (BoringSSL's AES-NI/CLMUL/AVX code paths, keys
//! expanded once per session); LZ4 blocks compressed by liblz4 with each thread's reused state
//! ([`crate::cpu::lz4`]) and decompressed by `lz4_flex` (safe Rust on what peers send).

#[allow(unsafe_code)]
pub mod lz4;

use ring::aead::{Aad, Nonce, Tag};

use crate::{CompressJob, DecompressJob, Engine, OpenJob, SealJob, TAG_LEN};

/// The CPU engine. Stateless: one per worker costs nothing (LZ4's 16 KiB state is per thread).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuEngine;

impl CpuEngine {
    /// Seals one packet.
    pub fn seal_one(job: &mut SealJob<'_>) {
        job.ok = false;
        let Some(end) = job.len.checked_add(TAG_LEN).filter(|&e| e <= job.buf.len()) else {
            return;
        };
        let (data, rest) = job.buf[..end].split_at_mut(job.len);
        let n = Nonce::assume_unique_for_key(job.nonce);
        if let Ok(tag) = job
            .key
            .ring
            .seal_in_place_separate_tag(n, Aad::from(job.aad), data)
        {
            rest.copy_from_slice(tag.as_ref());
            job.ok = true;
        }
    }

    /// Opens one packet.
    pub fn open_one(job: &mut OpenJob<'_>) {
        job.ok = false;
        if job.len < TAG_LEN || job.len > job.buf.len() {
            return;
        }
        let (data, tag) = job.buf[..job.len].split_at_mut(job.len - TAG_LEN);
        let Ok(tag_bytes) = <[u8; TAG_LEN]>::try_from(&*tag) else {
            return;
        };
        let n = Nonce::assume_unique_for_key(job.nonce);
        job.ok = job
            .key
            .ring
            .open_in_place_separate_tag(n, Aad::from(job.aad), Tag::from(tag_bytes), data, 0..)
            .is_ok();
    }
}

impl Engine for CpuEngine {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn seal(&mut self, jobs: &mut [SealJob<'_>]) {
        jobs.iter_mut().for_each(Self::seal_one);
    }

    fn open(&mut self, jobs: &mut [OpenJob<'_>]) {
        jobs.iter_mut().for_each(Self::open_one);
    }

    fn compress(&mut self, jobs: &mut [CompressJob<'_>]) {
        for job in jobs {
            job.out_len = crate::cpu::lz4::compress(job.src, job.dst);
        }
    }

    fn decompress(&mut self, jobs: &mut [DecompressJob<'_>]) {
        for job in jobs {
            job.out_len = lz4_flex::block::decompress_into(job.src, job.dst).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use aes_gcm::aead::{AeadInPlace, KeyInit};

    use super::*;
    use crate::{AeadKey, nonce};

    /// Test case 16 of McGrew and Viega, "The Galois/Counter Mode of Operation" (the vectors
    /// NIST SP 800-38D refers to): 256-bit key, 96-bit IV, AAD, 60-byte plaintext.
    #[test]
    fn gcm_spec_test_case_16() {
        let key = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
        let iv = hex("cafebabefacedbaddecaf888");
        let pt = hex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let ct = hex(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        );
        let tag = hex("76fc6ece0f4e1768cddf8853bb2d551b");
        // The DWCP nonce is 4 zero bytes + counter; this vector's IV is not of that form, so
        // go through ring directly with the vector's IV.
        let k = AeadKey::new(&key.clone().try_into().unwrap());
        let mut buf = pt.clone();
        let t = k
            .ring
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv.try_into().unwrap()),
                Aad::from(&aad),
                &mut buf,
            )
            .unwrap();
        assert_eq!(buf, ct);
        assert_eq!(t.as_ref(), tag.as_slice());
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Byte-identical to an independent implementation (RustCrypto `aes-gcm`) for sizes
    /// around block and packet boundaries, and round-trips through `open`.
    #[test]
    fn seal_matches_reference_and_opens() {
        let raw = [7u8; 32];
        let key = AeadKey::new(&raw);
        let reference = aes_gcm::Aes256Gcm::new_from_slice(&raw).unwrap();
        let aad = [1u8, 0, 0, 0, 9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 42];
        let mut engine = CpuEngine;
        for (i, size) in [0usize, 1, 15, 16, 17, 64, 1408, 9216]
            .into_iter()
            .enumerate()
        {
            let counter = u64::try_from(i).unwrap() * 1000 + 3;
            let plain: Vec<u8> = (0..size).map(|b| u8::try_from(b % 251).unwrap()).collect();
            let mut buf = plain.clone();
            buf.resize(size + TAG_LEN, 0);
            let mut jobs = [SealJob {
                key: &key,
                nonce: nonce(counter),
                aad: &aad,
                buf: &mut buf,
                len: size,
                ok: false,
            }];
            engine.seal(&mut jobs);
            assert!(jobs[0].ok);
            let mut want = plain.clone();
            let tag = reference
                .encrypt_in_place_detached(&nonce(counter).into(), &aad, &mut want)
                .unwrap();
            want.extend_from_slice(&tag);
            assert_eq!(buf, want, "size {size}");
            let mut open = [OpenJob {
                key: &key,
                nonce: nonce(counter),
                aad: &aad,
                buf: &mut buf,
                len: size + TAG_LEN,
                ok: false,
            }];
            engine.open(&mut open);
            assert!(open[0].ok, "size {size}");
            assert_eq!(&buf[..size], plain.as_slice());
        }
    }

    #[test]
    fn tampering_fails_open() {
        let key = AeadKey::new(&[3u8; 32]);
        let aad = [0u8; 16];
        let mut engine = CpuEngine;
        let mut buf = vec![0u8; 100 + TAG_LEN];
        engine.seal(&mut [SealJob {
            key: &key,
            nonce: nonce(5),
            aad: &aad,
            buf: &mut buf,
            len: 100,
            ok: false,
        }]);
        for (what, flip_at, counter, aad2) in [
            ("ciphertext", 10usize, 5u64, aad),
            ("tag", 105, 5, aad),
            ("counter", 200, 6, aad),
            ("aad", 200, 5, [1u8; 16]),
        ] {
            let mut b = buf.clone();
            if flip_at < b.len() {
                b[flip_at] ^= 1;
            }
            let mut job = [OpenJob {
                key: &key,
                nonce: nonce(counter),
                aad: &aad2,
                buf: &mut b,
                len: 100 + TAG_LEN,
                ok: true,
            }];
            engine.open(&mut job);
            assert!(!job[0].ok, "{what} change not detected");
        }
    }

    #[test]
    fn short_buffers_are_refused_not_panics() {
        let key = AeadKey::new(&[3u8; 32]);
        let mut buf = [0u8; 20];
        let mut seal = [SealJob {
            key: &key,
            nonce: nonce(1),
            aad: &[],
            buf: &mut buf,
            len: 10,
            ok: true,
        }];
        CpuEngine.seal(&mut seal);
        assert!(!seal[0].ok);
        let mut open = [OpenJob {
            key: &key,
            nonce: nonce(1),
            aad: &[],
            buf: &mut buf,
            len: 5,
            ok: true,
        }];
        CpuEngine.open(&mut open);
        assert!(!open[0].ok);
    }

    #[test]
    fn compression_only_when_smaller_and_round_trips() {
        let text = b"GET /checkpoint/shard-0001 HTTP/1.1\r\n".repeat(30);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let random: Vec<u8> = (0..1400)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[3]
            })
            .collect();
        let mut e = CpuEngine;
        let mut out1 = vec![0u8; 2048];
        let mut out2 = vec![0u8; 2048];
        let mut jobs = [
            CompressJob {
                src: &text,
                dst: &mut out1,
                out_len: None,
            },
            CompressJob {
                src: &random,
                dst: &mut out2,
                out_len: None,
            },
        ];
        e.compress(&mut jobs);
        let n = jobs[0].out_len.expect("text compresses");
        assert!(n < text.len() / 4);
        assert_eq!(jobs[1].out_len, None, "random data must be sent as is");
        let mut back = vec![0u8; 9216];
        let mut d = [DecompressJob {
            src: &out1[..n],
            dst: &mut back,
            out_len: None,
        }];
        e.decompress(&mut d);
        let m = d[0].out_len.unwrap();
        assert_eq!(&back[..m], text.as_slice());
        // Garbage never panics.
        let mut d = [DecompressJob {
            src: &[0xff, 0xff, 0x00, 0x12],
            dst: &mut back,
            out_len: Some(1),
        }];
        e.decompress(&mut d);
        assert_eq!(d[0].out_len, None);
    }
}
