//! The start-up check an accelerator must pass before the data plane gives it traffic: one
//! small batch of each operation on the accelerator and on the CPU engine, compared — the
//! McGrew–Viega GCM vectors, mixed sizes and keys byte-identical, tampered packets refused,
//! LZ4 both ways with `lz4_flex`, malformed LZ4 refused. A GPU that computes wrong answers (a
//! driver, compiler or hardware fault) is kept out with the reason, instead of sealing packets
//! every peer would drop; the check also pays the kernels' first-launch costs before a batch
//! has a deadline. Allocates freely: it runs once, at start-up.

use std::time::{Duration, Instant};

use crate::cpu::CpuEngine;
use crate::dispatch::accelerator::{Accelerator, CheckError};
use crate::samples::{GCM_VECTORS, Rng, compressible, hex};
use crate::{AeadKey, CompressJob, DecompressJob, Engine, OpenJob, SealJob, TAG_LEN};

/// The largest packet the engines take (the data plane's jumbo frames' payload).
pub const MAX_PACKET: usize = 9216;

/// Packet sizes the check seals and opens, each with two keys (those up to the data plane's
/// largest packet): the empty packet, partial and whole AES blocks, and the tunnel's sizes.
const SIZES: [usize; 12] = [0, 1, 15, 16, 17, 63, 64, 512, 1408, 1409, 9000, 9216];

/// Kernel launches the check makes on a CUDA engine whose lanes hold its largest batch (94
/// jobs: `offload.max_batch` ≥ 188): seal twice and open once, each with its key set-up, then
/// compress and decompress. `kernels/tests/cuda_sim.rs` counts them on the simulated driver.
pub const LAUNCHES: u32 = 8;

/// What the check ran.
#[derive(Clone, Copy, Debug)]
pub struct Passed {
    /// Jobs run on the accelerator, all operations together.
    pub jobs: usize,
    /// How long the whole check took.
    pub took: Duration,
}

impl std::fmt::Display for Passed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "passed its start-up check against the CPU engine ({} jobs, {:.0} ms)",
            self.jobs,
            self.took.as_secs_f64() * 1e3
        )
    }
}

/// Runs the check on `acc` for packets up to `max_packet` bytes, each batch given `timeout`;
/// on the first difference, says which operation, packet and byte.
pub fn check(
    acc: &mut dyn Accelerator,
    max_packet: usize,
    timeout: Duration,
) -> Result<Passed, CheckError> {
    let start = Instant::now();
    let mut jobs = vectors(acc, timeout)?;
    jobs += aead(acc, max_packet, timeout)?;
    jobs += lz4(acc, max_packet, timeout)?;
    Ok(Passed {
        jobs,
        took: start.elapsed(),
    })
}

fn failed(op: &'static str, failure: crate::dispatch::accelerator::Failure) -> CheckError {
    CheckError::Stopped { op, failure }
}

/// The first differing byte of `a` and `b`, or where the shorter ends.
pub(crate) fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

fn vectors(acc: &mut dyn Accelerator, timeout: Duration) -> Result<usize, CheckError> {
    let keys: Vec<AeadKey> = GCM_VECTORS
        .iter()
        .map(|v| AeadKey::new(&hex(v.key).try_into().unwrap_or([0; 32])))
        .collect();
    let aads: Vec<Vec<u8>> = GCM_VECTORS.iter().map(|v| hex(v.aad)).collect();
    let mut bufs: Vec<Vec<u8>> = GCM_VECTORS
        .iter()
        .map(|v| {
            let mut b = hex(v.pt);
            b.resize(b.len() + TAG_LEN, 0);
            b
        })
        .collect();
    let mut jobs: Vec<SealJob<'_>> = GCM_VECTORS
        .iter()
        .zip(&keys)
        .zip(&aads)
        .zip(&mut bufs)
        .map(|(((v, key), aad), buf)| SealJob {
            key,
            nonce: hex(v.iv).try_into().unwrap_or([0; 12]),
            aad,
            len: buf.len() - TAG_LEN,
            buf,
            ok: false,
        })
        .collect();
    acc.try_seal(&mut jobs, Instant::now() + timeout)
        .map_err(|e| failed("seal", e))?;
    for (job, v) in jobs.iter().zip(&GCM_VECTORS) {
        let mut want = hex(v.ct);
        want.extend_from_slice(&hex(v.tag));
        if !job.ok || job.buf[..] != want[..] {
            return Err(CheckError::Wrong(format!(
                "seal gives a wrong ciphertext or tag for McGrew–Viega GCM {}",
                v.name
            )));
        }
    }
    Ok(GCM_VECTORS.len())
}

/// One packet of the AEAD check.
struct Packet {
    key: usize,
    nonce: [u8; 12],
    aad: [u8; 16],
    plain: Vec<u8>,
}

/// How an opened packet was altered after sealing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tamper {
    None,
    Ciphertext,
    Tag,
    Aad,
}

fn seal_jobs<'a>(
    packets: &'a [Packet],
    keys: &'a [AeadKey],
    bufs: &'a mut [Vec<u8>],
) -> Vec<SealJob<'a>> {
    packets
        .iter()
        .zip(bufs.iter_mut())
        .map(|(p, buf)| SealJob {
            key: &keys[p.key],
            nonce: p.nonce,
            aad: &p.aad,
            buf,
            len: p.plain.len(),
            ok: false,
        })
        .collect()
}

fn aead(
    acc: &mut dyn Accelerator,
    max_packet: usize,
    timeout: Duration,
) -> Result<usize, CheckError> {
    let (keys, packets) = aead_packets(max_packet);
    let want = check_seal(acc, &keys, &packets, timeout)?;
    let opened = check_open(acc, &keys, &packets, &want, timeout)?;
    Ok(packets.len() + opened)
}

/// Two keys, and two packets (one per key) of every checked size up to `max_packet`.
fn aead_packets(max_packet: usize) -> (Vec<AeadKey>, Vec<Packet>) {
    let mut rng = Rng(0x5e1f_7e57);
    let keys: Vec<AeadKey> = (0..2)
        .map(|_| {
            let mut k = [0u8; 32];
            rng.fill(&mut k);
            AeadKey::new(&k)
        })
        .collect();
    let packets: Vec<Packet> = SIZES
        .iter()
        .filter(|&&s| s <= max_packet)
        .flat_map(|&s| [(s, 0), (s, 1)])
        .map(|(size, key)| {
            let mut p = Packet {
                key,
                nonce: [0; 12],
                aad: [0; 16],
                plain: vec![0; size],
            };
            rng.fill(&mut p.nonce);
            rng.fill(&mut p.aad);
            rng.fill(&mut p.plain);
            p
        })
        .collect();
    (keys, packets)
}

/// Seals `packets` on the accelerator and the CPU engine: the results must be the same.
/// Returns the CPU engine's.
fn check_seal(
    acc: &mut dyn Accelerator,
    keys: &[AeadKey],
    packets: &[Packet],
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, CheckError> {
    let fresh = || -> Vec<Vec<u8>> {
        packets
            .iter()
            .map(|p| {
                let mut b = p.plain.clone();
                b.resize(p.plain.len() + TAG_LEN, 0);
                b
            })
            .collect()
    };
    let mut want = fresh();
    CpuEngine.seal(&mut seal_jobs(packets, keys, &mut want));
    let mut got = fresh();
    let mut jobs = seal_jobs(packets, keys, &mut got);
    acc.try_seal(&mut jobs, Instant::now() + timeout)
        .map_err(|e| failed("seal", e))?;
    let oks: Vec<bool> = jobs.iter().map(|j| j.ok).collect();
    drop(jobs);
    for (i, ((g, w), p)) in got.iter().zip(&want).zip(packets).enumerate() {
        let n = p.plain.len();
        if !oks[i] {
            return Err(CheckError::Wrong(format!(
                "seal refused a {n}-byte packet (packet {} of {})",
                i + 1,
                packets.len()
            )));
        }
        if let Some(at) = first_difference(g, w) {
            return Err(CheckError::Wrong(format!(
                "seal of a {n}-byte packet (packet {} of {}) differs from the CPU engine's at byte {at} ({})",
                i + 1,
                packets.len(),
                if at < n { "ciphertext" } else { "tag" }
            )));
        }
    }
    Ok(want)
}

/// Opens the CPU engine's sealed packets (`sealed`) on the accelerator, as they are and with
/// the tag, the ciphertext or the AAD altered: only the unaltered must open, to the
/// plaintext. Returns how many were opened.
fn check_open(
    acc: &mut dyn Accelerator,
    keys: &[AeadKey],
    packets: &[Packet],
    sealed: &[Vec<u8>],
    timeout: Duration,
) -> Result<usize, CheckError> {
    // Open the CPU's output, as received and altered three ways.
    let mut cases: Vec<(usize, Tamper, Vec<u8>)> = Vec::new();
    for (i, (w, p)) in sealed.iter().zip(packets).enumerate() {
        cases.push((i, Tamper::None, w.clone()));
        let mut t = w.clone();
        t[p.plain.len()] ^= 0x80;
        cases.push((i, Tamper::Tag, t));
        if !p.plain.is_empty() {
            let mut c = w.clone();
            c[p.plain.len() / 2] ^= 1;
            cases.push((i, Tamper::Ciphertext, c));
        }
        cases.push((i, Tamper::Aad, w.clone()));
    }
    let other_aad: Vec<[u8; 16]> = packets
        .iter()
        .map(|p| {
            let mut a = p.aad;
            a[0] ^= 1;
            a
        })
        .collect();
    let mut jobs: Vec<OpenJob<'_>> = cases
        .iter_mut()
        .map(|(i, how, buf)| OpenJob {
            key: &keys[packets[*i].key],
            nonce: packets[*i].nonce,
            aad: if *how == Tamper::Aad {
                &other_aad[*i]
            } else {
                &packets[*i].aad
            },
            len: buf.len(),
            buf,
            ok: false,
        })
        .collect();
    let opened = jobs.len();
    acc.try_open(&mut jobs, Instant::now() + timeout)
        .map_err(|e| failed("open", e))?;
    let oks: Vec<bool> = jobs.iter().map(|j| j.ok).collect();
    drop(jobs);
    for ((i, how, buf), ok) in cases.iter().zip(oks) {
        let p = &packets[*i];
        let n = p.plain.len();
        match (how, ok) {
            (Tamper::None, false) => {
                return Err(CheckError::Wrong(format!(
                    "open refused a valid {n}-byte packet sealed by the CPU engine"
                )));
            }
            (Tamper::None, true) if buf[..n] != p.plain[..] => {
                return Err(CheckError::Wrong(format!(
                    "open of a {n}-byte packet gives a plaintext that differs at byte {}",
                    first_difference(&buf[..n], &p.plain).unwrap_or(0)
                )));
            }
            (Tamper::None, true) | (_, false) => {}
            (how, true) => {
                let what = match how {
                    Tamper::Tag => "tag",
                    Tamper::Ciphertext => "ciphertext",
                    _ => "header (AAD)",
                };
                return Err(CheckError::Wrong(format!(
                    "open accepted a {n}-byte packet whose {what} was tampered with"
                )));
            }
        }
    }
    Ok(opened)
}

fn lz4(
    acc: &mut dyn Accelerator,
    max_packet: usize,
    timeout: Duration,
) -> Result<usize, CheckError> {
    let mut rng = Rng(0x1204_c0de);
    let sizes = [1usize, 64, 512, 1408, 9000, 9216];
    let mut inputs: Vec<(&str, Vec<u8>)> = Vec::new();
    for &s in sizes.iter().filter(|&&s| s <= max_packet) {
        inputs.push(("zeros", vec![0; s]));
        inputs.push(("text", compressible(&mut rng, s)));
        let mut r = vec![0; s];
        rng.fill(&mut r);
        inputs.push(("random", r));
    }
    // Compress on the accelerator, decompress with lz4_flex.
    let mut dsts: Vec<Vec<u8>> = inputs
        .iter()
        .map(|(_, s)| vec![0; crate::compress_bound(s.len())])
        .collect();
    let mut jobs: Vec<CompressJob<'_>> = inputs
        .iter()
        .zip(dsts.iter_mut())
        .map(|((_, src), dst)| CompressJob {
            src,
            dst,
            out_len: None,
        })
        .collect();
    acc.try_compress(&mut jobs, Instant::now() + timeout)
        .map_err(|e| failed("compress", e))?;
    let lens: Vec<Option<usize>> = jobs.iter().map(|j| j.out_len).collect();
    drop(jobs);
    for (((what, src), dst), len) in inputs.iter().zip(&dsts).zip(&lens) {
        let n = src.len();
        match len {
            None if *what == "zeros" && n >= 64 => {
                return Err(CheckError::Wrong(format!(
                    "compress did not shrink {n} zero bytes"
                )));
            }
            None => {}
            Some(m) if *m >= n => {
                return Err(CheckError::Wrong(format!(
                    "compress made {n} bytes of {what} into {m}, not fewer"
                )));
            }
            Some(m) => {
                let back = lz4_flex::block::decompress(&dst[..*m], n);
                if back.ok().as_deref() != Some(&src[..]) {
                    return Err(CheckError::Wrong(format!(
                        "compress of {n} bytes of {what}: lz4_flex does not decompress its output to the input"
                    )));
                }
            }
        }
    }
    let compressed = inputs.len();

    // Decompress the CPU's blocks on the accelerator; then a malformed block and one whose
    // output does not fit, both of which must be refused.
    let blocks: Vec<Vec<u8>> = inputs
        .iter()
        .map(|(_, s)| lz4_flex::block::compress(s))
        .collect();
    let mut garbage = lz4_flex::block::compress(&inputs[inputs.len() - 2].1);
    let end = garbage.len();
    garbage[end / 2..].fill(0xff);
    let mut outs: Vec<Vec<u8>> = inputs.iter().map(|(_, s)| vec![0; s.len()]).collect();
    let mut short = vec![0; inputs[inputs.len() - 2].1.len() / 2];
    let mut bad_out = vec![0; max_packet.max(1)];
    let mut jobs = DecompressJob::batch(&blocks, &mut outs);
    jobs.push(DecompressJob {
        src: &garbage,
        dst: &mut bad_out,
        out_len: None,
    });
    jobs.push(DecompressJob {
        src: &blocks[blocks.len() - 2],
        dst: &mut short,
        out_len: None,
    });
    let decompressed = jobs.len();
    acc.try_decompress(&mut jobs, Instant::now() + timeout)
        .map_err(|e| failed("decompress", e))?;
    let lens: Vec<Option<usize>> = jobs.iter().map(|j| j.out_len).collect();
    drop(jobs);
    for (((what, src), out), len) in inputs.iter().zip(&outs).zip(&lens) {
        let n = src.len();
        if *len != Some(n) || out[..] != src[..] {
            return Err(CheckError::Wrong(format!(
                "decompress of the CPU engine's block of {n} bytes of {what} does not give the input back"
            )));
        }
    }
    if lens[inputs.len()].is_some() {
        return Err(CheckError::Wrong(
            "decompress accepted a malformed LZ4 block".into(),
        ));
    }
    if lens[inputs.len() + 1].is_some() {
        return Err(CheckError::Wrong(
            "decompress wrote a block into space too short for it".into(),
        ));
    }
    Ok(compressed + decompressed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::accelerator::{Failure, Stop};
    use crate::dispatch::fault_injector::{Fault, TestAccelerator};

    /// A wrong answer the accelerator gives.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Mistake {
        /// Seal: one ciphertext bit wrong in packets longer than this (a multi-block bug).
        CiphertextAbove(usize),
        /// Seal: the tag's last bit wrong in empty packets.
        EmptyTag,
        /// Seal: refuses every packet.
        RefuseSeal,
        /// Open: says every tag verified.
        AcceptAll,
        /// Open: right except that the header (AAD) is left out of the tag.
        IgnoreAad,
        /// Open: a plaintext bit wrong.
        Plaintext,
        /// Compress: output that is not the input's LZ4.
        CompressGarbage,
        /// Compress: never shrinks anything.
        NeverCompress,
        /// Decompress: accepts anything, saying the whole output space was written.
        DecompressAnything,
    }

    /// The CPU's work behind the accelerator's face, with one mistake.
    struct Wrong(TestAccelerator, Mistake);

    impl Accelerator for Wrong {
        fn name(&self) -> &'static str {
            "wrong"
        }
        fn try_seal(&mut self, jobs: &mut [SealJob<'_>], d: Instant) -> Result<(), Failure> {
            self.0.try_seal(jobs, d)?;
            for j in jobs.iter_mut() {
                match self.1 {
                    Mistake::CiphertextAbove(n) if j.len > n => j.buf[n] ^= 4,
                    Mistake::EmptyTag if j.len == 0 => j.buf[TAG_LEN - 1] ^= 1,
                    Mistake::RefuseSeal => j.ok = false,
                    _ => {}
                }
            }
            Ok(())
        }
        fn try_open(&mut self, jobs: &mut [OpenJob<'_>], d: Instant) -> Result<(), Failure> {
            if self.1 == Mistake::IgnoreAad {
                // What an open that leaves the AAD out of the tag does: a packet whose
                // ciphertext and tag are those of one that verified is accepted, whatever its
                // header.
                let bodies: Vec<Vec<u8>> = jobs.iter().map(|j| j.buf[..j.len].to_vec()).collect();
                self.0.try_open(jobs, d)?;
                let mut by_body = std::collections::HashMap::new();
                for (j, b) in jobs.iter().zip(&bodies) {
                    if j.ok {
                        by_body.insert(b.clone(), j.buf[..j.len - TAG_LEN].to_vec());
                    }
                }
                for (j, b) in jobs.iter_mut().zip(&bodies) {
                    if let Some(plain) = by_body.get(b) {
                        j.buf[..plain.len()].copy_from_slice(plain);
                        j.ok = true;
                    }
                }
                return Ok(());
            }
            self.0.try_open(jobs, d)?;
            for j in jobs.iter_mut() {
                match self.1 {
                    Mistake::AcceptAll => j.ok = true,
                    Mistake::Plaintext if j.ok && j.len > TAG_LEN + 100 => j.buf[100] ^= 1,
                    _ => {}
                }
            }
            Ok(())
        }
        fn try_compress(
            &mut self,
            jobs: &mut [CompressJob<'_>],
            d: Instant,
        ) -> Result<(), Failure> {
            self.0.try_compress(jobs, d)?;
            for j in jobs.iter_mut() {
                match self.1 {
                    Mistake::CompressGarbage => {
                        if let Some(n) = j.out_len {
                            j.dst[..n].fill(0x5a);
                        }
                    }
                    Mistake::NeverCompress => j.out_len = None,
                    _ => {}
                }
            }
            Ok(())
        }
        fn try_decompress(
            &mut self,
            jobs: &mut [DecompressJob<'_>],
            d: Instant,
        ) -> Result<(), Failure> {
            self.0.try_decompress(jobs, d)?;
            if self.1 == Mistake::DecompressAnything {
                for j in jobs.iter_mut() {
                    j.out_len = j.out_len.or(Some(j.dst.len()));
                }
            }
            Ok(())
        }
        fn recover(&mut self) -> Result<(), crate::dispatch::accelerator::RecoverError> {
            Ok(())
        }
        fn describe(&self) -> String {
            "wrong accelerator".into()
        }
    }

    fn right() -> TestAccelerator {
        TestAccelerator::new(Fault::None, Duration::ZERO)
    }

    fn check_wrong(m: Mistake) -> String {
        match check(&mut Wrong(right(), m), 9216, Duration::from_secs(5)) {
            Ok(p) => panic!("{m:?} passed: {p}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_cpu_engine_behind_the_accelerator_face_passes() {
        let p = check(&mut right(), 9216, Duration::from_secs(5)).unwrap();
        // 4 vectors, 24 sealed, 24 × 3 + 22 opened, 18 compressed, 18 + 2 decompressed.
        assert_eq!(p.jobs, 4 + 24 + 94 + 18 + 20);
        assert!(
            p.to_string()
                .starts_with("passed its start-up check against the CPU engine (160 jobs, ")
        );
        // A smaller data plane checks only the sizes it sends.
        let small = check(&mut right(), 1408, Duration::from_secs(5)).unwrap();
        assert!(small.jobs < p.jobs, "{} vs {}", small.jobs, p.jobs);
    }

    #[test]
    fn each_wrong_answer_is_caught_and_named() {
        let cases = [
            (
                Mistake::CiphertextAbove(16),
                "seal gives a wrong ciphertext or tag for McGrew–Viega GCM test case 15",
            ),
            (
                Mistake::CiphertextAbove(1408),
                "seal of a 1409-byte packet (packet 19 of 24) differs from the CPU engine's at byte 1408 (ciphertext)",
            ),
            (
                Mistake::EmptyTag,
                "seal gives a wrong ciphertext or tag for McGrew–Viega GCM test case 13",
            ),
            (
                Mistake::RefuseSeal,
                "seal gives a wrong ciphertext or tag for McGrew–Viega GCM test case 13",
            ),
            (
                Mistake::AcceptAll,
                "open accepted a 0-byte packet whose tag was tampered with",
            ),
            (
                Mistake::IgnoreAad,
                "open accepted a 0-byte packet whose header (AAD) was tampered with",
            ),
            (
                Mistake::Plaintext,
                "open of a 512-byte packet gives a plaintext that differs at byte 100",
            ),
            (
                Mistake::CompressGarbage,
                "compress of 64 bytes of zeros: lz4_flex does not decompress its output to the input",
            ),
            (
                Mistake::NeverCompress,
                "compress did not shrink 64 zero bytes",
            ),
            (
                Mistake::DecompressAnything,
                "decompress accepted a malformed LZ4 block",
            ),
        ];
        for (m, want) in cases {
            assert_eq!(check_wrong(m), want, "{m:?}");
        }
    }

    #[test]
    fn an_accelerator_error_or_time_out_fails_the_check_with_the_reason() {
        let mut failing = TestAccelerator::new(Fault::ErrorAfter(2), Duration::ZERO);
        let e = check(&mut failing, 9216, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.to_string(), "seal failed after 2 jobs: injected error");
        let CheckError::Stopped { op, failure } = e else {
            panic!("{e:?}")
        };
        assert_eq!((op, failure.done, failure.kind), ("seal", 2, Stop::Error));
        let mut hanging = TestAccelerator::new(Fault::HangAfter(0), Duration::ZERO);
        let e = check(&mut hanging, 9216, Duration::from_millis(20)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "seal took too long after 0 jobs: injected hang"
        );
    }

    #[test]
    fn the_differing_byte_is_found_and_a_length_difference_counts() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
    }
}
