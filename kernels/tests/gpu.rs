//! The GPU half of the correctness suite: the CUDA engine must pass exactly what the CPU
//! engine passes (see `dwcp_kernels::suite`). These need an NVIDIA GPU and driver, so they are
//! ignored in the ordinary test run (which prints them as ignored, with this reason); on a GPU
//! machine run `scripts/gpu-test.sh`, which runs them with `--ignored`.
#![allow(clippy::tests_outside_test_module)]

mod host_check;

use dwcp_kernels::alloc_count::Counting;
use dwcp_kernels::cuda::{Capacity, CudaEngine};
use dwcp_kernels::dispatch::selftest;
use dwcp_kernels::suite;

// Counts allocations for `gpu_engine_allocates_nothing_per_batch` (run these one at a time:
// `scripts/gpu-test.sh` passes `--test-threads 1`).
#[global_allocator]
static COUNTING: Counting = Counting;

fn engine() -> CudaEngine {
    let e = CudaEngine::new(0, Capacity::for_batch(8192, 9216))
        .unwrap_or_else(|e| panic!("the CUDA engine is not available: {e}"));
    let info = e.info();
    eprintln!(
        "GPU: {} (compute {}.{}, {} SMs, {} MiB), kernels for {}",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.multiprocessors,
        info.memory_total >> 20,
        info.arch
    );
    e
}

/// A worker's dispatcher over the GPU (`offload.gpu = on`), checking whole one batch in
/// `verify_every`.
fn dispatcher(verify_every: u64) -> dwcp_kernels::dispatch::Dispatcher {
    use dwcp_kernels::dispatch::{Dispatcher, Mode, Settings};
    Dispatcher::new(
        Some(Box::new(engine())),
        Settings {
            mode: Mode::On,
            deadline: std::time::Duration::from_secs(5),
            verify_every,
            ..Settings::default()
        },
    )
}

fn no_failures(e: &CudaEngine) {
    let (n, last) = e.failures();
    assert_eq!(n, 0, "batches fell back to the CPU: {last:?}");
}

/// The GPU tests themselves, checked where there is no GPU so that a GPU session's minutes do
/// not find a broken test: this binary runs its quicker GPU tests again in a child on the
/// simulated driver (`DWCP_LIBCUDA`, `dwcp_kernels::sim`), and they must pass. (The whole
/// suite passes there too, in about four minutes: `DWCP_LIBCUDA=… gpu-tests --ignored`.)
#[test]
fn the_quicker_gpu_tests_pass_on_the_simulated_driver() {
    const QUICK: [&str; 7] = [
        "gpu_gcm_test_vectors",
        "gpu_status_from_nvml_is_the_engine_s_own_device",
        "gpu_passes_the_data_planes_start_up_check",
        "gpu_gcm_small_batches_and_single_packets",
        "gpu_lz4_compresses_text_as_small_as_the_cpu_engine",
        "gpu_small_run_of_every_kernel",
        "gpu_engine_allocates_nothing_per_batch",
    ];
    let dir = std::env::temp_dir().join(format!("dwcp-gpu-sim-{}", std::process::id()));
    let sim = dwcp_kernels::sim::build(&dir).unwrap_or_else(|e| panic!("{e}"));
    let nvml = dwcp_kernels::sim::build_nvml(&dir).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(QUICK)
        .args(["--ignored", "--exact", "--test-threads", "1", "--nocapture"])
        .env("DWCP_LIBCUDA", &sim)
        .env(dwcp_kernels::monitor::LIBRARY_ENV, &nvml)
        .output()
        .expect("run the GPU tests");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(dwcp_kernels::sim::DEVICE_NAME),
        "the child did not run on the simulated driver:\n{stderr}"
    );
    assert!(
        out.status.success()
            && stdout.contains(&format!("test result: ok. {} passed", QUICK.len())),
        "GPU tests failed on the simulated driver ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu-test.sh on a GPU machine"]
fn gpu_gcm_test_vectors() {
    let mut e = engine();
    suite::gcm_vectors(&mut e);
    no_failures(&e);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu-test.sh on a GPU machine"]
fn gpu_status_from_nvml_is_the_engine_s_own_device() {
    let e = engine();
    let info = e.info();
    let m = dwcp_kernels::monitor::GpuMonitor::open(&info.pci_bus_id)
        .unwrap_or_else(|why| panic!("no GPU status: {why}"));
    let s = m.snapshot().expect("an NVML sample");
    eprintln!("NVML: {}", s.line());
    assert_eq!(
        s.name, info.name,
        "NVML describes another GPU than CUDA runs on"
    );
    // NVML and CUDA count memory their own ways (reserved memory); the same card agrees
    // within a few per cent.
    let (a, b) = (s.memory_total, info.memory_total);
    assert!(
        a.abs_diff(b) <= a.max(b) / 20,
        "NVML says {a} B, CUDA {b} B: another GPU?"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu-test.sh on a GPU machine"]
fn gpu_passes_the_data_planes_start_up_check() {
    let mut e = engine();
    // Twice: the first pays the kernels' first launches.
    for _ in 0..2 {
        let passed = selftest::check(&mut e, 9216, std::time::Duration::from_secs(10))
            .unwrap_or_else(|why| panic!("{why}"));
        eprintln!("start-up check: {passed}");
    }
    no_failures(&e);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu-test.sh on a GPU machine"]
fn gpu_batches_all_checked_against_the_cpu_are_right() {
    let mut d = dispatcher(1);
    // The data plane's live check, on every batch: its LZ4 check must accept the GPU's own
    // blocks (other matches than lz4_flex's are right too).
    suite::gcm_random(&mut d, 20_000, 1024, 31);
    suite::lz4_round_trips(&mut d, 5_000, 1024, 32);
    let s = dwcp_kernels::Engine::offload_stats(&d).expect("stats");
    eprintln!(
        "checked {} GPU batches, {} wrong",
        s.verified_batches, s.gpu_wrong_batches
    );
    assert_eq!(s.gpu_wrong_batches, 0, "{:?}", s.last_error);
    assert_eq!(s.gpu_errors + s.gpu_timeouts, 0, "{:?}", s.last_error);
    assert_eq!(
        s.verified_batches,
        s.batches.iter().map(|b| b[1]).sum::<u64>()
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu-test.sh on a GPU machine"]
fn gpu_spot_checks_and_rechecked_refusals_raise_no_false_alarm() {
    let mut d = dispatcher(dwcp_kernels::dispatch::Settings::DEFAULT_VERIFY_EVERY);
    // Every third packet of the GCM suite is tampered with: the GPU refuses them, and the
    // first of each batch are re-run on the CPU from the buffers the GPU left (untouched).
    suite::gcm_random(&mut d, 20_000, 256, 33);
    suite::lz4_round_trips(&mut d, 2_000, 256, 34);
    let s = dwcp_kernels::Engine::offload_stats(&d).expect("stats");
    eprintln!(
        "checked whole {}, spot-checked {}, refusals rechecked {}, wrong {}",
        s.verified_batches, s.spot_checked_batches, s.rechecked_refusals, s.gpu_wrong_batches
    );
    assert_eq!(s.gpu_wrong_batches, 0, "{:?}", s.last_error);
    assert_eq!(s.gpu_errors + s.gpu_timeouts, 0, "{:?}", s.last_error);
    assert!(
        s.spot_checked_batches > 0 && s.rechecked_refusals > 0,
        "{s:?}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu-test.sh on a GPU machine"]
fn gpu_gcm_byte_identical_to_cpu_for_100k_random_packets() {
    let mut e = engine();
    suite::gcm_random(&mut e, 100_000, 8192, 0x5eed);
    no_failures(&e);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu-test.sh on a GPU machine"]
fn gpu_gcm_small_batches_and_single_packets() {
    let mut e = engine();
    suite::gcm_random(&mut e, 300, 1, 11);
    suite::gcm_random(&mut e, 3000, 37, 12);
    no_failures(&e);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu-test.sh on a GPU machine"]
fn gpu_lz4_round_trips_with_lz4_flex_both_ways() {
    let mut e = engine();
    suite::lz4_round_trips(&mut e, 20_000, 4096, 0x1234);
    // Malformed blocks: refused exactly where lz4_flex refuses them.
    suite::lz4_mutated_blocks(&mut e, 20_000, 0xbad_b10c);
    // Past 64 KiB: LZ4's 16-bit offsets, not a 64 KiB block.
    suite::lz4_past_64_kib(&mut e, 0x64_c1b);
    no_failures(&e);
}

/// A small run of every kernel, for NVIDIA's compute-sanitizer (`scripts/gpu-sanitize.sh`:
/// racecheck, synccheck, memcheck, initcheck), under which kernels run many times slower: the
/// start-up check, the GCM vectors, mixed GCM batches with tampered packets, LZ4 round trips,
/// mutated blocks, blocks past 64 KiB, both decompressors.
#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu-test.sh on a GPU machine"]
fn gpu_small_run_of_every_kernel() {
    use dwcp_kernels::cuda::Lz4Decompressor;
    let mut e = CudaEngine::new(0, Capacity::for_batch(256, 9216))
        .unwrap_or_else(|e| panic!("the CUDA engine is not available: {e}"));
    selftest::check(&mut e, 9216, std::time::Duration::from_secs(120))
        .unwrap_or_else(|why| panic!("{why}"));
    suite::gcm_vectors(&mut e);
    suite::gcm_random(&mut e, 300, 100, 0x5a);
    for d in Lz4Decompressor::ALL {
        e.set_decompressor(d);
        suite::lz4_overlapping_matches(&mut e, 0x5b);
        suite::lz4_round_trips(&mut e, 200, 100, 0x5c);
        suite::lz4_mutated_blocks(&mut e, 200, 0x5d);
    }
    suite::lz4_past_64_kib(&mut e, 0x5e);
    no_failures(&e);
}

/// Both decompress kernels, the warp per packet the engine uses and the thread per packet
/// kept to compare, give `lz4_flex`'s output and refusals on the GPU's memory model: matches
/// overlapping their own output at every offset up to 40, round trips, mutated blocks.
#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu-test.sh on a GPU machine"]
fn gpu_both_lz4_decompressors_give_lz4_flex_output_and_refusals() {
    use dwcp_kernels::cuda::Lz4Decompressor;
    let mut e = engine();
    for d in Lz4Decompressor::ALL {
        e.set_decompressor(d);
        eprintln!("{}", d.kernel());
        suite::lz4_overlapping_matches(&mut e, 0x0e1a);
        suite::lz4_round_trips(&mut e, 5000, 4096, 0x77);
        suite::lz4_mutated_blocks(&mut e, 5000, 0xbad);
    }
    no_failures(&e);
}

/// The GPU's compressor finds about as much as the CPU engine's (liblz4) in text and code, at
/// the data plane's packet sizes: offload on does not put more bytes on the wire (decision
/// 0020; the host check tests the same device code against `lz4_flex`).
#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu-test.sh on a GPU machine"]
fn gpu_lz4_compresses_text_as_small_as_the_cpu_engine() {
    use dwcp_kernels::{CompressJob, Engine, compress_bound};
    let mut e = engine();
    for size in [1408, 9216] {
        let inputs = host_check::text_chunks(size, 400);
        let mut wire = [0usize; 2];
        for (k, engine) in [&mut e as &mut dyn Engine, &mut dwcp_kernels::cpu::CpuEngine]
            .into_iter()
            .enumerate()
        {
            let mut dst = vec![vec![0; compress_bound(size)]; inputs.len()];
            let mut jobs = CompressJob::batch(&inputs, &mut dst);
            engine.compress(&mut jobs);
            wire[k] = jobs.iter().map(|j| j.out_len.unwrap_or(size)).sum();
        }
        let input = inputs.len() * size;
        eprintln!(
            "{size} B text: GPU {:.1} %, CPU engine {:.1} % of the input",
            100.0 * wire[0] as f64 / input as f64,
            100.0 * wire[1] as f64 / input as f64
        );
        assert!(
            wire[0] as f64 <= wire[1] as f64 * 1.02,
            "{size} B: GPU {} bytes, CPU {}",
            wire[0],
            wire[1]
        );
    }
    no_failures(&e);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu-test.sh on a GPU machine"]
fn gpu_batches_gathered_from_four_workers_are_right() {
    let st = suite::gathered_workers(
        Box::new(engine()),
        4,
        dwcp_kernels::gather::GatherSettings {
            max_batch: 1024,
            max_delay: std::time::Duration::from_micros(200),
            ..dwcp_kernels::gather::GatherSettings::default()
        },
        dwcp_kernels::dispatch::Settings::default().deadline,
        5_000,
        64,
    );
    eprintln!("gathered: {st:?}");
    assert!(st.most_workers >= 2, "{st:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu-test.sh on a GPU machine"]
fn gpu_engine_allocates_nothing_per_batch() {
    let mut e = engine();
    suite::no_allocation_per_packet("the CUDA engine", &mut e);
    no_failures(&e);
}
