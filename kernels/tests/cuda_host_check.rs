//! The CUDA kernels' device functions (AES-256-GCM per lane, GHASH lane folding, LZ4 block
//! compress and decompress), built for the host with the system C++ compiler from the very
//! `.cu` files the GPU runs (`kernels/sim/host_check.cpp` emulates the warp's 32 lanes), and
//! checked against the CPU engine and `lz4_flex` on random packets. This checks the kernels'
//! arithmetic on machines without a GPU; `tests/gpu.rs` checks the kernels themselves on one.
#![allow(clippy::tests_outside_test_module)]

mod host_check;

use dwcp_kernels::cpu::CpuEngine;
use dwcp_kernels::suite::{EDGE_SIZES, Rng, compressible};
use dwcp_kernels::{AeadKey, Engine, SealJob, TAG_LEN};
use host_check::{lz4_results, reference_compress, run, text_chunks, u32le};

struct Pkt {
    key: [u8; 32],
    nonce: [u8; 12],
    aad: Vec<u8>,
    data: Vec<u8>,
}

fn random_packets(rng: &mut Rng, n: usize) -> Vec<Pkt> {
    (0..n)
        .map(|i| {
            let size = if i < EDGE_SIZES.len() {
                EDGE_SIZES[i]
            } else {
                rng.below(9217)
            };
            let mut p = Pkt {
                key: [0; 32],
                nonce: [0; 12],
                aad: vec![0; [0, 16, rng.below(41)][rng.below(3)]],
                data: vec![0; size],
            };
            rng.fill(&mut p.key);
            rng.fill(&mut p.nonce);
            rng.fill(&mut p.aad);
            rng.fill(&mut p.data);
            p
        })
        .collect()
}

fn gcm_records(pkts: &[Pkt]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in pkts {
        v.extend_from_slice(&p.key);
        v.extend_from_slice(&p.nonce);
        v.extend_from_slice(&u32le(p.aad.len()));
        v.extend_from_slice(&p.aad);
        v.extend_from_slice(&u32le(p.data.len()));
        v.extend_from_slice(&p.data);
    }
    v
}

/// Splits results into (ok, bytes) pairs.
fn gcm_results(mut out: &[u8]) -> Vec<(bool, Vec<u8>)> {
    let mut r = Vec::new();
    while !out.is_empty() {
        let ok = out[0] == 1;
        let n = u32::from_le_bytes(out[1..5].try_into().expect("len")) as usize;
        r.push((ok, out[5..5 + n].to_vec()));
        out = &out[5 + n..];
    }
    r
}

fn cpu_seal(p: &Pkt) -> Vec<u8> {
    let key = AeadKey::new(&p.key);
    let mut buf = p.data.clone();
    buf.resize(p.data.len() + TAG_LEN, 0);
    let mut job = [SealJob {
        key: &key,
        nonce: p.nonce,
        aad: &p.aad,
        len: p.data.len(),
        buf: &mut buf,
        ok: false,
    }];
    CpuEngine.seal(&mut job);
    assert!(job[0].ok);
    buf
}

#[test]
fn gcm_device_code_is_byte_identical_to_the_cpu_engine() {
    let mut rng = Rng(41);
    let pkts = random_packets(&mut rng, 1500);
    let got = gcm_results(&run("gcm-seal", &gcm_records(&pkts)));
    assert_eq!(got.len(), pkts.len());
    for (i, (p, (ok, ct))) in pkts.iter().zip(&got).enumerate() {
        assert!(ok);
        assert!(
            *ct == cpu_seal(p),
            "packet {i}: {} bytes, AAD {}",
            p.data.len(),
            p.aad.len()
        );
    }
}

#[test]
fn gcm_device_code_opens_cpu_output_and_rejects_tampering() {
    let mut rng = Rng(42);
    let mut pkts = random_packets(&mut rng, 600);
    let plain: Vec<Vec<u8>> = pkts.iter().map(|p| p.data.clone()).collect();
    for (i, p) in pkts.iter_mut().enumerate() {
        p.data = cpu_seal(p);
        if i % 2 == 1 {
            let at = rng.below(p.data.len());
            p.data[at] ^= 0x20;
        }
    }
    let got = gcm_results(&run("gcm-open", &gcm_records(&pkts)));
    for (i, (ok, pt)) in got.iter().enumerate() {
        if i % 2 == 1 {
            assert!(!ok, "tampered packet {i} accepted");
        } else {
            assert!(ok, "packet {i} rejected");
            assert!(*pt == plain[i], "packet {i} plaintext");
        }
    }
}

#[test]
fn lz4_device_code_round_trips_with_lz4_flex() {
    let mut rng = Rng(43);
    let inputs: Vec<Vec<u8>> = (0..800)
        .map(|i| {
            let size = if i < EDGE_SIZES.len() {
                EDGE_SIZES[i]
            } else {
                rng.below(9217)
            };
            if i % 5 == 4 {
                let mut v = vec![0; size];
                rng.fill(&mut v);
                v
            } else {
                compressible(&mut rng, size)
            }
        })
        .collect();
    let mut rec = Vec::new();
    for s in &inputs {
        rec.extend_from_slice(&u32le(s.len().saturating_sub(1)));
        rec.extend_from_slice(&u32le(s.len()));
        rec.extend_from_slice(s);
    }
    let got = lz4_results(&run("lz4-compress", &rec));
    let mut compressed = 0;
    for (i, (src, out)) in inputs.iter().zip(&got).enumerate() {
        if let Some(c) = out {
            assert!(c.len() < src.len());
            let back = lz4_flex::block::decompress(c, src.len())
                .unwrap_or_else(|e| panic!("packet {i}: lz4_flex rejects it: {e}"));
            assert!(back == *src, "packet {i} round trip");
            compressed += 1;
        } else {
            let reference = lz4_flex::block::compress(src).len();
            assert!(
                reference + 16 >= src.len(),
                "packet {i} ({} bytes) not compressed; lz4_flex makes {reference}",
                src.len()
            );
        }
    }
    assert!(compressed > 500, "only {compressed} compressed");
    // The reverse, plus malformed blocks.
    let mut rec = Vec::new();
    for s in &inputs {
        let c = lz4_flex::block::compress(s);
        rec.extend_from_slice(&u32le(9216));
        rec.extend_from_slice(&u32le(c.len()));
        rec.extend_from_slice(&c);
    }
    let bad: [&[u8]; 4] = [&[0x10, b'a', 0x05, 0x00], &[0xf0], &[], &[0x40, b'a']];
    for b in bad {
        rec.extend_from_slice(&u32le(64));
        rec.extend_from_slice(&u32le(b.len()));
        rec.extend_from_slice(b);
    }
    let got = lz4_results(&run("lz4-decompress", &rec));
    for (i, src) in inputs.iter().enumerate() {
        assert_eq!(got[i].as_deref(), Some(src.as_slice()), "packet {i}");
    }
    for (i, g) in got[inputs.len()..].iter().enumerate() {
        assert_eq!(*g, None, "malformed block {i} accepted");
    }
}

/// Past the 9216-byte packets the data plane sends, the kernels still speak LZ4: inputs past
/// 64 KiB compress (16-bit offsets: the matcher's window restarts every 64 KiB, so no match
/// reaches further back than LZ4 allows), and blocks decompressing to more than 64 KiB
/// decompress.
#[test]
fn lz4_device_code_handles_blocks_past_64_kib() {
    let mut rng = Rng(47);
    let mut inputs: Vec<Vec<u8>> = [65_534usize, 65_535, 65_536, 65_547, 100_000, 262_144]
        .iter()
        .map(|&n| compressible(&mut rng, n))
        .collect();
    // Sixteen random bytes seen again 66,016 bytes later, zeros between: the matcher remembers
    // where it saw them (the zeros are one long match), but an offset that far is not LZ4's.
    let mut far = vec![0u8; 16];
    rng.fill(&mut far);
    let marker = far.clone();
    far.resize(66_016, 0);
    far.extend_from_slice(&marker);
    far.resize(far.len() + 100, 0);
    inputs.push(far);
    let mut rec = Vec::new();
    for s in &inputs {
        rec.extend_from_slice(&u32le(s.len() - 1));
        rec.extend_from_slice(&u32le(s.len()));
        rec.extend_from_slice(s);
    }
    let got = lz4_results(&run("lz4-compress", &rec));
    assert_eq!(got.len(), inputs.len());
    for (i, (src, out)) in inputs.iter().zip(&got).enumerate() {
        let c = out
            .as_ref()
            .unwrap_or_else(|| panic!("input {i} ({} bytes) not compressed", src.len()));
        let back = lz4_flex::block::decompress(c, src.len()).unwrap_or_else(|e| {
            panic!("input {i} ({} bytes): lz4_flex rejects it: {e}", src.len())
        });
        assert!(back == *src, "input {i} ({} bytes) round trip", src.len());
    }
    let mut rec = Vec::new();
    for s in &inputs {
        let c = lz4_flex::block::compress(s);
        rec.extend_from_slice(&u32le(s.len()));
        rec.extend_from_slice(&u32le(c.len()));
        rec.extend_from_slice(&c);
    }
    let got = lz4_results(&run("lz4-decompress", &rec));
    for (i, src) in inputs.iter().enumerate() {
        assert!(
            got[i].as_deref() == Some(src.as_slice()),
            "input {i} ({} bytes) does not decompress",
            src.len()
        );
    }
}

/// Bytes on the wire per input byte: each packet compressed, or whole where it was not.
fn wire(inputs: &[Vec<u8>], out: impl Iterator<Item = Option<usize>>) -> f64 {
    let total: usize = inputs.iter().map(Vec::len).sum();
    let sent: usize = inputs
        .iter()
        .zip(out)
        .map(|(i, o)| o.map_or(i.len(), |n| n.min(i.len())))
        .sum();
    sent as f64 / total as f64
}

/// The GPU's compressor (this serial form is what its warps compute, byte for byte) finds
/// about as much as `lz4_flex` in real text and code at the data plane's packet sizes: its
/// table grows with the packet up to 4096 entries and matches extend backwards. With a
/// 512-entry table and no backward extension it sent 9-15 % more bytes at 9216.
#[test]
fn lz4_device_code_compresses_real_text_as_well_as_lz4_flex() {
    for size in [1408, 9216] {
        let inputs = text_chunks(size, 400);
        assert!(inputs.len() >= 20, "{size}: {} pieces", inputs.len());
        let ours = reference_compress(&inputs);
        let ours = wire(&inputs, ours.iter().map(|o| o.as_ref().map(Vec::len)));
        let flex = wire(
            &inputs,
            inputs
                .iter()
                .map(|i| Some(lz4_flex::block::compress(i).len())),
        );
        eprintln!(
            "{size} B: device code {:.1} %, lz4_flex {:.1} % of the input",
            ours * 100.0,
            flex * 100.0
        );
        assert!(
            ours <= flex * 1.02,
            "{size} B: device code sends {ours:.3} per byte, lz4_flex {flex:.3}"
        );
    }
}
