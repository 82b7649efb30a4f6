//! Checks of live accelerator batches against the CPU engine: the dispatcher checks a sample
//! of the batches the GPU ran packet by packet, one packet of every other batch, and the
//! first packets of each batch the GPU refused (a refusal is a drop), and gives every packet
//! the GPU got wrong the CPU's result before it leaves — so a GPU that turns wrong after its
//! start-up check (a fault, a bit flip, a kernel bug only some inputs reach) is caught and
//! kept away from traffic instead of sealing packets every peer drops or delivering corrupted
//! plaintext.
//!
//! Seal and open work in place, so a checked packet's input is copied before the GPU runs it;
//! the copies live in scratch buffers that grow to the largest checked batch and are reused:
//! a check allocates nothing once warm (only a wrong one does, for its message).

use crate::cpu::CpuEngine;
use crate::{CompressJob, DecompressJob, Engine, OpenJob, SealJob, TAG_LEN};

/// Reused buffers: the inputs of a checked batch (where the CPU then recomputes seals and
/// opens in place), one packet's CPU result for the LZ4 checks, and marks for the jobs of a
/// batch found wrong.
#[derive(Debug, Default)]
pub struct Scratch {
    inputs: Vec<u8>,
    one: Vec<u8>,
    /// Jobs [`Checked::mark_unchecked`] marked.
    marks: Vec<bool>,
}

/// What a check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Packets whose GPU result differed from the CPU's (now given the CPU's).
    pub wrong: usize,
    /// The first of them, in words.
    pub first: Option<String>,
}

impl Verdict {
    /// Counts a wrong packet; `what` describes it if it is the first.
    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.first.is_none() {
            self.first = Some(what());
        }
        self.wrong += 1;
    }
}

/// A kind of job whose accelerator result can be checked against the CPU engine.
pub trait Checked: Sized {
    /// The accelerator leaves the jobs' inputs as they were (its output goes elsewhere), so
    /// any of them can be checked after the fact, without [`Checked::keep_inputs`].
    const INPUTS_SURVIVE: bool;

    /// The payload bytes the job's cost is counted in (plaintext, ciphertext, LZ4 input).
    fn size(&self) -> usize;

    /// Copies what the accelerator overwrites (before it runs the batch).
    fn keep_inputs(jobs: &[Self], s: &mut Scratch);

    /// Recomputes each job on the CPU from the kept inputs and compares; a job the
    /// accelerator got wrong is given the CPU's result. `jobs[0]` is packet `first` of a
    /// batch of `total` (for the message).
    fn check(jobs: &mut [Self], s: &mut Scratch, first: usize, total: usize) -> Verdict;

    /// [`Checked::check`] of a whole batch.
    fn check_all(jobs: &mut [Self], s: &mut Scratch) -> Verdict {
        let total = jobs.len();
        Self::check(jobs, s, 0, total)
    }

    /// After a spot check found job `checked` wrong in a batch whose inputs did not survive:
    /// marks in `s` the other jobs whose results cannot be trusted and would do harm
    /// unchecked, for [`Checked::refuse_marked`]. Opens: every other verified one (plaintext
    /// that may be wrong under a "verified" tag is worse than a drop, which TCP repairs).
    /// Seals are left: a peer refuses a wrong seal itself.
    fn mark_unchecked(jobs: &[Self], checked: usize, s: &mut Scratch) {
        let _ = (jobs, checked);
        s.marks.clear();
    }

    /// Refuses the jobs [`Checked::mark_unchecked`] marked; returns how many.
    fn refuse_marked(jobs: &mut [Self], s: &Scratch) -> usize {
        let _ = jobs;
        debug_assert!(s.marks.is_empty());
        0
    }

    /// Re-runs on the CPU the first `limit` jobs the accelerator refused — all of them once
    /// one turns out to be wrong — on their buffers as the accelerator left them (an
    /// accelerator leaves a refused job's buffer untouched); a refused job the CPU completes
    /// keeps the CPU's result. Returns how many it re-ran and what it found. A packet not
    /// compressed still leaves, so compressions are not re-run here (the checks look at them).
    fn recheck_refusals(jobs: &mut [Self], limit: usize) -> (usize, Verdict) {
        let _ = (jobs, limit);
        (0, Verdict::default())
    }
}

/// Re-runs refused jobs (`refused`) with `cpu` as [`Checked::recheck_refusals`] describes;
/// `what` names a job the CPU completed.
fn recheck<J>(
    jobs: &mut [J],
    limit: usize,
    refused: fn(&J) -> bool,
    cpu: fn(&mut J),
    what: fn(&J, usize, usize) -> String,
) -> (usize, Verdict) {
    let (mut v, mut rechecked, total) = (Verdict::default(), 0, jobs.len());
    for (i, job) in jobs.iter_mut().enumerate() {
        if !refused(job) {
            continue;
        }
        if rechecked == limit && v.wrong == 0 {
            break;
        }
        rechecked += 1;
        cpu(job);
        if !refused(job) {
            v.note(|| what(job, i, total));
        }
    }
    (rechecked, v)
}

/// Copies each of `bufs`' leading `read` bytes into `s.inputs`, each in a slot of `room`
/// bytes (the rest zero), back to back.
fn keep<'a>(s: &mut Scratch, bufs: impl Iterator<Item = (&'a [u8], usize)>) {
    s.inputs.clear();
    for (b, room) in bufs {
        s.inputs.extend_from_slice(b);
        s.inputs
            .resize(s.inputs.len() + room.saturating_sub(b.len()), 0);
    }
}

/// How many of `buf`'s leading bytes an in-place job of `len` bytes reads.
fn read_len(buf: &[u8], len: usize) -> usize {
    len.min(buf.len())
}

/// The bytes of its buffer an in-place seal of `len` bytes may write: the ciphertext and tag,
/// or less when the buffer is too short (the CPU engine then refuses it).
fn seal_room(buf: &[u8], len: usize) -> usize {
    buf.len().min(len.saturating_add(TAG_LEN))
}

fn at(a: &[u8], b: &[u8]) -> String {
    crate::dispatch::selftest::first_difference(a, b).map_or_else(|| "?".into(), |i| i.to_string())
}

impl Checked for SealJob<'_> {
    const INPUTS_SURVIVE: bool = false;

    fn size(&self) -> usize {
        self.len
    }

    fn keep_inputs(jobs: &[Self], s: &mut Scratch) {
        keep(
            s,
            jobs.iter()
                .map(|j| (&j.buf[..read_len(j.buf, j.len)], seal_room(j.buf, j.len))),
        );
    }

    fn check(jobs: &mut [Self], s: &mut Scratch, first: usize, n: usize) -> Verdict {
        let (mut v, mut off) = (Verdict::default(), 0);
        for (i, job) in (first..).zip(jobs.iter_mut()) {
            let room = seal_room(job.buf, job.len);
            let slot = &mut s.inputs[off..off + room];
            off += room;
            let mut cpu = SealJob {
                key: job.key,
                nonce: job.nonce,
                aad: job.aad,
                buf: slot,
                len: job.len,
                ok: false,
            };
            CpuEngine::seal_one(&mut cpu);
            let (ok, out) = (cpu.ok, &*cpu.buf);
            if ok != job.ok || (ok && job.buf[..room] != *out) {
                v.note(|| {
                    if ok != job.ok {
                        format!("seal of a {}-byte packet (packet {i} of {n}): ok {} where the CPU engine says {ok}", job.len, job.ok)
                    } else {
                        format!("seal of a {}-byte packet (packet {i} of {n}) differs from the CPU engine's at byte {}", job.len, at(&job.buf[..room], out))
                    }
                });
                if ok {
                    job.buf[..room].copy_from_slice(out);
                }
                job.ok = ok;
            }
        }
        v
    }

    /// A refused seal is a packet not sent. The CPU refuses only a buffer too short for the
    /// tag; the CUDA kernel never refuses at all.
    fn recheck_refusals(jobs: &mut [Self], limit: usize) -> (usize, Verdict) {
        recheck(
            jobs,
            limit,
            |j| !j.ok,
            CpuEngine::seal_one,
            |j, i, n| {
                format!(
                    "seal of a {}-byte packet (packet {i} of {n}): refused, but the CPU engine seals it",
                    j.len
                )
            },
        )
    }
}

impl Checked for OpenJob<'_> {
    const INPUTS_SURVIVE: bool = false;

    fn size(&self) -> usize {
        self.len
    }

    fn keep_inputs(jobs: &[Self], s: &mut Scratch) {
        keep(
            s,
            jobs.iter().map(|j| {
                let read = read_len(j.buf, j.len);
                (&j.buf[..read], read)
            }),
        );
    }

    fn check(jobs: &mut [Self], s: &mut Scratch, first: usize, n: usize) -> Verdict {
        let (mut v, mut off) = (Verdict::default(), 0);
        for (i, job) in (first..).zip(jobs.iter_mut()) {
            let read = read_len(job.buf, job.len);
            let slot = &mut s.inputs[off..off + read];
            off += read;
            let mut cpu = OpenJob {
                key: job.key,
                nonce: job.nonce,
                aad: job.aad,
                buf: slot,
                len: job.len,
                ok: false,
            };
            CpuEngine::open_one(&mut cpu);
            let ok = cpu.ok;
            // A verified packet's plaintext; a refused one's buffer is garbage either way.
            let plain = if ok { job.len - TAG_LEN } else { 0 };
            let out = &cpu.buf[..plain];
            if ok != job.ok || job.buf[..plain] != *out {
                v.note(|| {
                    if ok != job.ok {
                        format!("open of a {}-byte packet (packet {i} of {n}): tag verified {} where the CPU engine says {ok}", job.len, job.ok)
                    } else {
                        format!("open of a {}-byte packet (packet {i} of {n}) gives a plaintext that differs from the CPU engine's at byte {}", job.len, at(&job.buf[..plain], out))
                    }
                });
                job.buf[..plain].copy_from_slice(out);
                job.ok = ok;
            }
        }
        v
    }

    fn mark_unchecked(jobs: &[Self], checked: usize, s: &mut Scratch) {
        s.marks.clear();
        s.marks
            .extend(jobs.iter().enumerate().map(|(i, j)| j.ok && i != checked));
    }

    fn refuse_marked(jobs: &mut [Self], s: &Scratch) -> usize {
        let mut refused = 0;
        for (job, _) in jobs.iter_mut().zip(&s.marks).filter(|(_, m)| **m) {
            job.ok = false;
            refused += 1;
        }
        refused
    }

    fn recheck_refusals(jobs: &mut [Self], limit: usize) -> (usize, Verdict) {
        recheck(
            jobs,
            limit,
            |j| !j.ok,
            CpuEngine::open_one,
            |j, i, n| {
                format!(
                    "open of a {}-byte packet (packet {i} of {n}): refused, but its tag verifies on the CPU engine",
                    j.len
                )
            },
        )
    }
}

impl Checked for CompressJob<'_> {
    const INPUTS_SURVIVE: bool = true;

    fn size(&self) -> usize {
        self.src.len()
    }

    /// The input is not overwritten: nothing to keep.
    fn keep_inputs(_: &[Self], _: &mut Scratch) {}

    /// Any LZ4 encoder may choose other matches, so a GPU block need not equal the CPU's: it
    /// must be shorter than the input, fit the output space and decompress to the input. Not
    /// compressing is wrong only where the CPU engine halves the packet (the kernel's greedy
    /// matcher finds what liblz4 finds, within a percent on `bench offload`'s packets): a GPU
    /// that stopped compressing would otherwise only show in the compression ratio.
    fn check(jobs: &mut [Self], s: &mut Scratch, first: usize, n: usize) -> Verdict {
        let mut v = Verdict::default();
        for (i, job) in (first..).zip(jobs.iter_mut()) {
            let Some(out) = job.out_len else {
                // The CPU's block goes into the output space, unused while not compressed.
                let len = job.src.len();
                if let Some(c) =
                    crate::cpu::lz4::compress(job.src, job.dst).filter(|&c| 2 * c <= len)
                {
                    v.note(|| {
                        format!("compress of a {len}-byte packet (packet {i} of {n}): not compressed, where the CPU engine compresses it to {c} bytes")
                    });
                    job.out_len = Some(c);
                }
                continue;
            };
            s.one.resize(s.one.len().max(job.src.len()), 0);
            let right = out < job.src.len()
                && out <= job.dst.len()
                && lz4_flex::block::decompress_into(&job.dst[..out], &mut s.one[..job.src.len()])
                    .is_ok_and(|len| len == job.src.len())
                && s.one[..job.src.len()] == *job.src;
            if !right {
                v.note(|| {
                    format!("compress of a {}-byte packet (packet {i} of {n}) gives a {out}-byte block that does not decompress to it", job.src.len())
                });
                CpuEngine.compress(std::slice::from_mut(job));
            }
        }
        v
    }
}

impl Checked for DecompressJob<'_> {
    const INPUTS_SURVIVE: bool = true;

    fn size(&self) -> usize {
        self.src.len()
    }

    /// The input is not overwritten: nothing to keep.
    fn keep_inputs(_: &[Self], _: &mut Scratch) {}

    fn check(jobs: &mut [Self], s: &mut Scratch, first: usize, n: usize) -> Verdict {
        let mut v = Verdict::default();
        for (i, job) in (first..).zip(jobs.iter_mut()) {
            s.one.resize(s.one.len().max(job.dst.len()), 0);
            let space = &mut s.one[..job.dst.len()];
            let cpu = lz4_flex::block::decompress_into(job.src, space).ok();
            let same = match (job.out_len, cpu) {
                (Some(g), Some(c)) => g == c && job.dst[..g] == space[..c],
                (g, c) => g == c,
            };
            if !same {
                v.note(|| match (job.out_len, cpu) {
                    (Some(g), Some(c)) if g == c => format!(
                        "decompress of a {}-byte block (packet {i} of {n}) gives output that differs from the CPU engine's at byte {}",
                        job.src.len(),
                        at(&job.dst[..g], &space[..c])
                    ),
                    (g, c) => format!(
                        "decompress of a {}-byte block (packet {i} of {n}): {}, where the CPU engine {}",
                        job.src.len(),
                        g.map_or_else(|| "refused".to_owned(), |b| format!("{b} bytes")),
                        c.map_or_else(|| "refuses it".to_owned(), |b| format!("gives {b} bytes"))
                    ),
                });
                if let Some(c) = cpu {
                    job.dst[..c].copy_from_slice(&space[..c]);
                }
                job.out_len = cpu;
            }
        }
        v
    }

    fn recheck_refusals(jobs: &mut [Self], limit: usize) -> (usize, Verdict) {
        recheck(
            jobs,
            limit,
            |j| j.out_len.is_none(),
            |j| j.out_len = lz4_flex::block::decompress_into(j.src, j.dst).ok(),
            |j, i, n| {
                format!(
                    "decompress of a {}-byte block (packet {i} of {n}): refused, but the CPU engine decompresses it to {} bytes",
                    j.src.len(),
                    j.out_len.unwrap_or(0)
                )
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AeadKey;
    use crate::samples::Rng;

    fn packets(sizes: &[usize], seed: u64) -> Vec<Vec<u8>> {
        let mut rng = Rng(seed);
        sizes
            .iter()
            .map(|&n| {
                let mut b = vec![0u8; n + TAG_LEN];
                rng.fill(&mut b[..n]);
                b
            })
            .collect()
    }

    const SIZES: [usize; 6] = [0, 1, 17, 1408, 9000, 9216];

    #[test]
    fn right_seals_and_opens_pass_and_wrong_ones_get_the_cpus_result() {
        let key = AeadKey::new(&[3; 32]);
        let plain = packets(&SIZES, 1);
        let mut bufs = plain.clone();
        let mut s = Scratch::default();
        let mut jobs: Vec<SealJob<'_>> = bufs
            .iter_mut()
            .zip(SIZES)
            .enumerate()
            .map(|(i, (buf, len))| SealJob {
                key: &key,
                nonce: crate::nonce(i as u64),
                aad: &[7; 16],
                buf,
                len,
                ok: false,
            })
            .collect();
        SealJob::keep_inputs(&jobs, &mut s);
        CpuEngine.seal(&mut jobs);
        assert_eq!(SealJob::check_all(&mut jobs, &mut s), Verdict::default());
        let right: Vec<Vec<u8>> = jobs.iter().map(|j| j.buf.to_vec()).collect();
        // The "GPU" gets packet 3's ciphertext and packet 0's tag wrong, and refuses packet 5.
        for (j, p) in jobs.iter_mut().zip(&plain) {
            j.buf.copy_from_slice(p);
            j.ok = false;
        }
        SealJob::keep_inputs(&jobs, &mut s);
        CpuEngine.seal(&mut jobs);
        jobs[3].buf[700] ^= 1;
        jobs[0].buf[TAG_LEN - 1] ^= 0x80;
        jobs[5].ok = false;
        let v = SealJob::check_all(&mut jobs, &mut s);
        assert_eq!(v.wrong, 3);
        assert_eq!(
            v.first.as_deref(),
            Some(
                "seal of a 0-byte packet (packet 0 of 6) differs from the CPU engine's at byte 15"
            )
        );
        assert!(jobs.iter().all(|j| j.ok));
        assert!(jobs.iter().zip(&right).all(|(j, r)| j.buf == &r[..]));

        // Open what was sealed; tamper with packet 2's tag (both engines must refuse it).
        jobs[2].buf[17] ^= 1;
        let mut opens: Vec<OpenJob<'_>> = jobs
            .iter_mut()
            .enumerate()
            .map(|(i, j)| OpenJob {
                key: j.key,
                nonce: crate::nonce(i as u64),
                aad: &[7; 16],
                len: j.len + TAG_LEN,
                buf: &mut *j.buf,
                ok: false,
            })
            .collect();
        OpenJob::keep_inputs(&opens, &mut s);
        CpuEngine.open(&mut opens);
        assert_eq!(OpenJob::check_all(&mut opens, &mut s), Verdict::default());
        // A "GPU" that accepts the tampered packet and flips a plaintext bit of packet 4.
        for (j, r) in opens.iter_mut().zip(&right) {
            j.buf.copy_from_slice(r);
        }
        opens[2].buf[17] ^= 1;
        OpenJob::keep_inputs(&opens, &mut s);
        CpuEngine.open(&mut opens);
        opens[2].ok = true;
        opens[4].buf[8999] ^= 2;
        let v = OpenJob::check_all(&mut opens, &mut s);
        assert_eq!(v.wrong, 2, "{v:?}");
        assert_eq!(
            v.first.as_deref(),
            Some(
                "open of a 33-byte packet (packet 2 of 6): tag verified true where the CPU engine says false"
            )
        );
        for (i, (j, p)) in opens.iter().zip(&plain).enumerate() {
            let n = j.len - TAG_LEN;
            assert_eq!(j.ok, i != 2);
            assert!(i == 2 || j.buf[..n] == p[..n], "packet {i}");
        }
    }

    #[test]
    fn lz4_blocks_must_decompress_to_the_input_and_decompression_must_match() {
        let text: Vec<u8> = b"shard=00017 status=200 OK\n"
            .iter()
            .copied()
            .cycle()
            .take(9216)
            .collect();
        let random = packets(&[1408], 3).remove(0)[..1408].to_vec();
        let srcs = [&text[..], &text[..100], &random[..]];
        let mut dsts = vec![vec![0u8; crate::compress_bound(9216)]; 3];
        let mut s = Scratch::default();
        let mut jobs = CompressJob::batch(&srcs, &mut dsts);
        CpuEngine.compress(&mut jobs);
        assert_eq!(
            CompressJob::check_all(&mut jobs, &mut s),
            Verdict::default()
        );
        // A corrupted block, a claimed growth, and not compressing what the CPU halves are
        // wrong; not compressing what does not compress is not.
        jobs[0].out_len = None;
        let n1 = jobs[1].out_len.unwrap();
        jobs[1].dst[n1 / 2] ^= 0x10;
        jobs[2].out_len = Some(1500);
        let v = CompressJob::check_all(&mut jobs, &mut s);
        assert_eq!(v.wrong, 3, "{v:?}");
        assert_eq!(
            v.first.as_deref(),
            Some(
                "compress of a 9216-byte packet (packet 0 of 3): not compressed, where the CPU engine compresses it to 73 bytes"
            )
        );
        assert!(jobs[2].out_len.is_none(), "random data does not compress");
        assert_eq!(
            CompressJob::check_all(&mut jobs, &mut s),
            Verdict::default()
        );
        let n0 = jobs[0].out_len.unwrap();
        assert_eq!(
            lz4_flex::block::decompress(&jobs[0].dst[..n0], 9216).unwrap(),
            text
        );
        let n1 = jobs[1].out_len.unwrap();
        assert_eq!(
            lz4_flex::block::decompress(&jobs[1].dst[..n1], 100).unwrap(),
            &text[..100]
        );

        let blocks: Vec<Vec<u8>> = jobs
            .iter()
            .take(2)
            .map(|j| j.dst[..j.out_len.unwrap_or(0)].to_vec())
            .collect();
        let mut outs = vec![vec![0u8; 9216]; 3];
        let bad = [0xffu8, 1, 2];
        let srcs = [&blocks[1][..], &blocks[1][..], &bad[..]];
        let mut de = DecompressJob::batch(&srcs, &mut outs);
        CpuEngine.decompress(&mut de);
        assert_eq!(
            DecompressJob::check_all(&mut de, &mut s),
            Verdict::default()
        );
        de[0].dst[5] ^= 1;
        de[2].out_len = Some(9216);
        let v = DecompressJob::check_all(&mut de, &mut s);
        assert_eq!(v.wrong, 2);
        assert_eq!(
            v.first.unwrap(),
            format!(
                "decompress of a {}-byte block (packet 0 of 3) gives output that differs from the CPU engine's at byte 5",
                blocks[1].len()
            )
        );
        assert_eq!(de[0].dst[..100], text[..100]);
        assert_eq!(de[2].out_len, None);
    }
}
