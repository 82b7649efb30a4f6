//! The engines a worker runs allocate nothing per packet once warm: seal, open, compress and
//! decompress of packets of every size up to 9216 bytes, jumbo included, through the CPU
//! engine, the dispatcher a worker has without a GPU, and the dispatcher's GPU path through
//! the gathering thread (a stand-in accelerator doing the CPU's work) — with a counting
//! allocator watching every thread.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use dwcp_kernels::alloc_count::Counting;
use dwcp_kernels::cpu::CpuEngine;
use dwcp_kernels::dispatch::testing::{Fault, TestAccelerator};
use dwcp_kernels::dispatch::{Dispatcher, Mode, Settings};
use dwcp_kernels::gather::{GatherSettings, Gatherer};
use dwcp_kernels::suite::Rng;
use dwcp_kernels::{AeadKey, CompressJob, DecompressJob, Engine, OpenJob, SealJob, TAG_LEN};

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations `f` and any other thread make while it runs.
fn allocations(f: impl FnOnce()) -> u64 {
    dwcp_kernels::alloc_count::allocations_anywhere(f).1
}

#[test]
fn the_engines_allocate_nothing_per_packet() {
    rounds("the CPU engine", &mut CpuEngine);
    rounds(
        "the dispatcher without a GPU",
        &mut Dispatcher::new(None, Settings::default()),
    );
    let gpu = TestAccelerator::new(Fault::None, Duration::ZERO);
    let (_gatherer, mut clients) = Gatherer::start(
        Box::new(gpu),
        1,
        GatherSettings {
            max_delay: Duration::from_micros(10),
            ..GatherSettings::default()
        },
    )
    .unwrap();
    let on = Settings {
        mode: Mode::On,
        deadline: Duration::from_secs(5),
        ..Settings::default()
    };
    let mut gathered = Dispatcher::new(Some(Box::new(clients.remove(0))), on);
    rounds("the dispatcher's GPU path, gathered", &mut gathered);
    let stats = gathered.offload_stats().unwrap();
    // Every operation went the GPU path (index 1), and none failed.
    assert!(
        stats.batches.iter().all(|per_path| per_path[1] > 0) && stats.gpu_errors == 0,
        "{stats:?}"
    );
}

/// A warm-up round of every packet through `engine`, then three that must not allocate.
fn rounds(what: &str, engine: &mut dyn Engine) {
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
    // Allocations per operation in one round of every packet.
    let mut round = |engine: &mut dyn Engine| -> [u64; 4] {
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
    round(engine);
    for _ in 0..3 {
        assert_eq!(
            round(engine),
            [0; 4],
            "{what}: allocations per round (seal, open, compress, decompress)"
        );
    }
}
