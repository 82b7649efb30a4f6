//! The correctness suite every engine must pass, CPU and GPU alike: NIST/McGrew–Viega GCM
//! vectors, output byte-identical to the CPU engine (and to an independent AES-GCM) for many
//! random packets of mixed sizes, keys and nonces, tampering rejected, LZ4 that round-trips
//! through `lz4_flex` both ways, and malformed LZ4 refused; and no allocation per packet once
//! warm. Each check panics with what differed.

use crate::cpu::CpuEngine;
pub use crate::samples::{GCM_VECTORS, GcmVector, Rng, compressible, hex};
use crate::{AeadKey, CompressJob, DecompressJob, Engine, OpenJob, SealJob, TAG_LEN};

/// Checks `engine` on the GCM vectors.
pub fn gcm_vectors(engine: &mut dyn Engine) {
    for v in &GCM_VECTORS {
        let key = AeadKey::new(&hex(v.key).try_into().unwrap_or([0; 32]));
        let (pt, aad) = (hex(v.pt), hex(v.aad));
        let nonce: [u8; 12] = hex(v.iv).try_into().unwrap_or([0; 12]);
        let mut buf = pt.clone();
        buf.resize(pt.len() + TAG_LEN, 0);
        let mut jobs = [SealJob {
            key: &key,
            nonce,
            aad: &aad,
            buf: &mut buf,
            len: pt.len(),
            ok: false,
        }];
        engine.seal(&mut jobs);
        assert!(jobs[0].ok, "{}: {} refused to seal", v.name, engine.name());
        let mut want = hex(v.ct);
        want.extend_from_slice(&hex(v.tag));
        assert_eq!(
            hex_of(&buf),
            hex_of(&want),
            "{}: {} seal",
            v.name,
            engine.name()
        );
        let mut jobs = [OpenJob {
            key: &key,
            nonce,
            aad: &aad,
            buf: &mut buf,
            len: pt.len() + TAG_LEN,
            ok: false,
        }];
        engine.open(&mut jobs);
        assert!(jobs[0].ok, "{}: {} open", v.name, engine.name());
        assert_eq!(&buf[..pt.len()], pt.as_slice(), "{}: plaintext", v.name);
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The sizes every random AEAD run must include.
pub const EDGE_SIZES: [usize; 9] = [0, 1, 15, 16, 17, 64, 1408, 9000, 9216];

/// One random packet of a GCM batch.
struct Packet {
    key: usize,
    nonce: [u8; 12],
    aad: Vec<u8>,
    plain: Vec<u8>,
}

/// Seals `count` random packets (sizes 0..=9216 with every [`EDGE_SIZES`] entry, 64 keys,
/// random nonces and AAD of 0–40 bytes) in batches of `batch` with `engine` and with the CPU
/// engine, and requires byte-identical output; then opens them with `engine`, requiring the
/// plaintext back, and requires every tampered packet (ciphertext, tag, AAD or nonce changed)
/// to be rejected with its plaintext withheld.
pub fn gcm_random(engine: &mut dyn Engine, count: usize, batch: usize, seed: u64) {
    let mut rng = Rng(seed);
    let keys: Vec<AeadKey> = (0..64)
        .map(|_| {
            let mut k = [0u8; 32];
            rng.fill(&mut k);
            AeadKey::new(&k)
        })
        .collect();
    let mut done = 0;
    while done < count {
        let n = batch.min(count - done);
        let packets: Vec<Packet> = (0..n)
            .map(|i| {
                let size = if (done + i) < EDGE_SIZES.len() * 3 {
                    EDGE_SIZES[(done + i) % EDGE_SIZES.len()]
                } else {
                    match rng.below(4) {
                        0 => rng.below(64),
                        1 => rng.below(1500),
                        _ => rng.below(9217),
                    }
                };
                let aad_len = match rng.below(3) {
                    0 => 16,
                    1 => 0,
                    _ => rng.below(41),
                };
                let mut p = Packet {
                    key: rng.below(keys.len()),
                    nonce: [0; 12],
                    aad: vec![0; aad_len],
                    plain: vec![0; size],
                };
                rng.fill(&mut p.nonce);
                rng.fill(&mut p.aad);
                rng.fill(&mut p.plain);
                p
            })
            .collect();
        let mut got: Vec<Vec<u8>> = packets.iter().map(|p| with_room(&p.plain)).collect();
        let mut want = got.clone();
        seal_all(engine, &keys, &packets, &mut got);
        seal_all(&mut CpuEngine, &keys, &packets, &mut want);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g == w,
                "{}: packet {} ({} bytes, AAD {}) differs from the CPU engine",
                engine.name(),
                done + i,
                packets[i].plain.len(),
                packets[i].aad.len()
            );
        }
        // Tamper with every third packet in one of four ways.
        let mut aads: Vec<Vec<u8>> = packets.iter().map(|p| p.aad.clone()).collect();
        let mut nonces: Vec<[u8; 12]> = packets.iter().map(|p| p.nonce).collect();
        let mut tampered = vec![false; n];
        for i in (0..n).step_by(3) {
            tampered[i] = true;
            let len = got[i].len();
            match (i / 3) % 4 {
                0 if len > TAG_LEN => {
                    let at = rng.below(len - TAG_LEN);
                    got[i][at] ^= 0x40;
                }
                1 => {
                    let at = len - 1 - rng.below(TAG_LEN);
                    got[i][at] ^= 1;
                }
                2 if !aads[i].is_empty() => {
                    let at = rng.below(aads[i].len());
                    aads[i][at] ^= 0x80;
                }
                _ => nonces[i][11] ^= 1,
            }
        }
        let mut jobs: Vec<OpenJob<'_>> = got
            .iter_mut()
            .enumerate()
            .map(|(i, buf)| OpenJob {
                key: &keys[packets[i].key],
                nonce: nonces[i],
                aad: &aads[i],
                len: buf.len(),
                buf,
                ok: false,
            })
            .collect();
        engine.open(&mut jobs);
        for (i, job) in jobs.iter().enumerate() {
            if tampered[i] {
                assert!(
                    !job.ok,
                    "{}: tampered packet {} accepted",
                    engine.name(),
                    done + i
                );
            } else {
                assert!(
                    job.ok,
                    "{}: packet {} did not open",
                    engine.name(),
                    done + i
                );
                let p = &packets[i].plain;
                assert!(
                    &job.buf[..p.len()] == p.as_slice(),
                    "plaintext {} differs",
                    done + i
                );
            }
        }
        done += n;
    }
}

fn with_room(plain: &[u8]) -> Vec<u8> {
    let mut b = plain.to_vec();
    b.resize(plain.len() + TAG_LEN, 0);
    b
}

fn seal_all(engine: &mut dyn Engine, keys: &[AeadKey], packets: &[Packet], bufs: &mut [Vec<u8>]) {
    let mut jobs: Vec<SealJob<'_>> = bufs
        .iter_mut()
        .zip(packets)
        .map(|(buf, p)| SealJob {
            key: &keys[p.key],
            nonce: p.nonce,
            aad: &p.aad,
            buf,
            len: p.plain.len(),
            ok: false,
        })
        .collect();
    engine.seal(&mut jobs);
    assert!(
        jobs.iter().all(|j| j.ok),
        "{}: a seal was refused",
        engine.name()
    );
}

/// Edge cases of the LZ4 block format: empty, an empty last sequence, literals only, a
/// literal-length byte missing, a match with no offset, a match before the start, a match
/// right after literals (not allowed at the end), a long literal run cut short.
const TINY_BLOCKS: [&[u8]; 9] = [
    &[],
    &[0x00],
    &[0x10, b'a'],
    &[0x50, b'h', b'e', b'l', b'l', b'o'],
    &[0xf0],
    &[0x0f],
    &[0x10, b'a', 0x05, 0x00],
    &[0x14, b'a', 0x01, 0x00],
    &[0xf0, 0xff, 0x10, b'x'],
];

/// Decompresses `count` LZ4 blocks mutated every way (a bit flipped, bytes overwritten,
/// truncated, garbage appended), into outputs of the exact size or 9216 bytes, and the
/// format's edge cases (`TINY_BLOCKS`) into 0 and 16 bytes, with `engine`: it must refuse
/// exactly what `lz4_flex` refuses and otherwise give `lz4_flex`'s output, as the live check
/// requires ([`crate::dispatch::verify`]) — or a peer's malformed blocks would make an
/// accelerator look wrong and take it out of service at the peer's will.
pub fn lz4_mutated_blocks(engine: &mut dyn Engine, count: usize, seed: u64) {
    use crate::dispatch::verify::{Checked, Scratch};
    let mut rng = Rng(seed);
    let byte = |rng: &mut Rng| u8::try_from(rng.below(256)).unwrap_or(0);
    let blocks: Vec<(Vec<u8>, usize)> = (0..count)
        .map(|_| {
            let size = 16 + rng.below(3000);
            let mut b = lz4_flex::block::compress(&compressible(&mut rng, size));
            match rng.below(4) {
                0 => {
                    let at = rng.below(b.len());
                    b[at] ^= 1 << rng.below(8);
                }
                1 => {
                    for _ in 0..3 {
                        let at = rng.below(b.len());
                        b[at] = byte(&mut rng);
                    }
                }
                2 => b.truncate(rng.below(b.len())),
                _ => {
                    let n = rng.below(8);
                    b.extend((0..n).map(|_| byte(&mut rng)));
                }
            }
            (b, if rng.below(2) == 0 { size } else { 9216 })
        })
        .chain(
            TINY_BLOCKS
                .iter()
                .flat_map(|b| [(b.to_vec(), 0), (b.to_vec(), 16)]),
        )
        .collect();
    let mut outs: Vec<Vec<u8>> = blocks.iter().map(|(_, n)| vec![0u8; *n]).collect();
    let mut jobs: Vec<DecompressJob<'_>> = blocks
        .iter()
        .zip(outs.iter_mut())
        .map(|((src, _), dst)| DecompressJob {
            src,
            dst,
            out_len: None,
        })
        .collect();
    engine.decompress(&mut jobs);
    let refused = jobs.iter().filter(|j| j.out_len.is_none()).count();
    let v = DecompressJob::check_all(&mut jobs, &mut Scratch::default());
    assert_eq!(
        v.wrong,
        0,
        "{}: {} of {count} mutated blocks decompress unlike lz4_flex, the first: {:?}",
        engine.name(),
        v.wrong,
        v.first
    );
    // Both kinds were there to compare.
    assert!(
        (count * 3 / 20..=count * 17 / 20).contains(&refused),
        "{refused} of {count} refused"
    );
}

/// Compresses `count` packets (compressible and random, every [`EDGE_SIZES`] entry) with
/// `engine` in batches of `batch`: each result must be smaller than its input and decompress
/// with `lz4_flex` to the original; `None` only for input that `lz4_flex` cannot shrink by
/// more than a few bytes either. Then `lz4_flex`-compressed packets must decompress with
/// Compresses `inputs` in one batch on `engine`, each into LZ4's worst-case space: the
/// outputs and each result's length (`None`: not compressed).
fn compress_each(
    engine: &mut dyn Engine,
    inputs: &[Vec<u8>],
) -> (Vec<Vec<u8>>, Vec<Option<usize>>) {
    let mut outs: Vec<Vec<u8>> = inputs
        .iter()
        .map(|s| vec![0u8; crate::compress_bound(s.len())])
        .collect();
    let mut jobs = CompressJob::batch(inputs, &mut outs);
    engine.compress(&mut jobs);
    let lens = jobs.iter().map(|j| j.out_len).collect();
    drop(jobs);
    (outs, lens)
}

/// `engine` to the original, and malformed blocks must be refused.
pub fn lz4_round_trips(engine: &mut dyn Engine, count: usize, batch: usize, seed: u64) {
    let mut rng = Rng(seed);
    let mut done = 0;
    while done < count {
        let n = batch.min(count - done);
        let inputs: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let size = if done + i < EDGE_SIZES.len() {
                    EDGE_SIZES[done + i]
                } else {
                    rng.below(9217)
                };
                if rng.below(4) == 0 {
                    let mut v = vec![0u8; size];
                    rng.fill(&mut v);
                    v
                } else {
                    compressible(&mut rng, size)
                }
            })
            .collect();
        let (outs, lens) = compress_each(engine, &inputs);
        for (i, len) in lens.iter().enumerate() {
            let src = &inputs[i];
            match len {
                Some(m) => {
                    assert!(*m < src.len(), "{}: result not smaller", engine.name());
                    let back = lz4_flex::block::decompress(&outs[i][..*m], src.len())
                        .unwrap_or_else(|e| {
                            panic!(
                                "{}: packet {} does not decompress: {e}",
                                engine.name(),
                                done + i
                            )
                        });
                    assert!(
                        back == *src,
                        "{}: packet {} round trip",
                        engine.name(),
                        done + i
                    );
                }
                None => {
                    let reference = lz4_flex::block::compress(src);
                    assert!(
                        reference.len() + 64 >= src.len(),
                        "{}: packet {} ({} bytes) left uncompressed, lz4_flex makes {}",
                        engine.name(),
                        done + i,
                        src.len(),
                        reference.len()
                    );
                }
            }
        }
        // The reverse: lz4_flex compresses, the engine decompresses.
        let packed: Vec<Vec<u8>> = inputs
            .iter()
            .map(|s| lz4_flex::block::compress(s))
            .collect();
        let mut backs: Vec<Vec<u8>> = vec![vec![0u8; 9216]; n];
        let mut jobs = DecompressJob::batch(&packed, &mut backs);
        engine.decompress(&mut jobs);
        for (i, job) in jobs.iter().enumerate() {
            let m = job
                .out_len
                .unwrap_or_else(|| panic!("{}: packet {} refused", engine.name(), done + i));
            assert!(
                &job.dst[..m] == inputs[i].as_slice(),
                "decompress {}",
                done + i
            );
        }
        done += n;
    }
    // Malformed: offsets before the start, truncated lengths, output that does not fit.
    let bad: [&[u8]; 5] = [
        &[0x10, b'a', 0x05, 0x00],
        &[0xf0],
        &[0x1f, b'a', 0x01, 0x00, 0xff],
        &[],
        &[0x40, b'a', b'b'],
    ];
    let mut outs = vec![vec![0u8; 64]; bad.len()];
    let mut jobs: Vec<DecompressJob<'_>> = bad
        .iter()
        .zip(outs.iter_mut())
        .map(|(src, dst)| DecompressJob {
            src,
            dst,
            out_len: Some(1),
        })
        .collect();
    engine.decompress(&mut jobs);
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(
            job.out_len,
            None,
            "{}: malformed block {i} accepted",
            engine.name()
        );
    }
}

/// Blocks past 64 KiB, larger than any packet the data plane sends: `engine` compresses
/// them to blocks `lz4_flex` decompresses, and decompresses `lz4_flex`'s blocks into output
/// spaces larger than 64 KiB (LZ4's offsets are 16-bit; its blocks are not limited to 64 KiB).
pub fn lz4_past_64_kib(engine: &mut dyn Engine, seed: u64) {
    let mut rng = Rng(seed);
    let inputs: Vec<Vec<u8>> = [9216usize, 65_535, 65_536, 100_000, 262_144]
        .iter()
        .map(|&n| compressible(&mut rng, n))
        .collect();
    let (outs, lens) = compress_each(engine, &inputs);
    let name = engine.name();
    for (i, src) in inputs.iter().enumerate() {
        let n = lens[i].unwrap_or_else(|| panic!("{name}: {} bytes not compressed", src.len()));
        let back = lz4_flex::block::decompress(&outs[i][..n], src.len()).unwrap_or_else(|e| {
            panic!(
                "{name}: {} bytes: lz4_flex rejects the block: {e}",
                src.len()
            )
        });
        assert!(back == *src, "{name}: {} bytes: round trip", src.len());
    }
    let blocks: Vec<Vec<u8>> = inputs
        .iter()
        .map(|s| lz4_flex::block::compress(s))
        .collect();
    let mut backs: Vec<Vec<u8>> = inputs.iter().map(|s| vec![0u8; s.len() + 100]).collect();
    let mut jobs = DecompressJob::batch(&blocks, &mut backs);
    engine.decompress(&mut jobs);
    let lens: Vec<Option<usize>> = jobs.iter().map(|j| j.out_len).collect();
    drop(jobs);
    for (i, src) in inputs.iter().enumerate() {
        assert_eq!(
            lens[i],
            Some(src.len()),
            "{name}: {} bytes: decompressed length",
            src.len()
        );
        assert!(
            backs[i][..src.len()] == *src,
            "{name}: {} bytes: decompressed bytes",
            src.len()
        );
    }
}

/// Appends a run length's extra bytes (past the token's 15) in LZ4's encoding.
fn lz4_len(block: &mut Vec<u8>, mut r: usize) {
    while r >= 255 {
        block.push(255);
        r -= 255;
    }
    block.push(u8::try_from(r).unwrap_or(0));
}

/// Appends one LZ4 sequence — `lit` literals, then a match of `ml` (≥ 4) bytes `offset` back
/// — to `block`.
fn lz4_encode(block: &mut Vec<u8>, lit: &[u8], offset: usize, ml: usize) {
    let (l, m) = (lit.len(), ml - 4);
    block.push(u8::try_from((l.min(15) << 4) | m.min(15)).unwrap_or(0));
    if l >= 15 {
        lz4_len(block, l - 15);
    }
    block.extend_from_slice(lit);
    block.extend_from_slice(&u16::try_from(offset).unwrap_or(0).to_le_bytes());
    if m >= 15 {
        lz4_len(block, m - 15);
    }
}

/// [`lz4_encode`], and what the sequence decodes to appended to `out`, byte by byte as the
/// format defines it.
fn lz4_sequence(block: &mut Vec<u8>, out: &mut Vec<u8>, lit: &[u8], offset: usize, ml: usize) {
    lz4_encode(block, lit, offset, ml);
    out.extend_from_slice(lit);
    for _ in 0..ml {
        out.push(out[out.len() - offset]);
    }
}

/// Matches that overlap their own output — offsets 1 to 40, shorter and longer than a warp's
/// 32 lanes, lengths from 4 to past 255 — in blocks built sequence by sequence (a second
/// match reaching back into the first), decompressed by `engine` to what the format defines,
/// which `lz4_flex` agrees with; the same block with an offset one past the output so far is
/// refused. Where one lane's byte is another's source, a decompressor sharing a packet among
/// threads goes wrong.
pub fn lz4_overlapping_matches(engine: &mut dyn Engine, seed: u64) {
    let mut rng = Rng(seed);
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut wants: Vec<Vec<u8>> = Vec::new();
    for offset in 1..=40usize {
        for ml in [4usize, 5, 18, 19, 31, 32, 33, 63, 64, 65, 100, 274, 300] {
            let (mut block, mut out) = (Vec::new(), Vec::new());
            let mut lit = vec![0u8; offset + rng.below(3)];
            rng.fill(&mut lit);
            lz4_sequence(&mut block, &mut out, &lit, offset, ml);
            // A second match, from inside the first one's output back into the literals.
            let second = 1 + rng.below(out.len());
            let mut lit2 = vec![0u8; rng.below(20)];
            rng.fill(&mut lit2);
            lz4_sequence(&mut block, &mut out, &lit2, second, 4 + rng.below(70));
            // The last sequence: literals only.
            block.extend_from_slice(&[0x10, b'.']);
            out.push(b'.');
            let flex = lz4_flex::block::decompress(&block, out.len())
                .unwrap_or_else(|e| panic!("offset {offset} length {ml}: lz4_flex: {e}"));
            assert!(
                flex == out,
                "offset {offset} length {ml}: lz4_flex disagrees"
            );
            // The same first match one byte further back than the output so far: malformed.
            let mut bad = Vec::new();
            lz4_encode(&mut bad, &lit, lit.len() + 1, ml);
            bad.extend_from_slice(&[0x10, b'.']);
            blocks.push(block);
            wants.push(out);
            blocks.push(bad);
            wants.push(Vec::new());
        }
    }
    let mut outs: Vec<Vec<u8>> = wants.iter().map(|w| vec![0u8; w.len().max(16)]).collect();
    let mut jobs = DecompressJob::batch(&blocks, &mut outs);
    engine.decompress(&mut jobs);
    let name = engine.name();
    for (i, (job, want)) in jobs.iter().zip(&wants).enumerate() {
        if want.is_empty() {
            assert_eq!(
                job.out_len, None,
                "{name}: block {i}: offset past the start accepted"
            );
        } else {
            assert_eq!(job.out_len, Some(want.len()), "{name}: block {i}: length");
            assert!(job.dst[..want.len()] == *want, "{name}: block {i}: bytes");
        }
    }
}

/// Holds `engine` to no allocation per packet once warm: a warm-up round of seal, open,
/// compress and decompress over packets of 0 to 9216 bytes (text and random), then three
/// rounds in which no thread may allocate. Counts only with
/// [`crate::alloc_count::Counting`] as the test binary's global allocator (else it checks
/// nothing, and says so by panicking); keep the test alone in its binary, since other
/// threads' allocations count too.
pub fn no_allocation_per_packet(what: &str, engine: &mut dyn Engine) {
    let (_, seen) = crate::alloc_count::allocations_anywhere(|| std::hint::black_box(vec![0u8; 1]));
    assert_eq!(
        seen, 1,
        "install dwcp_kernels::alloc_count::Counting as the global allocator"
    );
    const SIZES: [usize; 8] = [0, 1, 64, 512, 1408, 4095, 4096, 9216];
    let key = AeadKey::new(&[7; 32]);
    let mut rng = Rng(3);
    let text: Vec<u8> = b"2026-11-23T18:00:00Z site-a-gw ckpt shard=00017 status=200 OK\n"
        .iter()
        .copied()
        .cycle()
        .take(9216)
        .collect();
    // Inputs and outputs, allocated before the watch: half text, half random.
    let inputs: Vec<Vec<u8>> = SIZES
        .iter()
        .flat_map(|&n| {
            let mut random = vec![0u8; n];
            rng.fill(&mut random);
            [text[..n].to_vec(), random]
        })
        .collect();
    let mut sealed: Vec<Vec<u8>> = inputs
        .iter()
        .map(|p| {
            let mut b = p.clone();
            b.resize(p.len() + TAG_LEN, 0);
            b
        })
        .collect();
    let mut packed = vec![vec![0u8; crate::compress_bound(9216)]; inputs.len()];
    let mut unpacked = vec![vec![0u8; 9216]; inputs.len()];
    let mut lens = vec![None; inputs.len()];
    // Allocations per operation in one round of every packet.
    let mut round = |engine: &mut dyn Engine| -> [u64; 4] {
        let mut seal: Vec<SealJob<'_>> = Vec::with_capacity(inputs.len());
        let mut open: Vec<OpenJob<'_>> = Vec::with_capacity(inputs.len());
        let mut compress: Vec<CompressJob<'_>> = Vec::with_capacity(inputs.len());
        let mut decompress: Vec<DecompressJob<'_>> = Vec::with_capacity(inputs.len());
        let sealing = counted(|| {
            for (i, (buf, p)) in sealed.iter_mut().zip(&inputs).enumerate() {
                buf[..p.len()].copy_from_slice(p);
                seal.push(SealJob {
                    key: &key,
                    nonce: crate::nonce(i as u64),
                    aad: &[1; 16],
                    buf,
                    len: p.len(),
                    ok: false,
                });
            }
            engine.seal(&mut seal);
            assert!(seal.iter().all(|j| j.ok));
            seal.clear();
        });
        let opening = counted(|| {
            for (i, (buf, p)) in sealed.iter_mut().zip(&inputs).enumerate() {
                open.push(OpenJob {
                    key: &key,
                    nonce: crate::nonce(i as u64),
                    aad: &[1; 16],
                    buf,
                    len: p.len() + TAG_LEN,
                    ok: false,
                });
            }
            engine.open(&mut open);
            assert!(open.iter().all(|j| j.ok));
            open.clear();
        });
        let compressing = counted(|| {
            for (src, dst) in inputs.iter().zip(packed.iter_mut()) {
                compress.push(CompressJob {
                    src,
                    dst,
                    out_len: None,
                });
            }
            engine.compress(&mut compress);
            for (l, j) in lens.iter_mut().zip(&compress) {
                *l = j.out_len;
            }
            compress.clear();
        });
        assert!(lens.iter().filter(|l| l.is_some()).count() >= 5, "{lens:?}");
        let decompressing = counted(|| {
            for ((src, dst), l) in packed.iter().zip(unpacked.iter_mut()).zip(&lens) {
                if let Some(l) = *l {
                    decompress.push(DecompressJob {
                        src: &src[..l],
                        dst,
                        out_len: None,
                    });
                }
            }
            engine.decompress(&mut decompress);
            assert!(decompress.iter().all(|j| j.out_len.is_some()));
            decompress.clear();
        });
        [sealing, opening, compressing, decompressing]
    };
    // The first round may set up per-thread state (liblz4's, lz4_flex's table); the next
    // ones must not allocate at all.
    round(engine);
    for _ in 0..3 {
        assert_eq!(
            round(engine),
            [0; 4],
            "{what}: allocations per round (seal, open, compress, decompress)"
        );
    }
}

/// Allocations `f` and any other thread make while it runs.
fn counted(f: impl FnOnce()) -> u64 {
    crate::alloc_count::allocations_anywhere(f).1
}

/// A worker's dispatcher that sends every batch to `gpu` (`offload.gpu = on`) with batch
/// deadline `deadline`, the other settings at their defaults.
pub fn dispatcher_on(
    gpu: Box<dyn crate::dispatch::Accelerator>,
    deadline: std::time::Duration,
) -> crate::dispatch::Dispatcher {
    use crate::dispatch::{Dispatcher, Mode, Settings};
    Dispatcher::new(
        Some(gpu),
        Settings {
            mode: Mode::On,
            deadline,
            ..Settings::default()
        },
    )
}

/// The suite through the gathering thread: `workers` threads, each with its own dispatcher
/// (`offload.gpu = on`, batch deadline `deadline`) over one gathering thread in front of `gpu`,
/// each sealing and opening `packets` random packets and round-tripping `packets / 5` through
/// LZ4, `batch` at a time, with no accelerator error, time-out or CPU fallback. Returns the
/// gathering thread's counters.
pub fn gathered_workers(
    gpu: Box<dyn crate::dispatch::Accelerator>,
    workers: usize,
    gather: crate::gather::GatherSettings,
    deadline: std::time::Duration,
    packets: usize,
    batch: usize,
) -> crate::gather::GatherStats {
    let (g, clients) =
        crate::gather::Gatherer::start(gpu, workers, gather).expect("gathering thread");
    std::thread::scope(|scope| {
        for (w, c) in clients.into_iter().enumerate() {
            scope.spawn(move || {
                let mut d = dispatcher_on(Box::new(c), deadline);
                let seed = 100 + w as u64;
                gcm_random(&mut d, packets, batch, seed);
                lz4_round_trips(&mut d, packets / 5, batch, seed);
                let st = d.offload_stats().expect("a dispatcher");
                assert_eq!(st.gpu_errors + st.gpu_timeouts, 0, "{:?}", st.last_error);
                assert_eq!(st.fallback_jobs, 0, "worker {w}: jobs fell back to the CPU");
            });
        }
    });
    g.stats()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_engine_passes_the_vectors() {
        gcm_vectors(&mut CpuEngine);
    }

    #[test]
    fn cpu_engine_passes_the_random_gcm_suite() {
        gcm_random(&mut CpuEngine, 3000, 700, 1);
    }

    #[test]
    fn cpu_engine_passes_the_lz4_suite() {
        lz4_round_trips(&mut CpuEngine, 600, 256, 2);
        lz4_mutated_blocks(&mut CpuEngine, 2000, 3);
        lz4_past_64_kib(&mut CpuEngine, 4);
        lz4_overlapping_matches(&mut CpuEngine, 5);
    }
}
