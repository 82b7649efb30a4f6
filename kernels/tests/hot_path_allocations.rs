//! The CPU engine allocates nothing per packet once warm (a worker's hot path): seal, open,
//! compress and decompress of packets of every size up to 9216 bytes, jumbo included, with a
//! counting allocator watching this test's thread.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use dwcp_kernels::alloc_count::Counting;
use dwcp_kernels::cpu::CpuEngine;
use dwcp_kernels::suite::Rng;
use dwcp_kernels::{AeadKey, CompressJob, DecompressJob, Engine, OpenJob, SealJob, TAG_LEN};

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    dwcp_kernels::alloc_count::allocations(f).1
}

#[test]
fn the_cpu_engine_allocates_nothing_per_packet() {
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
    let mut packed = vec![vec![0u8; dwcp_kernels::compress_bound(9216)]; inputs.len()];
    let mut unpacked = vec![vec![0u8; 9216]; inputs.len()];
    let mut lens = vec![None; inputs.len()];
    let mut engine = CpuEngine;
    // Allocations per operation in one round of every packet.
    let mut round = |engine: &mut CpuEngine| -> [u64; 4] {
        let mut seal: Vec<SealJob<'_>> = Vec::with_capacity(inputs.len());
        let mut open: Vec<OpenJob<'_>> = Vec::with_capacity(inputs.len());
        let mut compress: Vec<CompressJob<'_>> = Vec::with_capacity(inputs.len());
        let mut decompress: Vec<DecompressJob<'_>> = Vec::with_capacity(inputs.len());
        allocations(|| {});
        let sealing = allocations(|| {
            for (i, (buf, p)) in sealed.iter_mut().zip(&inputs).enumerate() {
                buf[..p.len()].copy_from_slice(p);
                seal.push(SealJob {
                    key: &key,
                    nonce: dwcp_kernels::nonce(i as u64),
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
        let opening = allocations(|| {
            for (i, (buf, p)) in sealed.iter_mut().zip(&inputs).enumerate() {
                open.push(OpenJob {
                    key: &key,
                    nonce: dwcp_kernels::nonce(i as u64),
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
        let compressing = allocations(|| {
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
        let decompressing = allocations(|| {
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
    let first = round(&mut engine);
    assert!(first.iter().sum::<u64>() <= 4, "first round: {first:?}");
    for _ in 0..3 {
        assert_eq!(
            round(&mut engine),
            [0; 4],
            "allocations per round: seal, open, compress, decompress"
        );
    }
}
