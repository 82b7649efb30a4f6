//! Packing jobs into a lane's host staging buffers (structure-of-arrays descriptors, key
//! slots, refused jobs) and unpacking the results back into the jobs.

use super::*;

pub(super) fn record_len(aad: usize, len: usize) -> usize {
    (aad + len + TAG_LEN).next_multiple_of(16)
}

/// What staging needs of an AEAD job, seal or open alike.
pub(super) trait AeadJob {
    fn key(&self) -> &crate::AeadKey;
    fn nonce(&self) -> &[u8; 12];
    fn aad(&self) -> &[u8];
    /// The input bytes to stage, or `None` when the buffer is too short for the job.
    fn input(&self) -> Option<&[u8]>;
    /// Bytes the record needs after the AAD (input and, for seal, room for the tag).
    fn len(&self) -> usize;
}

impl AeadJob for SealJob<'_> {
    fn key(&self) -> &crate::AeadKey {
        self.key
    }
    fn nonce(&self) -> &[u8; 12] {
        &self.nonce
    }
    fn aad(&self) -> &[u8] {
        self.aad
    }
    fn input(&self) -> Option<&[u8]> {
        let end = self.len.checked_add(TAG_LEN)?;
        (end <= self.buf.len()).then(|| &self.buf[..self.len])
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl AeadJob for OpenJob<'_> {
    fn key(&self) -> &crate::AeadKey {
        self.key
    }
    fn nonce(&self) -> &[u8; 12] {
        &self.nonce
    }
    fn aad(&self) -> &[u8] {
        self.aad
    }
    fn input(&self) -> Option<&[u8]> {
        self.buf.get(..self.len)
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Packs AEAD jobs from `start` into the lane: a = record offset, b = AAD length, c = input
/// length (seal: plaintext; open: ciphertext and tag), d = key slot; record = AAD | input |
/// room for a tag. A job whose buffer is too short is staged empty and marked refused.
pub(super) fn stage_aead<J: AeadJob>(
    h: &mut HostStage,
    keys: &mut KeyMap,
    cap: Capacity,
    jobs: &[J],
    start: usize,
    max: usize,
) -> Chunk {
    keys.reset();
    let mut c = Chunk {
        start,
        ..Chunk::default()
    };
    for job in &jobs[start..] {
        let rec = record_len(job.aad().len(), job.len());
        if c.n == max || c.n == cap.packets || c.bytes + rec > cap.bytes {
            break;
        }
        let i = c.n;
        let input = job.input();
        h.refused[i] = input.is_none();
        let input = input.unwrap_or_default();
        let (slot, new) = keys.slot(job.key().id(), u32_of(c.keys));
        if new {
            h.keys_raw.as_mut_slice()[32 * c.keys..32 * c.keys + 32]
                .copy_from_slice(job.key().raw());
            c.keys += 1;
        }
        let at = c.bytes;
        let al = job.aad().len();
        let data = h.data.as_mut_slice();
        data[at..at + al].copy_from_slice(job.aad());
        data[at + al..at + al + input.len()].copy_from_slice(input);
        h.a.as_mut_slice()[i] = u32_of(at);
        h.b.as_mut_slice()[i] = u32_of(al);
        h.c.as_mut_slice()[i] = u32_of(input.len());
        h.d.as_mut_slice()[i] = slot;
        h.nonces.as_mut_slice()[12 * i..12 * i + 12].copy_from_slice(job.nonce());
        c.bytes += rec;
        c.n += 1;
    }
    c
}

/// A refused seal (by the host, or by the kernel, which never should) keeps its plaintext,
/// as every refused job keeps its buffer (the dispatcher reseals it on the CPU to check).
pub(super) fn unstage_seal(h: &HostStage, _c: &Chunk, jobs: &mut [SealJob<'_>]) {
    for (i, job) in jobs.iter_mut().enumerate() {
        job.ok = !h.refused[i] && h.ok.as_slice()[i] != 0;
        if job.ok {
            let at = h.a.as_slice()[i] as usize + h.b.as_slice()[i] as usize;
            let n = job.len + TAG_LEN;
            job.buf[..n].copy_from_slice(&h.data.as_slice()[at..at + n]);
        }
    }
}

pub(super) fn unstage_open(h: &HostStage, _c: &Chunk, jobs: &mut [OpenJob<'_>]) {
    for (i, job) in jobs.iter_mut().enumerate() {
        job.ok = !h.refused[i] && h.ok.as_slice()[i] != 0;
        if job.ok {
            let at = h.a.as_slice()[i] as usize + h.b.as_slice()[i] as usize;
            let n = job.len - TAG_LEN;
            job.buf[..n].copy_from_slice(&h.data.as_slice()[at..at + n]);
        }
    }
}

/// Packs CompressJobs: a = source offset, b = source length, c = destination offset,
/// d = destination capacity (one less than the input: only smaller results count).
pub(super) fn stage_compress(
    h: &mut HostStage,
    _keys: &mut KeyMap,
    cap: Capacity,
    jobs: &[CompressJob<'_>],
    start: usize,
    max: usize,
) -> Chunk {
    let mut c = Chunk {
        start,
        ..Chunk::default()
    };
    for job in &jobs[start..] {
        let len = job.src.len();
        let out_cap = len.saturating_sub(1).min(job.dst.len());
        let rec = len.next_multiple_of(16);
        let out_rec = out_cap.next_multiple_of(16);
        if c.n == max
            || c.n == cap.packets
            || c.bytes + rec > cap.bytes
            || c.dst_bytes + out_rec > cap.bytes
        {
            break;
        }
        let i = c.n;
        h.refused[i] = false;
        h.data.as_mut_slice()[c.bytes..c.bytes + len].copy_from_slice(job.src);
        h.a.as_mut_slice()[i] = u32_of(c.bytes);
        h.b.as_mut_slice()[i] = u32_of(len);
        h.c.as_mut_slice()[i] = u32_of(c.dst_bytes);
        h.d.as_mut_slice()[i] = u32_of(out_cap);
        c.bytes += rec;
        c.dst_bytes += out_rec;
        c.n += 1;
    }
    c
}

pub(super) fn unstage_lz4(h: &HostStage, i: usize, dst: &mut [u8]) -> Option<usize> {
    let n = h.out.as_slice()[i];
    if n == LZ4_NONE {
        return None;
    }
    let n = n as usize;
    let at = h.c.as_slice()[i] as usize;
    dst.get_mut(..n)?
        .copy_from_slice(h.dst.as_slice().get(at..at + n)?);
    Some(n)
}

pub(super) fn unstage_compress(h: &HostStage, _c: &Chunk, jobs: &mut [CompressJob<'_>]) {
    for (i, job) in jobs.iter_mut().enumerate() {
        job.out_len = unstage_lz4(h, i, job.dst);
    }
}

/// Packs DecompressJobs: as compress, d = the caller's output space, at most a lane's bytes
/// (so every job whose input fits a lane is staged).
pub(super) fn stage_decompress(
    h: &mut HostStage,
    _keys: &mut KeyMap,
    cap: Capacity,
    jobs: &[DecompressJob<'_>],
    start: usize,
    max: usize,
) -> Chunk {
    let mut c = Chunk {
        start,
        ..Chunk::default()
    };
    for job in &jobs[start..] {
        let len = job.src.len();
        let out_cap = job.dst.len().min(cap.bytes);
        let rec = len.next_multiple_of(16);
        let out_rec = out_cap.next_multiple_of(16);
        if c.n == max
            || c.n == cap.packets
            || c.bytes + rec > cap.bytes
            || c.dst_bytes + out_rec > cap.bytes
        {
            break;
        }
        let i = c.n;
        h.refused[i] = false;
        h.data.as_mut_slice()[c.bytes..c.bytes + len].copy_from_slice(job.src);
        h.a.as_mut_slice()[i] = u32_of(c.bytes);
        h.b.as_mut_slice()[i] = u32_of(len);
        h.c.as_mut_slice()[i] = u32_of(c.dst_bytes);
        h.d.as_mut_slice()[i] = u32_of(out_cap);
        c.bytes += rec;
        c.dst_bytes += out_rec;
        c.n += 1;
    }
    c
}

pub(super) fn unstage_decompress(h: &HostStage, _c: &Chunk, jobs: &mut [DecompressJob<'_>]) {
    for (i, job) in jobs.iter_mut().enumerate() {
        job.out_len = unstage_lz4(h, i, job.dst);
    }
}
