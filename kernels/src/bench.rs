//! `dwcp bench offload`: seal, open, compress and decompress at several packet and batch
//! sizes on the GPU — kernel-only and end-to-end (host staging and copies included) — beside
//! the pinned host↔device copy bandwidth and the CPU engine on every host core, all measured
//! in the same run; and what checking a sample of GPU batches against the CPU engine costs.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cpu::CpuEngine;
use crate::cuda::{Capacity, CudaEngine, CudaError, Lz4Decompressor, Op};
use crate::dispatch::Batch;
use crate::dispatch::fault_injector::{Fault, TestAccelerator};
use crate::samples::{Rng, compressible};
use crate::{AeadKey, CompressJob, DecompressJob, Engine, OpenJob, SealJob, TAG_LEN};

/// Packet sizes measured.
pub const SIZES: [usize; 4] = [64, 512, 1408, 9000];
/// Batch sizes measured.
pub const BATCHES: [usize; 5] = [256, 1024, 4096, 16384, 65536];

/// One measured cell.
#[derive(Clone, Debug)]
pub struct Row {
    /// Operation.
    pub op: Op,
    /// Packet size, bytes (the uncompressed size for decompress).
    pub size: usize,
    /// Packets per batch.
    pub batch: usize,
    /// Payload GB/s with data already on the device.
    pub kernel_gbps: f64,
    /// Payload GB/s from host buffers to host buffers.
    pub e2e_gbps: f64,
    /// The CPU engine on every host core, payload GB/s.
    pub cpu_gbps: f64,
}

/// Sealing through the gathering thread from several workers at once, in worker-sized
/// bursts, beside the CPU engine on the same number of threads.
#[derive(Clone, Debug)]
pub struct GatherRow {
    /// Worker threads.
    pub workers: usize,
    /// Packets per worker batch (a burst).
    pub burst: usize,
    /// Packet size, bytes.
    pub size: usize,
    /// Payload GB/s through the dispatchers, the gathering thread and the accelerator.
    pub gathered_gbps: f64,
    /// Mean packets per gather.
    pub mean_gather: f64,
    /// Largest gather, packets.
    pub largest: u64,
    /// Packets the workers' CPUs finished after an accelerator failure.
    pub fallbacks: u64,
    /// The same through `offload.gpu = auto` dispatchers, which split each burst between the
    /// worker's CPU and the accelerator, payload GB/s.
    pub auto_gbps: f64,
    /// The accelerator's share of the bytes under `auto`.
    pub auto_gpu_share: f64,
    /// The CPU engine, one per worker thread, same bursts, payload GB/s.
    pub cpu_gbps: f64,
}

/// Batch sizes of the small-batch rows: one packet, the data plane's burst, and eight
/// workers' bursts gathered.
pub const LATENCY_BATCHES: [usize; 3] = [1, WORKER_BATCH, 8 * WORKER_BATCH];
/// Packet size of the small-batch rows.
pub const LATENCY_SIZE: usize = 1408;

/// One small batch's wall time: one call to the GPU end to end (staging, copies, kernels,
/// results) beside the CPU engine on one thread, medians. A worker waiting for its burst's
/// GPU batch waits `gpu`; `gpu / cpu` is how many bursts it would need in flight for the GPU
/// path to keep pace with its own core, which decides whether a pipeline across bursts pays.
#[derive(Clone, Debug)]
pub struct LatencyRow {
    /// Operation.
    pub op: Op,
    /// Packet size, bytes.
    pub size: usize,
    /// Packets per batch.
    pub batch: usize,
    /// The GPU's wall time for the batch.
    pub gpu: Duration,
    /// The CPU engine's, one thread.
    pub cpu: Duration,
}

impl LatencyRow {
    /// Bursts in flight the GPU path needs to keep pace with one core.
    pub fn gpu_over_cpu(&self) -> f64 {
        self.gpu.as_secs_f64() / self.cpu.as_secs_f64().max(1e-12)
    }
}

/// The burst (`dataplane.burst`) from which one GPU call for `op` takes no longer than the CPU
/// engine on one thread, from the small-batch rows: the GPU's time fitted as a fixed cost plus
/// a cost per packet through its two largest batches, the CPU's as a cost per packet at its
/// largest. `None` when the GPU's cost per packet is no lower than the CPU's (no burst pays),
/// when even 65536 packets do not pay off its fixed cost, or when the rows are missing.
pub fn break_even_burst(rows: &[LatencyRow], op: Op) -> Option<usize> {
    let mut mine: Vec<&LatencyRow> = rows.iter().filter(|r| r.op == op).collect();
    mine.sort_by_key(|r| r.batch);
    let [.., small, large] = mine.as_slice() else {
        return None;
    };
    let (b1, b2) = (small.batch as f64, large.batch as f64);
    if b2 <= b1 {
        return None;
    }
    let (g1, g2) = (small.gpu.as_secs_f64(), large.gpu.as_secs_f64());
    let per_gpu = ((g2 - g1) / (b2 - b1)).max(0.0);
    let fixed = (g2 - per_gpu * b2).max(0.0);
    let per_cpu = large.cpu.as_secs_f64() / b2;
    if per_cpu <= per_gpu {
        return None;
    }
    // The smallest burst where the fixed cost is paid off, up to the largest offload batch.
    (1..=65_536usize).find(|&b| fixed + per_gpu * b as f64 <= per_cpu * b as f64)
}

/// What the live check of GPU batches against the CPU engine (`offload.verify_every`,
/// [`crate::dispatch::verify`]) costs for one operation and packet size.
#[derive(Clone, Debug)]
pub struct CheckRow {
    /// Operation.
    pub op: Op,
    /// Packet size, bytes.
    pub size: usize,
    /// Payload GB/s one core checks (inputs kept before the batch, results recomputed and
    /// compared after).
    pub check_gbps: f64,
    /// The GPU's best end-to-end GB/s at this operation and size, over the batch sizes.
    pub best_e2e_gbps: f64,
}

impl CheckRow {
    /// Cores the live checks take while the GPU runs at its best rate, with `offload.
    /// verify_every = every` and workers handing batches of `batch` packets: one batch in
    /// `every` checked whole, one packet of each other; none at all for `every = 0`.
    pub fn cores(&self, every: u64, batch: usize) -> f64 {
        if every == 0 {
            return 0.0;
        }
        let whole = 1.0 / every as f64;
        let share = whole + (1.0 - whole) / batch.max(1) as f64;
        self.best_e2e_gbps * share / self.check_gbps.max(1e-9)
    }
}

/// Packets in a worker's batch: the data plane's burst (`dwcp_dataplane::worker::BURST`),
/// whose size sets what the spot checks cost.
pub const WORKER_BATCH: usize = 32;

/// How well the GPU's LZ4 compresses beside the CPU engine's (liblz4), on the same packets.
#[derive(Clone, Copy, Debug)]
pub struct RatioRow {
    /// Packet size, bytes.
    pub size: usize,
    /// Bytes the GPU's output takes per input byte (a packet it did not compress counts
    /// whole, as it then goes uncompressed).
    pub gpu: f64,
    /// The same for the CPU engine.
    pub cpu: f64,
}

/// Bytes on the wire per input byte after `jobs` were compressed (uncompressed ones whole).
fn wire_ratio(jobs: &[CompressJob<'_>]) -> f64 {
    let (mut input, mut out) = (0usize, 0usize);
    for j in jobs {
        input += j.src.len();
        out += j.out_len.unwrap_or(j.src.len());
    }
    out as f64 / input.max(1) as f64
}

/// Compresses `n` of `inp`'s compressible packets on the GPU and on the CPU engine.
fn ratio_row(
    gpu: &mut CudaEngine,
    size: usize,
    n: usize,
    inp: &Inputs,
) -> Result<RatioRow, CudaError> {
    let n = n.min(inp.text.len());
    let mut dst = vec![vec![0u8; crate::compress_bound(size)]; n];
    let mut jobs = CompressJob::batch(&inp.text[..n], &mut dst);
    gpu.try_compress(&mut jobs, Instant::now() + Duration::from_secs(60))
        .map_err(|p| p.error)?;
    let gpu_ratio = wire_ratio(&jobs);
    CpuEngine.compress(&mut jobs);
    Ok(RatioRow {
        size,
        gpu: gpu_ratio,
        cpu: wire_ratio(&jobs),
    })
}

/// Kernel-only decompression by each decompress kernel, on the same blocks: which one the
/// engine should launch is a matter of speed alone, which only a GPU measures.
#[derive(Clone, Copy, Debug)]
pub struct DecompressorRow {
    /// Packet size, bytes (uncompressed).
    pub size: usize,
    /// Packets per batch.
    pub batch: usize,
    /// `lz4_decompress`, one thread per packet: payload GB/s.
    pub thread_gbps: f64,
    /// `lz4_decompress_warp`, one warp per packet: payload GB/s.
    pub warp_gbps: f64,
}

/// Both decompress kernels on `n` of `inp`'s blocks: the engine's own at `chosen_gbps`
/// (its decompress row, timed on the same blocks), the other timed here; the engine's choice
/// is left as it was.
fn decompressor_row(
    gpu: &mut CudaEngine,
    size: usize,
    n: usize,
    inp: &Inputs,
    reps: usize,
    chosen_gbps: f64,
) -> Result<DecompressorRow, CudaError> {
    let chosen = gpu.decompressor();
    let other = match chosen {
        Lz4Decompressor::Thread => Lz4Decompressor::Warp,
        Lz4Decompressor::Warp => Lz4Decompressor::Thread,
    };
    let mut runs = Runs::new(Op::Decompress, size, n, inp);
    let jobs = DecompressJob::batch(&inp.packed[..n], &mut runs.dst);
    gpu.set_decompressor(other);
    let t = gpu.kernel_time_decompress(&jobs, reps);
    gpu.set_decompressor(chosen);
    let other_gbps = gbps(size * n, t?);
    let (thread_gbps, warp_gbps) = match chosen {
        Lz4Decompressor::Thread => (chosen_gbps, other_gbps),
        Lz4Decompressor::Warp => (other_gbps, chosen_gbps),
    };
    Ok(DecompressorRow {
        size,
        batch: n,
        thread_gbps,
        warp_gbps,
    })
}

/// The checks' default sampling, for the report.
const CHECK_EVERY: u64 = crate::dispatch::Settings::DEFAULT_VERIFY_EVERY;

/// The whole report.
#[derive(Clone, Debug)]
pub struct Report {
    /// GPU name.
    pub device: String,
    /// Pinned host→device copy bandwidth, GB/s.
    pub h2d_gbps: f64,
    /// Pinned device→host copy bandwidth, GB/s.
    pub d2h_gbps: f64,
    /// Host threads the CPU engine ran on.
    pub cpu_threads: usize,
    /// The cells.
    pub rows: Vec<Row>,
    /// Sealing gathered from several workers.
    pub gathered: Vec<GatherRow>,
    /// Small batches' wall times, GPU beside CPU.
    pub latency: Vec<LatencyRow>,
    /// The live check's cost per operation and size.
    pub checks: Vec<CheckRow>,
    /// LZ4 compression, GPU beside CPU, per packet size.
    pub ratios: Vec<RatioRow>,
    /// The two decompress kernels, kernel-only, per packet and batch size.
    pub decompressors: Vec<DecompressorRow>,
    /// The decompress kernel the engine launched for the other rows.
    pub decompressor: Lz4Decompressor,
    /// The kernels as ptxas built them for the device's architecture, or why that is unknown.
    pub kernels: Result<Vec<KernelLine>, String>,
}

/// One kernel's resources (ptxas's report) and what they allow on one multiprocessor.
#[derive(Clone, Debug)]
pub struct KernelLine {
    /// Architecture (`sm_90`).
    pub sm: String,
    /// Registers, shared memory, stack and spills.
    pub resources: crate::cuda::KernelResources,
    /// Threads per block the engine launches it with.
    pub block: u32,
    /// Warps resident per multiprocessor, where the architecture's limits are known.
    pub warps_per_sm: Option<u32>,
}

/// Every kernel's resources built for `sm` (`sm_90`), through NVRTC.
pub fn kernel_lines(sm: &str) -> Result<Vec<KernelLine>, CudaError> {
    let mut out = Vec::new();
    for (file, src) in crate::cuda::sources() {
        for r in crate::cuda::resources(file, &src, sm)? {
            let block = crate::cuda::launch_block(&r.kernel).unwrap_or(32);
            out.push(KernelLine {
                sm: sm.to_owned(),
                warps_per_sm: crate::cuda::SmLimits::of(sm).map(|l| r.resident_warps(block, l)),
                resources: r,
                block,
            });
        }
    }
    Ok(out)
}

/// What [`seal_bursts_on_threads`] measured.
struct Sealed {
    /// Payload bytes sealed.
    bytes: u64,
    elapsed: Duration,
    /// The engines' `offload_stats().fallback_jobs` (0 for the CPU).
    fallbacks: u64,
    /// Payload bytes the engines sealed on the accelerator.
    gpu_bytes: u64,
}

/// Seals `burst`-packet batches of `size` bytes on `threads` threads for `budget`, each
/// thread with the engine `make_engine` gives it.
fn seal_bursts_on_threads(
    threads: usize,
    burst: usize,
    size: usize,
    budget: Duration,
    make_engine: &mut dyn FnMut(usize) -> Box<dyn Engine>,
) -> Sealed {
    let engines: Vec<Box<dyn Engine>> = (0..threads).map(&mut *make_engine).collect();
    let t0 = Instant::now();
    let results: Vec<(u64, u64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = engines
            .into_iter()
            .enumerate()
            .map(|(w, mut e)| {
                scope.spawn(move || {
                    let mut rng = Rng(0x6a7e + w as u64);
                    let key = AeadKey::new(&[u8::try_from(w % 256).unwrap_or(0); 32]);
                    let mut bufs: Vec<Vec<u8>> = (0..burst)
                        .map(|_| {
                            let mut b = vec![0u8; size + TAG_LEN];
                            rng.fill(&mut b[..size]);
                            b
                        })
                        .collect();
                    let (mut bytes, mut counter) = (0u64, 0u64);
                    // At least one burst each, however late the thread first runs.
                    loop {
                        let mut jobs: Vec<SealJob<'_>> = bufs
                            .iter_mut()
                            .map(|buf| {
                                counter += 1;
                                SealJob {
                                    key: &key,
                                    nonce: crate::nonce(counter),
                                    aad: &[0u8; 16],
                                    buf,
                                    len: size,
                                    ok: false,
                                }
                            })
                            .collect();
                        e.seal(&mut jobs);
                        bytes += (size * jobs.iter().filter(|j| j.ok).count()) as u64;
                        if t0.elapsed() >= budget {
                            break;
                        }
                    }
                    let (fallbacks, gpu_bytes) = e
                        .offload_stats()
                        .map_or((0, 0), |s| (s.fallback_jobs, s.bytes[Op::Seal.index()][1]));
                    (bytes, fallbacks, gpu_bytes)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 0, 0)))
            .collect()
    });
    Sealed {
        elapsed: t0.elapsed(),
        bytes: results.iter().map(|r| r.0).sum(),
        fallbacks: results.iter().map(|r| r.1).sum(),
        gpu_bytes: results.iter().map(|r| r.2).sum(),
    }
}

/// Seals bursts as [`seal_bursts_on_threads`] from `w` workers, each through its own
/// dispatcher in `mode` to one gathering thread over `acc`; and the thread's counters.
fn seal_gathered(
    acc: Box<dyn crate::dispatch::Accelerator>,
    mode: crate::dispatch::Mode,
    w: usize,
    burst: usize,
    size: usize,
    budget: Duration,
) -> Result<(Sealed, crate::gather::GatherStats), CudaError> {
    use crate::dispatch::{Dispatcher, Settings};
    use crate::gather::{GatherSettings, Gatherer};
    let (g, clients) =
        Gatherer::start(acc, w, GatherSettings::default()).map_err(CudaError::Thread)?;
    let mut clients = clients.into_iter();
    let settings = Settings {
        mode,
        ..Settings::default()
    };
    let sealed = seal_bursts_on_threads(w, burst, size, budget, &mut |_| {
        let c = clients
            .next()
            .map(|c| Box::new(c) as Box<dyn crate::dispatch::Accelerator>);
        Box::new(Dispatcher::new(c, settings))
    });
    Ok((sealed, g.stats()))
}

/// For each worker count: sealing `burst`-packet batches of `size` bytes from that many
/// threads, each through its own dispatcher to one gathering thread over the accelerator
/// `make` gives, for `budget` — with `offload.gpu = on` (all of each burst on the
/// accelerator) and `auto` (each burst split with the worker's CPU); and the CPU engine on as
/// many threads.
pub fn gathered(
    make: &mut dyn FnMut() -> Result<Box<dyn crate::dispatch::Accelerator>, CudaError>,
    workers: &[usize],
    burst: usize,
    size: usize,
    budget: Duration,
) -> Result<Vec<GatherRow>, CudaError> {
    use crate::dispatch::Mode;
    let mut rows = Vec::with_capacity(workers.len());
    for &w in workers {
        let (on, st) = seal_gathered(make()?, Mode::On, w, burst, size, budget)?;
        let (auto, _) = seal_gathered(make()?, Mode::Auto, w, burst, size, budget)?;
        let cpu = seal_bursts_on_threads(w, burst, size, budget, &mut |_| Box::new(CpuEngine));
        let rate = |s: &Sealed| gbps(usize::try_from(s.bytes).unwrap_or(usize::MAX), s.elapsed);
        rows.push(GatherRow {
            workers: w,
            burst,
            size,
            gathered_gbps: rate(&on),
            mean_gather: st.packets as f64 / st.gathers.max(1) as f64,
            largest: st.largest,
            fallbacks: on.fallbacks + auto.fallbacks,
            auto_gbps: rate(&auto),
            auto_gpu_share: auto.gpu_bytes as f64 / auto.bytes.max(1) as f64,
            cpu_gbps: rate(&cpu),
        });
    }
    Ok(rows)
}

fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64().max(1e-12) / 1e9
}

/// Inputs of one packet size: plaintexts (random), compressible inputs, and their sealed and
/// compressed forms (made by the CPU engine).
struct Inputs {
    keys: Vec<AeadKey>,
    plain: Vec<Vec<u8>>,
    sealed: Vec<Vec<u8>>,
    text: Vec<Vec<u8>>,
    packed: Vec<Vec<u8>>,
    nonces: Vec<[u8; 12]>,
    aad: [u8; 16],
}

impl Inputs {
    fn new(size: usize, n: usize, rng: &mut Rng) -> Self {
        let keys: Vec<AeadKey> = (0..16)
            .map(|_| {
                let mut k = [0u8; 32];
                rng.fill(&mut k);
                AeadKey::new(&k)
            })
            .collect();
        let mut plain = vec![vec![0u8; size + TAG_LEN]; n];
        for p in &mut plain {
            rng.fill(&mut p[..size]);
        }
        let nonces: Vec<[u8; 12]> = (0..n).map(|i| crate::nonce(i as u64)).collect();
        let aad = [7u8; 16];
        let mut sealed = plain.clone();
        {
            let mut jobs = seal_jobs(&keys, &nonces, &aad, &mut sealed, size);
            CpuEngine.seal(&mut jobs);
        }
        let text: Vec<Vec<u8>> = (0..n).map(|_| compressible(rng, size)).collect();
        let packed = text.iter().map(|t| lz4_flex::block::compress(t)).collect();
        Self {
            keys,
            plain,
            sealed,
            text,
            packed,
            nonces,
            aad,
        }
    }
}

fn seal_jobs<'a>(
    keys: &'a [AeadKey],
    nonces: &[[u8; 12]],
    aad: &'a [u8],
    bufs: &'a mut [Vec<u8>],
    size: usize,
) -> Vec<SealJob<'a>> {
    bufs.iter_mut()
        .enumerate()
        .map(|(i, buf)| SealJob {
            key: &keys[i % keys.len()],
            nonce: nonces[i],
            aad,
            buf,
            len: size,
            ok: false,
        })
        .collect()
}

fn open_jobs<'a>(
    keys: &'a [AeadKey],
    nonces: &[[u8; 12]],
    aad: &'a [u8],
    bufs: &'a mut [Vec<u8>],
    size: usize,
) -> Vec<OpenJob<'a>> {
    bufs.iter_mut()
        .enumerate()
        .map(|(i, buf)| OpenJob {
            key: &keys[i % keys.len()],
            nonce: nonces[i],
            aad,
            buf,
            len: size + TAG_LEN,
            ok: false,
        })
        .collect()
}

/// One core checking right results of `op` on 1024 packets of `size` against the CPU engine,
/// for about `budget`: payload GB/s of the check alone (keeping the inputs before the batch,
/// recomputing and comparing after).
fn check_cell(op: Op, size: usize, inp: &Inputs, budget: Duration) -> f64 {
    use crate::dispatch::verify::{Checked, Scratch};
    let n = 1024.min(inp.plain.len());
    let mut s = Scratch::default();
    let mut plain = inp.plain[..n].to_vec();
    let mut sealed = inp.sealed[..n].to_vec();
    let mut dst = vec![vec![0u8; crate::compress_bound(size)]; n];
    let (mut bytes, mut spent) = (0usize, Duration::ZERO);
    let end = Instant::now() + budget;
    loop {
        let wrong = match op {
            Op::Seal => {
                plain.clone_from_slice(&inp.plain[..n]);
                let mut jobs = seal_jobs(&inp.keys, &inp.nonces, &inp.aad, &mut plain, size);
                let t0 = Instant::now();
                SealJob::keep_inputs(&jobs, &mut s);
                spent += t0.elapsed();
                CpuEngine.seal(&mut jobs);
                let t0 = Instant::now();
                let v = SealJob::check_all(&mut jobs, &mut s);
                spent += t0.elapsed();
                v.wrong
            }
            Op::Open => {
                sealed.clone_from_slice(&inp.sealed[..n]);
                let mut jobs = open_jobs(&inp.keys, &inp.nonces, &inp.aad, &mut sealed, size);
                let t0 = Instant::now();
                OpenJob::keep_inputs(&jobs, &mut s);
                spent += t0.elapsed();
                CpuEngine.open(&mut jobs);
                let t0 = Instant::now();
                let v = OpenJob::check_all(&mut jobs, &mut s);
                spent += t0.elapsed();
                v.wrong
            }
            Op::Compress => {
                let mut jobs = CompressJob::batch(&inp.text[..n], &mut dst);
                CpuEngine.compress(&mut jobs);
                let t0 = Instant::now();
                let v = CompressJob::check_all(&mut jobs, &mut s);
                spent += t0.elapsed();
                v.wrong
            }
            Op::Decompress => {
                let mut jobs = DecompressJob::batch(&inp.packed[..n], &mut dst);
                CpuEngine.decompress(&mut jobs);
                let t0 = Instant::now();
                let v = DecompressJob::check_all(&mut jobs, &mut s);
                spent += t0.elapsed();
                v.wrong
            }
        };
        assert_eq!(
            wrong, 0,
            "the check found the CPU engine's own results wrong"
        );
        bytes += n * size;
        if Instant::now() >= end {
            break;
        }
    }
    gbps(bytes, spent)
}

/// The first `n` packets of `inp`, ready to run `op` on again and again: the buffers an
/// open decrypts in place are restored before each run, outside the time measured.
struct Runs<'i> {
    op: Op,
    size: usize,
    inp: &'i Inputs,
    bufs: Vec<Vec<u8>>,
    dst: Vec<Vec<u8>>,
}

impl<'i> Runs<'i> {
    fn new(op: Op, size: usize, n: usize, inp: &'i Inputs) -> Self {
        let bufs = match op {
            Op::Open => inp.sealed[..n].to_vec(),
            _ => inp.plain[..n].to_vec(),
        };
        let dst = vec![vec![0u8; crate::compress_bound(size).max(size)]; n];
        Self {
            op,
            size,
            inp,
            bufs,
            dst,
        }
    }

    /// Runs the batch once through `run`, and how long `run` took (restoring the inputs
    /// first is not counted). Every open must verify.
    fn once(
        &mut self,
        run: &mut dyn FnMut(Batch<'_, '_>) -> Result<(), CudaError>,
    ) -> Result<Duration, CudaError> {
        let (inp, size, n) = (self.inp, self.size, self.bufs.len());
        match self.op {
            Op::Seal => {
                let mut jobs = seal_jobs(&inp.keys, &inp.nonces, &inp.aad, &mut self.bufs, size);
                let t0 = Instant::now();
                run(Batch::Seal(&mut jobs))?;
                Ok(t0.elapsed())
            }
            Op::Open => {
                self.bufs.clone_from_slice(&inp.sealed[..n]);
                let mut jobs = open_jobs(&inp.keys, &inp.nonces, &inp.aad, &mut self.bufs, size);
                let t0 = Instant::now();
                run(Batch::Open(&mut jobs))?;
                let t = t0.elapsed();
                assert!(jobs.iter().all(|j| j.ok), "an open failed in the benchmark");
                Ok(t)
            }
            Op::Compress => {
                let mut jobs = CompressJob::batch(&inp.text[..n], &mut self.dst);
                let t0 = Instant::now();
                run(Batch::Compress(&mut jobs))?;
                Ok(t0.elapsed())
            }
            Op::Decompress => {
                let mut jobs = DecompressJob::batch(&inp.packed[..n], &mut self.dst);
                let t0 = Instant::now();
                run(Batch::Decompress(&mut jobs))?;
                Ok(t0.elapsed())
            }
        }
    }

    /// The median of `reps` runs.
    fn median(
        &mut self,
        reps: usize,
        run: &mut dyn FnMut(Batch<'_, '_>) -> Result<(), CudaError>,
    ) -> Result<Duration, CudaError> {
        let mut t = Vec::with_capacity(reps.max(1));
        for _ in 0..reps.max(1) {
            t.push(self.once(run)?);
        }
        t.sort();
        Ok(t[t.len() / 2])
    }
}

/// Runs a batch on the CUDA engine, end to end (staging, copies, kernels, results).
fn on_gpu(gpu: &mut CudaEngine) -> impl FnMut(Batch<'_, '_>) -> Result<(), CudaError> + '_ {
    let far = || Instant::now() + Duration::from_secs(60);
    move |b| {
        match b {
            Batch::Seal(j) => gpu.try_seal(j, far()),
            Batch::Open(j) => gpu.try_open(j, far()),
            Batch::Compress(j) => gpu.try_compress(j, far()),
            Batch::Decompress(j) => gpu.try_decompress(j, far()),
        }
        .map_err(|p| p.error)
    }
}

/// Runs a batch on the CPU engine.
fn on_cpu(b: Batch<'_, '_>) -> Result<(), CudaError> {
    match b {
        Batch::Seal(j) => CpuEngine.seal(j),
        Batch::Open(j) => CpuEngine.open(j),
        Batch::Compress(j) => CpuEngine.compress(j),
        Batch::Decompress(j) => CpuEngine.decompress(j),
    }
    Ok(())
}

/// One GPU cell: kernel-only and end-to-end GB/s of `op` on `n` packets.
fn gpu_cell(
    gpu: &mut CudaEngine,
    op: Op,
    size: usize,
    n: usize,
    inp: &Inputs,
    reps: usize,
) -> Result<(f64, f64), CudaError> {
    let mut runs = Runs::new(op, size, n, inp);
    let kernel = match op {
        Op::Seal => {
            let jobs = seal_jobs(&inp.keys, &inp.nonces, &inp.aad, &mut runs.bufs, size);
            gpu.kernel_time_seal(&jobs, reps)?
        }
        Op::Open => {
            let jobs = open_jobs(&inp.keys, &inp.nonces, &inp.aad, &mut runs.bufs, size);
            gpu.kernel_time_open(&jobs, reps)?
        }
        Op::Compress => {
            let jobs = CompressJob::batch(&inp.text[..n], &mut runs.dst);
            gpu.kernel_time_compress(&jobs, reps)?
        }
        Op::Decompress => {
            let jobs = DecompressJob::batch(&inp.packed[..n], &mut runs.dst);
            gpu.kernel_time_decompress(&jobs, reps)?
        }
    };
    let e2e = runs.median(reps, &mut on_gpu(gpu))?;
    Ok((gbps(size * n, kernel), gbps(size * n, e2e)))
}

/// The CPU engine on `threads` threads, each working through its own copy of 1024 packets
/// for about `budget`: total payload GB/s (the time the engine runs; restoring the packets an
/// open decrypted is not counted).
fn cpu_cell(op: Op, size: usize, inp: &Inputs, threads: usize, budget: Duration) -> f64 {
    let n = 1024.min(inp.plain.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let mut runs = Runs::new(op, size, n, inp);
                    let (mut done, mut busy) = (0usize, Duration::ZERO);
                    // The clock starts after the set-up, and every thread runs at least one
                    // batch (on a loaded machine a thread may first run after the budget).
                    let t0 = Instant::now();
                    loop {
                        busy += runs.once(&mut on_cpu).unwrap_or_default();
                        done += n * size;
                        if t0.elapsed() >= budget {
                            break;
                        }
                    }
                    (done, busy)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (bytes, t) = h.join().unwrap_or((0, Duration::from_secs(1)));
                gbps(bytes, t)
            })
            .sum()
    })
}

/// Runs the whole benchmark on GPU `device`. `quick` measures fewer repetitions (for tests).
pub fn offload(
    device: u32,
    sizes: &[usize],
    batches: &[usize],
    reps: usize,
) -> Result<Report, CudaError> {
    let max_batch = batches.iter().copied().max().unwrap_or(1024);
    let max_size = sizes.iter().copied().max().unwrap_or(1408);
    let cap = Capacity {
        packets: max_batch,
        bytes: max_batch * (16 + max_size + TAG_LEN).next_multiple_of(16),
    };
    let mut gpu = CudaEngine::new(device, cap)?;
    let device_name = gpu.info().name.clone();
    let kernels =
        kernel_lines(&gpu.info().arch.replace("compute_", "sm_")).map_err(|e| e.to_string());
    let (h2d, d2h) = gpu.copy_bandwidth(256 << 20, 10)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rng = Rng(0x00ff_10ad);
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    let mut ratios = Vec::new();
    let mut decompressors = Vec::new();
    for &size in sizes {
        let inp = Inputs::new(size, max_batch, &mut rng);
        ratios.push(ratio_row(&mut gpu, size, 1024, &inp)?);
        for op in Op::ALL {
            let cpu = cpu_cell(op, size, &inp, threads, Duration::from_millis(300));
            let mut best_e2e_gbps = 0.0f64;
            for &batch in batches {
                let (kernel_gbps, e2e_gbps) = gpu_cell(&mut gpu, op, size, batch, &inp, reps)?;
                best_e2e_gbps = best_e2e_gbps.max(e2e_gbps);
                rows.push(Row {
                    op,
                    size,
                    batch,
                    kernel_gbps,
                    e2e_gbps,
                    cpu_gbps: cpu,
                });
                if op == Op::Decompress {
                    decompressors.push(decompressor_row(
                        &mut gpu,
                        size,
                        batch,
                        &inp,
                        reps,
                        kernel_gbps,
                    )?);
                }
            }
            let budget = Duration::from_millis(if reps >= 5 { 200 } else { 20 });
            checks.push(CheckRow {
                op,
                size,
                check_gbps: check_cell(op, size, &inp, budget),
                best_e2e_gbps,
            });
        }
    }
    let latency = latency_rows(&mut gpu, &mut rng, if reps >= 5 { 201 } else { reps })?;
    let decompressor = gpu.decompressor();
    drop(gpu);
    // Worker-sized bursts (the data plane's 32) of 1408 bytes from 1, 2, 4 … workers.
    let mut workers: Vec<usize> = [1, 2, 4, 8, threads]
        .into_iter()
        .filter(|&w| w <= threads.max(1))
        .collect();
    workers.dedup();
    let budget = Duration::from_millis(if reps >= 5 { 300 } else { 100 });
    let gathered = gathered(
        &mut || {
            CudaEngine::new(device, Capacity::for_batch(1024, 1408))
                .map(|e| Box::new(e) as Box<dyn crate::dispatch::Accelerator>)
        },
        &workers,
        32,
        1408,
        budget,
    )?;
    Ok(Report {
        device: device_name,
        h2d_gbps: h2d / 1e9,
        d2h_gbps: d2h / 1e9,
        cpu_threads: threads,
        rows,
        gathered,
        latency,
        checks,
        ratios,
        decompressors,
        decompressor,
        kernels,
    })
}

/// Every operation on [`LATENCY_BATCHES`] of [`LATENCY_SIZE`]-byte packets, one call at a
/// time on the GPU and on the CPU engine (this thread): medians of `reps`.
fn latency_rows(
    gpu: &mut CudaEngine,
    rng: &mut Rng,
    reps: usize,
) -> Result<Vec<LatencyRow>, CudaError> {
    let most = LATENCY_BATCHES.iter().copied().max().unwrap_or(1);
    let inp = Inputs::new(LATENCY_SIZE, most, rng);
    let mut rows = Vec::new();
    for op in Op::ALL {
        for batch in LATENCY_BATCHES {
            let mut runs = Runs::new(op, LATENCY_SIZE, batch, &inp);
            // One untimed run each first: the first call of a size stages cold memory.
            runs.once(&mut on_gpu(gpu))?;
            runs.once(&mut on_cpu)?;
            rows.push(LatencyRow {
                op,
                size: LATENCY_SIZE,
                batch,
                gpu: runs.median(reps, &mut on_gpu(gpu))?,
                cpu: runs.median(reps, &mut on_cpu)?,
            });
        }
    }
    Ok(rows)
}

/// The CPU engine alone, for a machine without a GPU: per operation and packet size, payload
/// GB/s on one thread and on every host core.
#[derive(Clone, Debug)]
pub struct CpuReport {
    /// Why there are no GPU rows.
    pub why_no_gpu: String,
    /// Host threads of the all-cores column.
    pub threads: usize,
    /// (operation, packet size, one thread GB/s, all threads GB/s, one thread's rate checking
    /// GPU results of this kind against the CPU engine, GB/s).
    pub rows: Vec<(Op, usize, f64, f64, f64)>,
    /// The gathering thread and `auto`'s split with the CPU engine standing in for the GPU:
    /// the mechanism's figures (one worker and the thread make two cores' worth at most).
    pub stand_in: Vec<GatherRow>,
}

/// Measures the CPU engine alone at `sizes`, about `budget` per cell.
pub fn cpu_only(why_no_gpu: String, sizes: &[usize], budget: Duration) -> CpuReport {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rng = Rng(0x00ff_10ad);
    let mut rows = Vec::new();
    for &size in sizes {
        let inp = Inputs::new(size, 1024, &mut rng);
        for op in Op::ALL {
            let one = cpu_cell(op, size, &inp, 1, budget);
            let all = cpu_cell(op, size, &inp, threads, budget);
            let check = check_cell(op, size, &inp, budget);
            rows.push((op, size, one, all, check));
        }
    }
    let mut stand_in = Vec::new();
    for burst in STAND_IN_BURSTS {
        let mut make = || -> Result<Box<dyn crate::dispatch::Accelerator>, CudaError> {
            Ok(Box::new(TestAccelerator::new(Fault::None, Duration::ZERO)))
        };
        // The stand-in cannot fail to start, and seals nothing wrong.
        if let Ok(r) = gathered(&mut make, &[1], burst, 1408, budget) {
            stand_in.extend(r);
        }
    }
    CpuReport {
        why_no_gpu,
        threads,
        rows,
        stand_in,
    }
}

/// Bursts of the stand-in rows: the data plane's, and one where a call's fixed cost matters less.
const STAND_IN_BURSTS: [usize; 2] = [32, 256];

impl CpuReport {
    /// A table for people.
    pub fn table(&self) -> String {
        let mut s = format!(
            "no GPU engine ({}): the CPU engine alone, on 1 and on {} threads, and one thread checking GPU results against it (offload.verify_every)\n{:<10} {:>5} {:>11} {:>11} {:>11}\n",
            self.why_no_gpu, self.threads, "op", "bytes", "cpu-1", "cpu-all", "check-1"
        );
        for &(op, size, one, all, check) in &self.rows {
            let _ = writeln!(
                s,
                "{:<10} {:>5} {:>6.2} GB/s {:>6.2} GB/s {:>6.2} GB/s",
                op.name(),
                size,
                one,
                all,
                check
            );
        }
        if !self.stand_in.is_empty() {
            s.push_str("the CPU engine standing in for the GPU behind the gathering thread (the split's mechanism, not a GPU's figures):\n");
            for r in &self.stand_in {
                s.push_str(&gather_table(std::slice::from_ref(r)));
            }
        }
        s
    }

    /// The same as JSON (`device` null).
    pub fn json(&self) -> String {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|&(op, size, one, all, check)| {
                json!({
                    "op": op.name(),
                    "size": size,
                    "cpu1_gbps": round_to(one, 3),
                    "cpu_gbps": round_to(all, 3),
                    "check1_gbps": round_to(check, 3),
                })
            })
            .collect();
        let v = json!({
            "device": null,
            "why_no_gpu": self.why_no_gpu,
            "cpu_threads": self.threads,
            "cpu_rows": rows,
            "stand_in": gather_json(&self.stand_in),
        });
        format!("{v}\n")
    }
}

impl Report {
    /// The copy ceiling for a transform whose bytes go both ways: the slower direction.
    pub fn copy_ceiling_gbps(&self) -> f64 {
        self.h2d_gbps.min(self.d2h_gbps)
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let mut s = String::new();
        self.device_lines(&mut s);
        self.throughput_lines(&mut s);
        s.push_str(&gather_table(&self.gathered));
        self.small_batch_lines(&mut s);
        self.check_lines(&mut s);
        self.lz4_lines(&mut s);
        s
    }

    /// The device, its copy bandwidth, and each kernel's resources.
    fn device_lines(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "device {}: pinned copies host→device {:.1} GB/s, device→host {:.1} GB/s; CPU engine on {} threads",
            self.device, self.h2d_gbps, self.d2h_gbps, self.cpu_threads
        );
        match &self.kernels {
            Ok(lines) => {
                for k in lines {
                    let r = &k.resources;
                    let _ = writeln!(
                        s,
                        "kernel {:<19} {} block {:>3}: {:>3} registers, {:>5} B shared, {} B spilled, {} warps/SM",
                        r.kernel,
                        k.sm,
                        k.block,
                        r.registers,
                        r.shared_bytes,
                        r.spill_bytes + r.stack_bytes,
                        k.warps_per_sm.map_or("?".to_owned(), |w| w.to_string())
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(s, "kernel resources unknown: {e}");
            }
        }
    }

    /// Kernel and end-to-end rates per operation, size and batch.
    fn throughput_lines(&self, s: &mut String) {
        let ceiling = self.copy_ceiling_gbps();
        let _ = writeln!(
            s,
            "{:<10} {:>5} {:>6} {:>10} {:>9} {:>9} {:>9} {:>8}",
            "op", "bytes", "batch", "kernel", "e2e", "e2e/copy", "cpu-all", "gpu/cpu"
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{:<10} {:>5} {:>6} {:>7.1} GB/s {:>6.1} GB/s {:>8.0}% {:>6.1} GB/s {:>7.2}x",
                r.op.name(),
                r.size,
                r.batch,
                r.kernel_gbps,
                r.e2e_gbps,
                100.0 * r.e2e_gbps / ceiling,
                r.cpu_gbps,
                r.e2e_gbps / r.cpu_gbps.max(1e-9)
            );
        }
    }

    /// Small batches one call at a time, and the burst from which one GPU call keeps pace.
    fn small_batch_lines(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "small batches, one call at a time: the GPU end to end beside the CPU engine on one thread (medians); gpu/cpu = bursts a worker needs in flight for the GPU path to keep pace with its core"
        );
        let _ = writeln!(
            s,
            "{:<10} {:>5} {:>6} {:>10} {:>10} {:>8}",
            "op", "bytes", "batch", "gpu", "cpu", "gpu/cpu"
        );
        for l in &self.latency {
            let _ = writeln!(
                s,
                "{:<10} {:>5} {:>6} {:>7.1} us {:>7.1} us {:>7.1}x",
                l.op.name(),
                l.size,
                l.batch,
                l.gpu.as_secs_f64() * 1e6,
                l.cpu.as_secs_f64() * 1e6,
                l.gpu_over_cpu()
            );
        }
        for op in Op::ALL {
            let line = match break_even_burst(&self.latency, op) {
                Some(b) if b <= 256 => format!(
                    "{}: one GPU call keeps pace with one core from bursts of about {b} (dataplane.burst)",
                    op.name()
                ),
                Some(b) => format!(
                    "{}: one GPU call keeps pace with one core only from bursts of about {b}, past dataplane.burst's 256",
                    op.name()
                ),
                None => format!(
                    "{}: one GPU call never keeps pace with one core (its cost per packet is no lower)",
                    op.name()
                ),
            };
            let _ = writeln!(s, "{line}");
        }
    }

    /// What the live checks of GPU batches cost.
    fn check_lines(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "GPU batches checked against the CPU engine (offload.verify_every), one core; cores the checks take at the GPU's best e2e (1 batch in {CHECK_EVERY} whole, 1 packet of each other {WORKER_BATCH}-packet worker batch)"
        );
        let _ = writeln!(
            s,
            "{:<10} {:>5} {:>10} {:>10} {:>8}",
            "op", "bytes", "check", "best e2e", "cores"
        );
        for c in &self.checks {
            let _ = writeln!(
                s,
                "{:<10} {:>5} {:>5.2} GB/s {:>5.1} GB/s {:>8.3}",
                c.op.name(),
                c.size,
                c.check_gbps,
                c.best_e2e_gbps,
                c.cores(CHECK_EVERY, WORKER_BATCH)
            );
        }
    }

    /// LZ4's wire bytes on both engines, and both decompress kernels.
    fn lz4_lines(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "LZ4 on the same compressible packets (1024 of each size): wire bytes per input byte"
        );
        let _ = writeln!(
            s,
            "{:>5} {:>7} {:>7} {:>8}",
            "bytes", "gpu", "cpu", "gpu/cpu"
        );
        for r in &self.ratios {
            let _ = writeln!(
                s,
                "{:>5} {:>6.1}% {:>6.1}% {:>7.2}x",
                r.size,
                100.0 * r.gpu,
                100.0 * r.cpu,
                r.gpu / r.cpu.max(1e-9)
            );
        }
        let _ = writeln!(
            s,
            "LZ4 decompress kernels, kernel-only on the same blocks (the rows above ran {})",
            self.decompressor.kernel()
        );
        let _ = writeln!(
            s,
            "{:>5} {:>6} {:>15} {:>15} {:>12}",
            "bytes", "batch", "thread/packet", "warp/packet", "warp/thread"
        );
        for d in &self.decompressors {
            let _ = writeln!(
                s,
                "{:>5} {:>6} {:>10.1} GB/s {:>10.1} GB/s {:>11.2}x",
                d.size,
                d.batch,
                d.thread_gbps,
                d.warp_gbps,
                d.warp_gbps / d.thread_gbps.max(1e-9)
            );
        }
    }

    /// The same as JSON.
    pub fn json(&self) -> String {
        let ceiling = self.copy_ceiling_gbps();
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "op": r.op.name(),
                    "size": r.size,
                    "batch": r.batch,
                    "kernel_gbps": round_to(r.kernel_gbps, 3),
                    "e2e_gbps": round_to(r.e2e_gbps, 3),
                    "e2e_over_copy": round_to(r.e2e_gbps / ceiling, 3),
                    "cpu_gbps": round_to(r.cpu_gbps, 3),
                })
            })
            .collect();
        let kernels: Vec<Value> = self
            .kernels
            .iter()
            .flatten()
            .map(|k| {
                let r = &k.resources;
                json!({
                    "kernel": r.kernel,
                    "sm": k.sm,
                    "block": k.block,
                    "registers": r.registers,
                    "shared_bytes": r.shared_bytes,
                    "spill_bytes": r.spill_bytes,
                    "stack_bytes": r.stack_bytes,
                    "warps_per_sm": k.warps_per_sm,
                })
            })
            .collect();
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| {
                json!({
                    "op": c.op.name(),
                    "size": c.size,
                    "check_gbps": round_to(c.check_gbps, 3),
                    "best_e2e_gbps": round_to(c.best_e2e_gbps, 3),
                    "every": CHECK_EVERY,
                    "worker_batch": WORKER_BATCH,
                    "cores": round_to(c.cores(CHECK_EVERY, WORKER_BATCH), 4),
                })
            })
            .collect();
        let compression: Vec<Value> = self
            .ratios
            .iter()
            .map(|r| {
                json!({
                    "size": r.size,
                    "gpu_ratio": round_to(r.gpu, 4),
                    "cpu_ratio": round_to(r.cpu, 4),
                })
            })
            .collect();
        let decompressors: Vec<Value> = self
            .decompressors
            .iter()
            .map(|d| {
                json!({
                    "size": d.size,
                    "batch": d.batch,
                    "thread_gbps": round_to(d.thread_gbps, 3),
                    "warp_gbps": round_to(d.warp_gbps, 3),
                })
            })
            .collect();
        let latency: Vec<Value> = self
            .latency
            .iter()
            .map(|l| {
                json!({
                    "op": l.op.name(),
                    "size": l.size,
                    "batch": l.batch,
                    "gpu_us": round_to(l.gpu.as_secs_f64() * 1e6, 2),
                    "cpu_us": round_to(l.cpu.as_secs_f64() * 1e6, 2),
                })
            })
            .collect();
        let break_even: serde_json::Map<String, Value> = Op::ALL
            .into_iter()
            .map(|op| {
                (
                    op.name().to_owned(),
                    json!(break_even_burst(&self.latency, op)),
                )
            })
            .collect();
        let v = json!({
            "device": self.device,
            "h2d_gbps": round_to(self.h2d_gbps, 3),
            "d2h_gbps": round_to(self.d2h_gbps, 3),
            "cpu_threads": self.cpu_threads,
            "rows": rows,
            "kernels": kernels,
            "checks": checks,
            "compression": compression,
            "decompressor": self.decompressor.kernel(),
            "decompressors": decompressors,
            "latency": latency,
            "break_even_burst": break_even,
            "gathered": gather_json(&self.gathered),
        });
        format!("{v}\n")
    }
}

/// The gathered rows as a JSON array.
fn gather_json(rows: &[GatherRow]) -> Value {
    rows.iter()
        .map(|g| {
            json!({
                "workers": g.workers,
                "burst": g.burst,
                "size": g.size,
                "gathered_gbps": round_to(g.gathered_gbps, 3),
                "mean_gather": round_to(g.mean_gather, 1),
                "largest": g.largest,
                "fallbacks": g.fallbacks,
                "auto_gbps": round_to(g.auto_gbps, 3),
                "auto_gpu_share": round_to(g.auto_gpu_share, 4),
                "cpu_gbps": round_to(g.cpu_gbps, 3),
            })
        })
        .collect()
}

/// `x` rounded to `places` decimals, for the JSON (a figure that is not finite becomes null).
fn round_to(x: f64, places: i32) -> f64 {
    let p = 10f64.powi(places);
    (x * p).round() / p
}

/// The gathered rows as a table for people.
pub fn gather_table(rows: &[GatherRow]) -> String {
    let mut s = String::new();
    let Some(first) = rows.first() else {
        return s;
    };
    let _ = writeln!(
        s,
        "seal gathered from workers (bursts of {}, {} B): offload.gpu = on, and auto (each burst split between the worker's CPU and the GPU), vs the CPU engine on as many threads",
        first.burst, first.size
    );
    let _ = writeln!(
        s,
        "{:>7} {:>14} {:>12} {:>8} {:>10} {:>14} {:>9} {:>14} {:>8} {:>9}",
        "workers",
        "on",
        "mean gather",
        "largest",
        "fallbacks",
        "auto",
        "gpu share",
        "cpu",
        "on/cpu",
        "auto/cpu"
    );
    for g in rows {
        let _ = writeln!(
            s,
            "{:>7} {:>9.2} GB/s {:>12.1} {:>8} {:>10} {:>9.2} GB/s {:>8.0}% {:>9.2} GB/s {:>7.2}x {:>8.2}x",
            g.workers,
            g.gathered_gbps,
            g.mean_gather,
            g.largest,
            g.fallbacks,
            g.auto_gbps,
            100.0 * g.auto_gpu_share,
            g.cpu_gbps,
            g.gathered_gbps / g.cpu_gbps.max(1e-9),
            g.auto_gbps / g.cpu_gbps.max(1e-9)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gathered measurement's mechanics with a CPU stand-in for the GPU (its figures say
    /// nothing about a GPU): every burst sealed, bursts from two workers gathered together.
    #[test]
    fn the_break_even_burst_follows_the_fixed_cost_and_the_costs_per_packet() {
        let us = |x: f64| Duration::from_secs_f64(x * 1e-6);
        // GPU: 20 µs per call plus 0.1 µs per packet; CPU: 0.25 µs per packet.
        let rows = |per_gpu: f64| -> Vec<LatencyRow> {
            [1usize, 32, 256]
                .map(|b| LatencyRow {
                    op: Op::Seal,
                    size: 1408,
                    batch: b,
                    gpu: us(20.0 + per_gpu * b as f64),
                    cpu: us(0.25 * b as f64),
                })
                .to_vec()
        };
        // 20 / (0.25 - 0.1) = 133.3: bursts of 134.
        assert_eq!(break_even_burst(&rows(0.1), Op::Seal), Some(134));
        // A GPU no cheaper per packet never pays, and an operation with no rows says nothing.
        assert_eq!(break_even_burst(&rows(0.25), Op::Seal), None);
        assert_eq!(break_even_burst(&rows(0.1), Op::Open), None);
        // No fixed cost: from the first packet.
        let free: Vec<LatencyRow> = rows(0.1)
            .into_iter()
            .map(|mut r| {
                r.gpu = us(0.1 * r.batch as f64);
                r
            })
            .collect();
        assert_eq!(break_even_burst(&free, Op::Seal), Some(1));
    }

    #[test]
    fn gathered_rows_measure_through_the_gathering_thread() {
        let rows = gathered(
            &mut || Ok(Box::new(TestAccelerator::new(Fault::None, Duration::ZERO))),
            &[1, 2],
            32,
            512,
            Duration::from_millis(60),
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert!(r.gathered_gbps > 0.0 && r.cpu_gbps > 0.0, "{r:?}");
            assert!(r.auto_gbps > 0.0, "{r:?}");
            assert!((0.0..=1.0).contains(&r.auto_gpu_share), "{r:?}");
            assert_eq!(r.fallbacks, 0, "{r:?}");
        }
        assert!((rows[0].mean_gather - 32.0).abs() < 1e-9, "{:?}", rows[0]);
        assert!(rows[1].largest >= 32, "{:?}", rows[1]);
        let t = gather_table(&rows);
        assert!(t.contains("workers") && t.contains("auto/cpu"), "{t}");
        assert_eq!(t.lines().count(), 4, "{t}");
    }

    /// Without a GPU the CPU engine's rows are still measured: every operation at every size,
    /// on one thread and on all, in the table and the JSON.
    #[test]
    fn the_cpu_report_measures_every_operation_and_size() {
        let r = cpu_only("no driver".into(), &[64, 1408], Duration::from_millis(20));
        assert_eq!(r.rows.len(), 8);
        for &(op, size, one, all, check) in &r.rows {
            assert!(
                one > 0.0 && all > 0.0 && check > 0.0,
                "{} {size}: {one} {all} {check}",
                op.name()
            );
        }
        let t = r.table();
        assert!(t.starts_with("no GPU engine (no driver)"), "{t}");
        // Two lines of head, eight rows, then the stand-in: a line, and per burst two of head
        // and a row.
        assert_eq!(t.lines().count(), 2 + 8 + 1 + 2 * 3, "{t}");
        assert_eq!(r.stand_in.len(), 2);
        for g in &r.stand_in {
            assert!(g.gathered_gbps > 0.0 && g.auto_gbps > 0.0, "{g:?}");
            assert_eq!(g.fallbacks, 0, "{g:?}");
        }
        let j = r.json();
        assert!(j.starts_with("{\"device\":null,"), "{j}");
        assert_eq!(j.matches("\"op\":").count(), 8, "{j}");
        assert!(
            j.contains("],\"stand_in\":[{\"workers\":1,\"burst\":32,"),
            "{j}"
        );
        assert!(j.ends_with("}]}\n"), "{j}");
        // JSON a parser reads back, whatever a driver's message holds (quotes, controls).
        let odd = "libcuda says \"no\"\u{1b}[0m \u{7}".to_owned();
        let r = CpuReport {
            why_no_gpu: odd.clone(),
            ..r
        };
        let back: Value = serde_json::from_str(&r.json()).expect("valid JSON");
        assert_eq!(back["why_no_gpu"], odd.as_str());
        assert_eq!(back["cpu_rows"][7]["op"], "decompress");
        assert_eq!(back["cpu_rows"][7]["size"], 1408);
    }
}
