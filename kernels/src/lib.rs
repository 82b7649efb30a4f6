//! The offload engine: batch operations — AES-256-GCM seal and open, LZ4 block compress and
//! decompress — behind one [`Engine`] trait, so the data plane hands a whole burst to
//! whichever engine runs it: the CPU engine ([`cpu::CpuEngine`]), the CUDA engine
//! ([`cuda::CudaEngine`], `.cu` sources compiled by NVRTC at start-up through `cudarc`), or
//! the adaptive dispatcher in front of both.
//!
//! Jobs borrow the caller's packet buffers and are built in fixed-size arrays: nothing is
//! allocated per batch.

#![deny(unsafe_code)]

#[cfg(any(test, feature = "testing"))]
#[allow(unsafe_code)]
pub mod alloc_count;
pub mod bench;
pub mod cpu;
#[allow(unsafe_code)]
pub mod cuda;
pub mod dispatch;
#[allow(unsafe_code)]
pub mod gather;
pub mod monitor;
pub mod samples;
#[cfg(any(test, feature = "testing"))]
pub mod sim;
#[cfg(any(test, feature = "testing"))]
pub mod suite;

/// AES-256-GCM tag length.
pub const TAG_LEN: usize = 16;
/// AES-256-GCM key length.
pub const KEY_LEN: usize = 32;
/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;

/// An AES-256-GCM key, expanded once (per session), used for many packets. The raw bytes are
/// kept (zeroed on drop) for engines that expand keys themselves (the GPU), and `id` names the
/// key uniquely in this process so that an engine can find repeats within a batch cheaply.
pub struct AeadKey {
    ring: ring::aead::LessSafeKey,
    raw: zeroize::Zeroizing<[u8; KEY_LEN]>,
    id: u64,
}

impl AeadKey {
    /// Expands a raw 32-byte key.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
            .unwrap_or_else(|_| unreachable!("AES-256-GCM takes every 32-byte key"));
        Self {
            ring: ring::aead::LessSafeKey::new(unbound),
            raw: zeroize::Zeroizing::new(*key),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// This key's process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The raw key bytes (for an engine that expands keys itself).
    pub fn raw(&self) -> &[u8; KEY_LEN] {
        &self.raw
    }
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey(<redacted>)")
    }
}

/// The DWCP nonce for a counter: 32 zero bits, then the counter big-endian.
pub fn nonce(counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// Seal one packet in place: `buf[..len]` is the plaintext; on return `buf[..len]` is the
/// ciphertext and `buf[len..len + 16]` the tag.
pub struct SealJob<'a> {
    /// The session's send key.
    pub key: &'a AeadKey,
    /// The nonce (DWCP uses [`nonce`] of the message counter).
    pub nonce: [u8; NONCE_LEN],
    /// Authenticated, unencrypted data (the DWCP header).
    pub aad: &'a [u8],
    /// Plaintext in, ciphertext and tag out; at least `len + 16` long.
    pub buf: &'a mut [u8],
    /// Plaintext length.
    pub len: usize,
    /// Set by the engine: sealed (false only when `buf` is too short).
    pub ok: bool,
}

impl SealJob<'_> {
    /// The same job, borrowed for a shorter time (to run it in a batch built elsewhere).
    pub fn reborrow(&mut self) -> SealJob<'_> {
        SealJob {
            key: self.key,
            nonce: self.nonce,
            aad: self.aad,
            buf: &mut *self.buf,
            len: self.len,
            ok: self.ok,
        }
    }
}

/// Open one packet in place: `buf[..len]` is ciphertext followed by the tag; on success
/// `buf[..len - 16]` is the plaintext.
pub struct OpenJob<'a> {
    /// The session's receive key.
    pub key: &'a AeadKey,
    /// The nonce (DWCP uses [`nonce`] of the message counter).
    pub nonce: [u8; NONCE_LEN],
    /// Authenticated data (the DWCP header as received).
    pub aad: &'a [u8],
    /// Ciphertext and tag in, plaintext out.
    pub buf: &'a mut [u8],
    /// Ciphertext plus tag length.
    pub len: usize,
    /// Set by the engine: the tag verified. A failed job's buffer is garbage.
    pub ok: bool,
}

impl OpenJob<'_> {
    /// The same job, borrowed for a shorter time (to run it in a batch built elsewhere).
    pub fn reborrow(&mut self) -> OpenJob<'_> {
        OpenJob {
            key: self.key,
            nonce: self.nonce,
            aad: self.aad,
            buf: &mut *self.buf,
            len: self.len,
            ok: self.ok,
        }
    }
}

/// Compress one packet into `dst`; `out_len` is `None` when the result would not be smaller
/// (the caller then sends the packet uncompressed).
pub struct CompressJob<'a> {
    /// Input.
    pub src: &'a [u8],
    /// Output space: at least [`compress_bound`] of the input length.
    pub dst: &'a mut [u8],
    /// Set by the engine.
    pub out_len: Option<usize>,
}

impl<'a> CompressJob<'a> {
    /// One job per source, each with its output space (`srcs` and `dsts` in step).
    pub fn batch<S: AsRef<[u8]>>(srcs: &'a [S], dsts: &'a mut [Vec<u8>]) -> Vec<Self> {
        srcs.iter()
            .zip(dsts)
            .map(|(src, dst)| CompressJob {
                src: src.as_ref(),
                dst,
                out_len: None,
            })
            .collect()
    }

    /// The same job, borrowed for a shorter time (to run it in a batch built elsewhere).
    pub fn reborrow(&mut self) -> CompressJob<'_> {
        CompressJob {
            src: self.src,
            dst: &mut *self.dst,
            out_len: self.out_len,
        }
    }
}

/// The output space a [`CompressJob`] needs for `len` bytes of input (LZ4's worst case).
pub const fn compress_bound(len: usize) -> usize {
    lz4_flex::block::get_maximum_output_size(len)
}

/// Decompress one packet into `dst`; `out_len` is `None` when the input is malformed or does
/// not fit.
pub struct DecompressJob<'a> {
    /// Input.
    pub src: &'a [u8],
    /// Output space (the largest packet the caller accepts).
    pub dst: &'a mut [u8],
    /// Set by the engine.
    pub out_len: Option<usize>,
}

impl<'a> DecompressJob<'a> {
    /// One job per source, each with its output space (`srcs` and `dsts` in step).
    pub fn batch<S: AsRef<[u8]>>(srcs: &'a [S], dsts: &'a mut [Vec<u8>]) -> Vec<Self> {
        srcs.iter()
            .zip(dsts)
            .map(|(src, dst)| DecompressJob {
                src: src.as_ref(),
                dst,
                out_len: None,
            })
            .collect()
    }
}

impl DecompressJob<'_> {
    /// The same job, borrowed for a shorter time (to run it in a batch built elsewhere).
    pub fn reborrow(&mut self) -> DecompressJob<'_> {
        DecompressJob {
            src: self.src,
            dst: &mut *self.dst,
            out_len: self.out_len,
        }
    }
}

/// A batch engine. Every job's result is in the job; an engine never drops or reorders jobs.
pub trait Engine: Send {
    /// Short name for logs and metrics (`cpu`, `cuda`).
    fn name(&self) -> &'static str;
    /// Seals every job.
    fn seal(&mut self, jobs: &mut [SealJob<'_>]);
    /// Opens every job, setting `ok` per packet.
    fn open(&mut self, jobs: &mut [OpenJob<'_>]);
    /// Compresses every job.
    fn compress(&mut self, jobs: &mut [CompressJob<'_>]);
    /// Decompresses every job.
    fn decompress(&mut self, jobs: &mut [DecompressJob<'_>]);
    /// The dispatcher's counters, for an engine that is one.
    fn offload_stats(&self) -> Option<&dispatch::Stats> {
        None
    }
}
