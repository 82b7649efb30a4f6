//! The CUDA engine: the `.cu` sources in `kernels/cuda/`, embedded here, compiled by NVRTC at
//! start-up and run through `cudarc` with dynamic loading, so a binary built here runs on
//! machines with no CUDA at all (and says so through [`CudaError`]).
//!
//! A batch is cut into chunks that alternate between two lanes; each lane has its own stream,
//! pinned host staging and device buffers, all allocated once. While one lane's chunk is copied
//! and run, the host packs the next chunk into the other lane and unpacks the last one, so
//! copies, kernels and host work overlap. Descriptors are structure-of-arrays. A chunk's results
//! reach the jobs only once the whole chunk succeeded, and chunks finish in order: on an error
//! the caller learns how many jobs are complete and the rest are untouched.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::sys::{CUdeviceptr, CUevent_flags};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaStream, DriverError, LaunchConfig, result,
};

use crate::cpu::CpuEngine;
use crate::{CompressJob, DecompressJob, Engine, OpenJob, SealJob, TAG_LEN};

mod compile;
mod driver;
mod memory;
mod staging;

pub use compile::*;
pub use driver::*;
use memory::*;
use staging::*;

/// Bytes of per-key material the GCM kernels keep (`struct GcmKey`).
const GCM_KEY_BYTES: usize = 768;
/// `LZ4_NONE` in `lz4.cu`.
const LZ4_NONE: u32 = u32::MAX;

/// Why the CUDA engine is not available or failed.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No `libcuda.so`: no NVIDIA driver.
    #[error("no NVIDIA driver library (libcuda.so) on this machine")]
    NoDriver,
    /// This binary is statically linked: glibc's `dlopen` from a static binary cannot run
    /// NVRTC or the driver library (NVRTC crashed in such a build; decision 0014).
    #[error(
        "this binary is statically linked and cannot load the CUDA libraries (build it against glibc, as `dwcp image build` does)"
    )]
    StaticBuild,
    /// The driver library `DWCP_LIBCUDA` names did not load.
    #[error("{0}")]
    DriverLibrary(#[from] DriverLoadError),
    /// No `libnvrtc.so`.
    #[error("no NVRTC library (libnvrtc.so.13 or .12) on this machine or in LD_LIBRARY_PATH")]
    NoNvrtc,
    /// The driver has no such device.
    #[error("no CUDA device {index} (the driver sees {count})")]
    NoDevice {
        /// Asked for.
        index: u32,
        /// Present.
        count: i32,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    /// A thread the engine needs (the gathering thread) did not start.
    #[error("could not start a thread: {0}")]
    Thread(#[source] std::io::Error),
    /// NVRTC rejected a source.
    #[error("NVRTC could not compile {file}: {log}")]
    Compile {
        /// Which source.
        file: &'static str,
        /// NVRTC's log.
        log: String,
    },
    /// An earlier batch was abandoned; [`CudaEngine::recover`] must succeed first.
    #[error("an abandoned batch may still be running; the engine needs recovery")]
    NeedsRecovery,
    /// A job does not fit an empty lane: the jobs before it are complete, it and the rest
    /// are untouched, and the engine is ready for its next batch.
    #[error("a packet larger than the engine's staging lanes")]
    TooBig,
    /// A batch did not finish by its deadline.
    #[error("batch still running after {0:?}")]
    Timeout(Duration),
}

/// The batch operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// AES-256-GCM seal.
    Seal,
    /// AES-256-GCM open.
    Open,
    /// LZ4 block compress.
    Compress,
    /// LZ4 block decompress.
    Decompress,
}

impl Op {
    /// All four, in report order.
    pub const ALL: [Op; 4] = [Op::Seal, Op::Open, Op::Compress, Op::Decompress];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Seal => "seal",
            Op::Open => "open",
            Op::Compress => "compress",
            Op::Decompress => "decompress",
        }
    }

    /// Index into per-operation arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Sizes the engine's buffers: each of the two lanes holds `packets` packets and `bytes` bytes
/// of staged records (a record is AAD + payload + tag, rounded up to 16).
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    /// Packets per lane.
    pub packets: usize,
    /// Staged bytes per lane.
    pub bytes: usize,
}

impl Capacity {
    /// Room for a batch of `max_batch` packets of up to `max_packet` bytes, split over the two
    /// lanes.
    pub fn for_batch(max_batch: usize, max_packet: usize) -> Self {
        let packets = max_batch.div_ceil(2).max(1);
        Self {
            packets,
            bytes: packets * record_len(64, max_packet),
        }
    }
}

/// Which kernel decompresses LZ4: both give the same output and the same refusals, so the
/// choice is speed alone, which only a GPU measures (`dwcp bench offload` times both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lz4Decompressor {
    /// `lz4_decompress`: one thread per packet.
    Thread,
    /// `lz4_decompress_warp`: one warp per packet (the default).
    #[default]
    Warp,
}

impl Lz4Decompressor {
    /// Both, in report order.
    pub const ALL: [Lz4Decompressor; 2] = [Lz4Decompressor::Thread, Lz4Decompressor::Warp];

    /// The kernel's name.
    pub fn kernel(self) -> &'static str {
        match self {
            Lz4Decompressor::Thread => "lz4_decompress",
            Lz4Decompressor::Warp => "lz4_decompress_warp",
        }
    }
}

struct Functions {
    key_setup: CudaFunction,
    seal: CudaFunction,
    open: CudaFunction,
    compress: CudaFunction,
    decompress_thread: CudaFunction,
    decompress_warp: CudaFunction,
    /// The one decompress launches.
    decompressor: Lz4Decompressor,
}

/// Per-batch key de-duplication: key id → slot in the batch's key table, in a fixed table
/// cleared by generation (no allocation per batch).
struct KeyMap {
    ids: Vec<u64>,
    slots: Vec<u32>,
    gens: Vec<u32>,
    gen_now: u32,
}

impl KeyMap {
    fn new(capacity: usize) -> Self {
        let n = (capacity * 2).next_power_of_two().max(16);
        Self {
            ids: vec![0; n],
            slots: vec![0; n],
            gens: vec![0; n],
            gen_now: 1,
        }
    }

    fn reset(&mut self) {
        self.gen_now = self.gen_now.wrapping_add(1);
        if self.gen_now == 0 {
            self.gens.fill(0);
            self.gen_now = 1;
        }
    }

    /// The slot of `id`, and whether it is new in this batch.
    fn slot(&mut self, id: u64, next: u32) -> (u32, bool) {
        let mask = self.ids.len() - 1;
        let mut i = usize::try_from(id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40).unwrap_or(0);
        loop {
            i &= mask;
            if self.gens[i] != self.gen_now {
                self.gens[i] = self.gen_now;
                self.ids[i] = id;
                self.slots[i] = next;
                return (next, true);
            }
            if self.ids[i] == id {
                return (self.slots[i], false);
            }
            i += 1;
        }
    }
}

/// The CUDA batch engine.
pub struct CudaEngine {
    ctx: Arc<CudaContext>,
    f: Functions,
    lanes: [Lane; 2],
    cap: Capacity,
    keymap: KeyMap,
    info: DeviceInfo,
    /// Set when a batch was abandoned while the device may still write into a lane; cleared
    /// by [`CudaEngine::recover`].
    dirty: bool,
    failures: u64,
    last_error: Option<String>,
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl CudaEngine {
    /// Opens device `index`, compiles the kernels and allocates every buffer.
    pub fn new(index: u32, cap: Capacity) -> Result<Self, CudaError> {
        if STATIC_BUILD {
            return Err(CudaError::StaticBuild);
        }
        driver_from_env()?;
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        if ensure_nvrtc().is_none() {
            return Err(CudaError::NoNvrtc);
        }
        result::init()?;
        let count = CudaContext::device_count()?;
        if i64::from(index) >= i64::from(count) {
            return Err(CudaError::NoDevice { index, count });
        }
        let ctx = CudaContext::new(usize::try_from(index).unwrap_or(0))?;
        // SAFETY: the engine orders all work itself (per-lane streams, explicit
        // synchronisation) and uses raw device pointers, not cudarc's tracked slices.
        unsafe { ctx.disable_event_tracking() };
        let cc = ctx.compute_capability()?;
        let arch = arch_for(cc.0, cc.1);
        let info = DeviceInfo {
            name: ctx.name()?,
            compute_capability: cc,
            multiprocessors: u32::try_from(ctx.attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )?)
            .unwrap_or(1),
            memory_total: u64::try_from(ctx.total_mem()?).unwrap_or(0),
            pci_bus_id: pci_bus_id(&ctx)?,
            arch,
            driver_cuda: driver_cuda_version(),
            nvrtc: nvrtc_version(),
        };
        let [(gcm_name, gcm_src), (lz4_name, lz4_src)] = sources();
        let gcm = ctx.load_module(cudarc::nvrtc::Ptx::from_src(compile(
            gcm_name, &gcm_src, arch,
        )?))?;
        let lz4 = ctx.load_module(cudarc::nvrtc::Ptx::from_src(compile(
            lz4_name, &lz4_src, arch,
        )?))?;
        let f = Functions {
            key_setup: gcm.load_function("gcm_key_setup")?,
            seal: gcm.load_function("gcm_seal")?,
            open: gcm.load_function("gcm_open")?,
            compress: lz4.load_function("lz4_compress")?,
            decompress_thread: lz4.load_function(Lz4Decompressor::Thread.kernel())?,
            decompress_warp: lz4.load_function(Lz4Decompressor::Warp.kernel())?,
            decompressor: Lz4Decompressor::default(),
        };
        let lanes = [Self::lane(&ctx, cap)?, Self::lane(&ctx, cap)?];
        Ok(Self {
            ctx,
            f,
            lanes,
            cap,
            keymap: KeyMap::new(cap.packets),
            info,
            dirty: false,
            failures: 0,
            last_error: None,
        })
    }

    fn lane(ctx: &Arc<CudaContext>, cap: Capacity) -> Result<Lane, DriverError> {
        let (p, b) = (cap.packets, cap.bytes);
        let stream = ctx.new_stream()?;
        ctx.bind_to_thread()?;
        Ok(Lane {
            stream,
            host: HostStage {
                data: Pinned::new(b)?,
                dst: Pinned::new(b)?,
                a: Pinned::new(p)?,
                b: Pinned::new(p)?,
                c: Pinned::new(p)?,
                d: Pinned::new(p)?,
                out: Pinned::new(p)?,
                ok: Pinned::new(p)?,
                nonces: Pinned::new(12 * p)?,
                keys_raw: Pinned::new(32 * p)?,
                refused: vec![false; p],
            },
            dev: DeviceStage {
                data: DeviceBuf::new(b)?,
                dst: DeviceBuf::new(b)?,
                a: DeviceBuf::new(4 * p)?,
                b: DeviceBuf::new(4 * p)?,
                c: DeviceBuf::new(4 * p)?,
                d: DeviceBuf::new(4 * p)?,
                out: DeviceBuf::new(4 * p)?,
                ok: DeviceBuf::new(p)?,
                nonces: DeviceBuf::new(12 * p)?,
                keys_raw: DeviceBuf::new(32 * p)?,
                keys: DeviceBuf::new(GCM_KEY_BYTES * p)?,
            },
            pending: None,
            start: ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?,
            stop: ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?,
        })
    }

    /// The device this engine runs on.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Which kernel decompresses from now on.
    pub fn set_decompressor(&mut self, d: Lz4Decompressor) {
        self.f.decompressor = d;
    }

    /// The kernel that decompresses.
    pub fn decompressor(&self) -> Lz4Decompressor {
        self.f.decompressor
    }

    /// Free and total device memory now, bytes.
    pub fn memory(&self) -> Result<(u64, u64), CudaError> {
        let (free, total) = self.ctx.mem_get_info()?;
        Ok((
            u64::try_from(free).unwrap_or(0),
            u64::try_from(total).unwrap_or(0),
        ))
    }

    /// The per-lane capacity.
    pub fn capacity(&self) -> Capacity {
        self.cap
    }

    /// Waits for both lanes and forgets what they held; after a time-out this makes the
    /// engine usable again (the health probe calls it).
    pub fn recover(&mut self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread()?;
        for lane in &mut self.lanes {
            lane.stream.synchronize()?;
            lane.pending = None;
        }
        self.dirty = false;
        Ok(())
    }

    /// Whether a batch was abandoned and [`CudaEngine::recover`] has not yet succeeded.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Seals every job; on error, `jobs[..done]` are sealed and the rest untouched.
    pub fn try_seal(&mut self, jobs: &mut [SealJob<'_>], deadline: Instant) -> Result<(), Partial> {
        self.drive(jobs, deadline, Op::Seal, stage_aead, unstage_seal)
    }

    /// Opens every job; on error, `jobs[..done]` are complete and the rest untouched.
    pub fn try_open(&mut self, jobs: &mut [OpenJob<'_>], deadline: Instant) -> Result<(), Partial> {
        self.drive(jobs, deadline, Op::Open, stage_aead, unstage_open)
    }

    /// Compresses every job; on error, `jobs[..done]` are complete and the rest untouched.
    pub fn try_compress(
        &mut self,
        jobs: &mut [CompressJob<'_>],
        deadline: Instant,
    ) -> Result<(), Partial> {
        self.drive(
            jobs,
            deadline,
            Op::Compress,
            stage_compress,
            unstage_compress,
        )
    }

    /// Decompresses every job; on error, `jobs[..done]` are complete and the rest untouched.
    pub fn try_decompress(
        &mut self,
        jobs: &mut [DecompressJob<'_>],
        deadline: Instant,
    ) -> Result<(), Partial> {
        self.drive(
            jobs,
            deadline,
            Op::Decompress,
            stage_decompress,
            unstage_decompress,
        )
    }

    /// The chunk loop shared by the four operations.
    fn drive<J>(
        &mut self,
        jobs: &mut [J],
        deadline: Instant,
        op: Op,
        stage: fn(&mut HostStage, &mut KeyMap, Capacity, &[J], usize, usize) -> Chunk,
        unstage: fn(&HostStage, &Chunk, &mut [J]),
    ) -> Result<(), Partial> {
        let fail = |done: usize, error: CudaError| Partial { done, error };
        if self.dirty {
            return Err(fail(0, CudaError::NeedsRecovery));
        }
        self.ctx.bind_to_thread().map_err(|e| fail(0, e.into()))?;
        // At least two chunks when the batch is big enough, so the lanes overlap.
        let per_chunk = if jobs.len() >= 512 {
            jobs.len().div_ceil(2).min(self.cap.packets)
        } else {
            self.cap.packets
        };
        let mut done = 0;
        let mut next = 0;
        let mut which = 0;
        while next < jobs.len() || self.lanes.iter().any(|l| l.pending.is_some()) {
            let lane = &mut self.lanes[which];
            match finish(lane, deadline, unstage, jobs) {
                Ok(end) => done = end.unwrap_or(done),
                Err(e) => {
                    self.dirty = true;
                    return Err(fail(done, e));
                }
            }
            if next < jobs.len() {
                let chunk = stage(
                    &mut lane.host,
                    &mut self.keymap,
                    self.cap,
                    jobs,
                    next,
                    per_chunk,
                );
                if chunk.n == 0 {
                    // A job bigger than a whole lane (not with the sizes Capacity::for_batch
                    // was given). Finish the chunk still in the other lane, so that every job
                    // before this one is complete and no work is left on the device, and
                    // decline the rest: the engine stays ready for its next batch.
                    return match finish(&mut self.lanes[which ^ 1], deadline, unstage, jobs) {
                        Ok(end) => Err(fail(end.unwrap_or(done), CudaError::TooBig)),
                        Err(e) => {
                            self.dirty = true;
                            Err(fail(done, e))
                        }
                    };
                }
                if let Err(e) = launch(&self.f, &self.info, lane, op, &chunk) {
                    self.dirty = true;
                    return Err(fail(done, e.into()));
                }
                next += chunk.n;
                lane.pending = Some(chunk);
            }
            which ^= 1;
        }
        Ok(())
    }

    /// Kernel-only time of sealing `jobs` (which must fit one lane): the median of `reps`.
    pub fn kernel_time_seal(
        &mut self,
        jobs: &[SealJob<'_>],
        reps: usize,
    ) -> Result<Duration, CudaError> {
        self.time_kernel(Op::Seal, jobs, reps, stage_aead)
    }

    /// Kernel-only time of opening `jobs`.
    pub fn kernel_time_open(
        &mut self,
        jobs: &[OpenJob<'_>],
        reps: usize,
    ) -> Result<Duration, CudaError> {
        self.time_kernel(Op::Open, jobs, reps, stage_aead)
    }

    /// Kernel-only time of compressing `jobs`.
    pub fn kernel_time_compress(
        &mut self,
        jobs: &[CompressJob<'_>],
        reps: usize,
    ) -> Result<Duration, CudaError> {
        self.time_kernel(Op::Compress, jobs, reps, stage_compress)
    }

    /// Kernel-only time of decompressing `jobs`.
    pub fn kernel_time_decompress(
        &mut self,
        jobs: &[DecompressJob<'_>],
        reps: usize,
    ) -> Result<Duration, CudaError> {
        self.time_kernel(Op::Decompress, jobs, reps, stage_decompress)
    }

    /// Kernel-only timing: stages `jobs` (which must fit one lane) once, then `reps` times
    /// copies them in (untimed) and times the kernels alone with events. The median.
    fn time_kernel<J>(
        &mut self,
        op: Op,
        jobs: &[J],
        reps: usize,
        stage: fn(&mut HostStage, &mut KeyMap, Capacity, &[J], usize, usize) -> Chunk,
    ) -> Result<Duration, CudaError> {
        self.ctx.bind_to_thread()?;
        let lane = &mut self.lanes[0];
        let chunk = stage(
            &mut lane.host,
            &mut self.keymap,
            self.cap,
            jobs,
            0,
            jobs.len(),
        );
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            copy_in(lane, op, &chunk)?;
            lane.start.record(&lane.stream)?;
            run_kernels(&self.f, &self.info, lane, op, &chunk)?;
            lane.stop.record(&lane.stream)?;
            lane.stream.synchronize()?;
            let ms = event_elapsed_ms(&lane.start, &lane.stop)?;
            times.push(Duration::from_secs_f64(f64::from(ms) / 1e3));
        }
        times.sort();
        Ok(times.get(times.len() / 2).copied().unwrap_or_default())
    }

    /// Pinned host→device and device→host copy bandwidth over `bytes` (at most one lane's
    /// capacity), bytes per second, the median of `reps` timed copies each way.
    pub fn copy_bandwidth(&mut self, bytes: usize, reps: usize) -> Result<(f64, f64), CudaError> {
        self.ctx.bind_to_thread()?;
        let lane = &mut self.lanes[0];
        let n = bytes.min(lane.host.data.len);
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            lane.start.record(&lane.stream)?;
            // SAFETY: copies within both allocations (n ≤ their length) on this lane's stream;
            // the stream is synchronised before the buffers are touched again.
            unsafe {
                result::memcpy_htod_async(
                    lane.dev.data.ptr,
                    &lane.host.data.as_slice()[..n],
                    lane.stream.cu_stream(),
                )
            }?;
            lane.stop.record(&lane.stream)?;
            lane.stream.synchronize()?;
            up.push(f64::from(event_elapsed_ms(&lane.start, &lane.stop)?));
            lane.start.record(&lane.stream)?;
            // SAFETY: as above, device to host.
            unsafe {
                result::memcpy_dtoh_async(
                    &mut lane.host.data.as_mut_slice()[..n],
                    lane.dev.data.ptr,
                    lane.stream.cu_stream(),
                )
            }?;
            lane.stop.record(&lane.stream)?;
            lane.stream.synchronize()?;
            down.push(f64::from(event_elapsed_ms(&lane.start, &lane.stop)?));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let bps = |ms: f64| n as f64 / (ms / 1e3);
        Ok((bps(median(&mut up)), bps(median(&mut down))))
    }
}

/// The plain [`Engine`] face of the CUDA engine, for tests and benchmarks: a failed batch is
/// finished on the CPU (never lost or run twice) and counted in [`CudaEngine::failures`].
/// The data plane goes through the dispatcher instead, which also tracks health.
impl Engine for CudaEngine {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn seal(&mut self, jobs: &mut [SealJob<'_>]) {
        if let Err(p) = self.try_seal(jobs, far()) {
            self.failed(&p);
            CpuEngine.seal(&mut jobs[p.done..]);
        }
    }

    fn open(&mut self, jobs: &mut [OpenJob<'_>]) {
        if let Err(p) = self.try_open(jobs, far()) {
            self.failed(&p);
            CpuEngine.open(&mut jobs[p.done..]);
        }
    }

    fn compress(&mut self, jobs: &mut [CompressJob<'_>]) {
        if let Err(p) = self.try_compress(jobs, far()) {
            self.failed(&p);
            CpuEngine.compress(&mut jobs[p.done..]);
        }
    }

    fn decompress(&mut self, jobs: &mut [DecompressJob<'_>]) {
        if let Err(p) = self.try_decompress(jobs, far()) {
            self.failed(&p);
            CpuEngine.decompress(&mut jobs[p.done..]);
        }
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

impl CudaEngine {
    fn failed(&mut self, p: &Partial) {
        self.failures += 1;
        self.last_error = Some(p.error.to_string());
        let _ = self.recover();
    }

    /// Batches that failed on the GPU through the [`Engine`] face, and the last error.
    pub fn failures(&self) -> (u64, Option<&str>) {
        (self.failures, self.last_error.as_deref())
    }
}

impl Drop for CudaEngine {
    fn drop(&mut self) {
        for lane in &self.lanes {
            let _ = lane.stream.synchronize();
        }
    }
}

/// A failed batch: how many leading jobs are complete, and why the rest are not.
#[derive(Debug)]
pub struct Partial {
    /// `jobs[..done]` are complete; the rest were not touched.
    pub done: usize,
    /// What went wrong.
    pub error: CudaError,
}

/// Waits for the chunk `lane` holds, if any, until `deadline` and hands its results to its
/// jobs; the index past its last job.
fn finish<J>(
    lane: &mut Lane,
    deadline: Instant,
    unstage: fn(&HostStage, &Chunk, &mut [J]),
    jobs: &mut [J],
) -> Result<Option<usize>, CudaError> {
    let Some(chunk) = lane.pending.take() else {
        return Ok(None);
    };
    wait(&lane.stream, deadline)?;
    unstage(
        &lane.host,
        &chunk,
        &mut jobs[chunk.start..chunk.start + chunk.n],
    );
    Ok(Some(chunk.start + chunk.n))
}

/// Waits for `stream` until `deadline`.
fn wait(stream: &CudaStream, deadline: Instant) -> Result<(), CudaError> {
    loop {
        // SAFETY: queries a live stream of this engine's context (bound by the caller).
        match unsafe { cudarc::driver::sys::cuStreamQuery(stream.cu_stream()) } {
            cudarc::driver::sys::CUresult::CUDA_SUCCESS => return Ok(()),
            cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_READY => {}
            other => return Err(CudaError::Driver(DriverError(other))),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(CudaError::Timeout(now.saturating_duration_since(deadline)));
        }
        std::hint::spin_loop();
    }
}

fn grid(info: &DeviceInfo, items: usize, per_block: usize, blocks_per_sm: u32) -> u32 {
    let want = u32_of(items.div_ceil(per_block)).max(1);
    want.min(info.multiprocessors.max(1) * blocks_per_sm)
}

fn copy_in(lane: &mut Lane, op: Op, chunk: &Chunk) -> Result<(), DriverError> {
    let s = lane.stream.cu_stream();
    let (h, d, n) = (&lane.host, &lane.dev, chunk.n);
    // SAFETY: every copy stays within its host and device allocation (chunk sizes were
    // bounded by the lane capacity when staging) and runs on this lane's stream, which is
    // synchronised before the host buffers are written again.
    unsafe {
        result::memcpy_htod_async(d.data.ptr, &h.data.as_slice()[..chunk.bytes], s)?;
        result::memcpy_htod_async(d.a.ptr, &h.a.as_slice()[..n], s)?;
        result::memcpy_htod_async(d.b.ptr, &h.b.as_slice()[..n], s)?;
        result::memcpy_htod_async(d.c.ptr, &h.c.as_slice()[..n], s)?;
        result::memcpy_htod_async(d.d.ptr, &h.d.as_slice()[..n], s)?;
        if matches!(op, Op::Seal | Op::Open) {
            result::memcpy_htod_async(d.nonces.ptr, &h.nonces.as_slice()[..12 * n], s)?;
            result::memcpy_htod_async(
                d.keys_raw.ptr,
                &h.keys_raw.as_slice()[..32 * chunk.keys],
                s,
            )?;
        }
    }
    Ok(())
}

fn run_kernels(
    f: &Functions,
    info: &DeviceInfo,
    lane: &mut Lane,
    op: Op,
    chunk: &Chunk,
) -> Result<(), DriverError> {
    let d = &lane.dev;
    let n = u32_of(chunk.n);
    let stream = &lane.stream;
    match op {
        Op::Seal | Op::Open => {
            let keys = u32_of(chunk.keys);
            let cfg = LaunchConfig {
                grid_dim: (grid(info, chunk.keys, KEY_SETUP_BLOCK as usize, 4), 1, 1),
                block_dim: (KEY_SETUP_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut params = [param(&d.keys_raw.ptr), param(&d.keys.ptr), param(&keys)];
            // SAFETY: gcm_key_setup(const u8*, GcmKey*, u32): `keys` raw keys were copied in
            // and the key table holds `cap.packets` ≥ keys records.
            unsafe { launch_kernel(stream, &f.key_setup, cfg, &mut params) }?;
            let cfg = LaunchConfig {
                grid_dim: (grid(info, chunk.n, GCM_BLOCK as usize / 32, 8), 1, 1),
                block_dim: (GCM_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let func = if op == Op::Seal { &f.seal } else { &f.open };
            let mut params = [
                param(&d.data.ptr),
                param(&d.a.ptr),
                param(&d.b.ptr),
                param(&d.c.ptr),
                param(&d.d.ptr),
                param(&d.nonces.ptr),
                param(&d.keys.ptr),
                param(&d.ok.ptr),
                param(&n),
            ];
            // SAFETY: matches gcm_seal/gcm_open's parameters; every offset, length and key
            // index was written by stage_aead within the staged bytes and keys.
            unsafe { launch_kernel(stream, func, cfg, &mut params) }?;
        }
        Op::Compress | Op::Decompress => {
            let (func, cfg) = if op == Op::Compress {
                let per_block = LZ4_COMPRESS_BLOCK as usize / 32;
                let cfg = LaunchConfig {
                    grid_dim: (grid(info, chunk.n, per_block, 8), 1, 1),
                    block_dim: (LZ4_COMPRESS_BLOCK, 1, 1),
                    shared_mem_bytes: 0,
                };
                (&f.compress, cfg)
            } else {
                let (func, block, per_block, blocks_per_sm) = match f.decompressor {
                    Lz4Decompressor::Thread => (
                        &f.decompress_thread,
                        LZ4_DECOMPRESS_BLOCK,
                        LZ4_DECOMPRESS_BLOCK as usize,
                        16,
                    ),
                    Lz4Decompressor::Warp => (
                        &f.decompress_warp,
                        LZ4_DECOMPRESS_WARP_BLOCK,
                        LZ4_DECOMPRESS_WARP_BLOCK as usize / 32,
                        16,
                    ),
                };
                let cfg = LaunchConfig {
                    grid_dim: (grid(info, chunk.n, per_block, blocks_per_sm), 1, 1),
                    block_dim: (block, 1, 1),
                    shared_mem_bytes: 0,
                };
                (func, cfg)
            };
            let mut params = [
                param(&d.data.ptr),
                param(&d.a.ptr),
                param(&d.b.ptr),
                param(&d.dst.ptr),
                param(&d.c.ptr),
                param(&d.d.ptr),
                param(&d.out.ptr),
                param(&n),
            ];
            // SAFETY: matches lz4_compress's, lz4_decompress's and lz4_decompress_warp's
            // parameters (all alike); source and destination ranges were laid out by
            // stage_compress/stage_decompress inside the buffers.
            unsafe { launch_kernel(stream, func, cfg, &mut params) }?;
        }
    }
    Ok(())
}

/// One kernel parameter as `cuLaunchKernel` takes it: a pointer to its value.
fn param<T>(value: &T) -> *mut std::ffi::c_void {
    std::ptr::from_ref(value).cast_mut().cast()
}

/// Launches `func` on `stream` with `params` (each from [`param`]) — what cudarc's
/// `launch_builder` does, without the `Vec`s it allocates for every launch.
///
/// # Safety
/// `params` match the kernel's parameters in number, order and type, and every buffer they
/// name is large enough for what the kernel does with it.
unsafe fn launch_kernel(
    stream: &CudaStream,
    func: &CudaFunction,
    cfg: LaunchConfig,
    params: &mut [*mut std::ffi::c_void],
) -> Result<(), DriverError> {
    stream.context().bind_to_thread()?;
    // SAFETY: per the contract; the values `params` point at outlive the call (the driver
    // copies them at launch), and `func` and `stream` belong to the context just bound.
    unsafe {
        result::launch_kernel(
            func.cu_function(),
            cfg.grid_dim,
            cfg.block_dim,
            cfg.shared_mem_bytes,
            stream.cu_stream(),
            params,
        )
    }
}

fn copy_out(lane: &mut Lane, op: Op, chunk: &Chunk) -> Result<(), DriverError> {
    let s = lane.stream.cu_stream();
    let n = chunk.n;
    let (h, d) = (&mut lane.host, &lane.dev);
    // SAFETY: as in copy_in; the host reads these only after waiting for the stream.
    unsafe {
        match op {
            Op::Seal | Op::Open => {
                result::memcpy_dtoh_async(
                    &mut h.data.as_mut_slice()[..chunk.bytes],
                    d.data.ptr,
                    s,
                )?;
                result::memcpy_dtoh_async(&mut h.ok.as_mut_slice()[..n], d.ok.ptr, s)?;
            }
            Op::Compress | Op::Decompress => {
                result::memcpy_dtoh_async(
                    &mut h.dst.as_mut_slice()[..chunk.dst_bytes],
                    d.dst.ptr,
                    s,
                )?;
                result::memcpy_dtoh_async(&mut h.out.as_mut_slice()[..n], d.out.ptr, s)?;
            }
        }
    }
    Ok(())
}

fn launch(
    f: &Functions,
    info: &DeviceInfo,
    lane: &mut Lane,
    op: Op,
    chunk: &Chunk,
) -> Result<(), DriverError> {
    copy_in(lane, op, chunk)?;
    run_kernels(f, info, lane, op, chunk)?;
    copy_out(lane, op, chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_reports_are_read_per_kernel() {
        let log = "ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'gcm_open' for 'sm_90'
ptxas info    : Function properties for gcm_open
ptxas         .     8 bytes stack frame, 12 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 48 registers, used 1 barriers, 4352 bytes smem
ptxas info    : Compiling entry function 'lz4_decompress' for 'sm_90'
ptxas info    : Function properties for lz4_decompress
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 26 registers, used 0 barriers
";
        let r = parse_ptxas(log);
        assert_eq!(
            r,
            [
                KernelResources {
                    kernel: "gcm_open".into(),
                    registers: 48,
                    shared_bytes: 4352,
                    stack_bytes: 8,
                    spill_bytes: 16,
                },
                KernelResources {
                    kernel: "lz4_decompress".into(),
                    registers: 26,
                    shared_bytes: 0,
                    stack_bytes: 0,
                    spill_bytes: 0,
                },
            ]
        );
        let h100 = SmLimits::of("sm_90").expect("sm_90");
        // 48 registers × 256 threads: 5 blocks by registers (8 by threads) = 40 warps.
        assert_eq!(r[0].resident_warps(256, h100), 40);
        // 26 → 32 registers per thread, blocks of one warp: 32 blocks (the block limit).
        assert_eq!(r[1].resident_warps(32, h100), 32);
        let lz4c = KernelResources {
            shared_bytes: 32_768,
            registers: 40,
            ..KernelResources::default()
        };
        // 32 KiB + 1 KiB per block in 228 KiB: 6 blocks of one warp.
        assert_eq!(lz4c.resident_warps(32, h100), 6);
    }

    #[test]
    fn key_map_dedupes_within_a_batch_and_forgets_between() {
        let mut m = KeyMap::new(8);
        assert_eq!(m.slot(42, 0), (0, true));
        assert_eq!(m.slot(7, 1), (1, true));
        assert_eq!(m.slot(42, 2), (0, false));
        m.reset();
        assert_eq!(m.slot(42, 0), (0, true));
    }

    #[test]
    fn without_a_driver_the_engine_says_why() {
        match CudaEngine::new(0, Capacity::for_batch(16, 64)) {
            Ok(e) => eprintln!("a GPU is present here: {}", e.info().name),
            Err(e) => {
                if !driver_present() {
                    assert!(matches!(e, CudaError::NoDriver), "{e}");
                }
                assert!(!e.to_string().is_empty());
            }
        }
    }

    fn heap_stage(cap: Capacity) -> HostStage {
        let (p, b) = (cap.packets, cap.bytes);
        HostStage {
            data: Pinned::heap(b),
            dst: Pinned::heap(b),
            a: Pinned::heap(p),
            b: Pinned::heap(p),
            c: Pinned::heap(p),
            d: Pinned::heap(p),
            out: Pinned::heap(p),
            ok: Pinned::heap(p),
            nonces: Pinned::heap(12 * p),
            keys_raw: Pinned::heap(32 * p),
            refused: vec![false; p],
        }
    }

    /// What the GCM kernels do to a staged chunk, done by the CPU engine on the same
    /// structure-of-arrays layout: the host half of the engine is checked against it.
    fn device_gcm(h: &mut HostStage, c: &Chunk, seal: bool) {
        for i in 0..c.n {
            let (off, al, len) = (
                h.a.as_slice()[i] as usize,
                h.b.as_slice()[i] as usize,
                h.c.as_slice()[i] as usize,
            );
            let slot = h.d.as_slice()[i] as usize;
            let raw: [u8; 32] = h.keys_raw.as_slice()[32 * slot..32 * slot + 32]
                .try_into()
                .unwrap();
            let nonce: [u8; 12] = h.nonces.as_slice()[12 * i..12 * i + 12].try_into().unwrap();
            let key = crate::AeadKey::new(&raw);
            let data = h.data.as_mut_slice();
            let (aad, rest) = data[off..].split_at_mut(al);
            let ok = if seal {
                let mut job = SealJob {
                    key: &key,
                    nonce,
                    aad,
                    buf: &mut rest[..len + TAG_LEN],
                    len,
                    ok: false,
                };
                CpuEngine::seal_one(&mut job);
                job.ok
            } else {
                let mut job = OpenJob {
                    key: &key,
                    nonce,
                    aad,
                    buf: &mut rest[..len],
                    len,
                    ok: false,
                };
                CpuEngine::open_one(&mut job);
                job.ok
            };
            h.ok.as_mut_slice()[i] = u8::from(ok);
        }
    }

    /// What the LZ4 kernels do, likewise.
    fn device_lz4(h: &mut HostStage, c: &Chunk, compress: bool) {
        for i in 0..c.n {
            let (so, sl, dof, cap) = (
                h.a.as_slice()[i] as usize,
                h.b.as_slice()[i] as usize,
                h.c.as_slice()[i] as usize,
                h.d.as_slice()[i] as usize,
            );
            let src = h.data.as_slice()[so..so + sl].to_vec();
            let out = if compress {
                Some(lz4_flex::block::compress(&src)).filter(|v| v.len() <= cap)
            } else {
                let mut v = vec![0u8; cap];
                lz4_flex::block::decompress_into(&src, &mut v)
                    .ok()
                    .map(|n| v[..n].to_vec())
            };
            h.out.as_mut_slice()[i] = match out {
                Some(v) => {
                    h.dst.as_mut_slice()[dof..dof + v.len()].copy_from_slice(&v);
                    u32_of(v.len())
                }
                None => LZ4_NONE,
            };
        }
    }

    /// Runs `jobs` through stage → "device" → unstage in chunks no bigger than a small lane,
    /// as `drive` does, so chunk boundaries fall mid-batch.
    fn through_chunks<J>(
        jobs: &mut [J],
        stage: fn(&mut HostStage, &mut KeyMap, Capacity, &[J], usize, usize) -> Chunk,
        device: impl Fn(&mut HostStage, &Chunk),
        unstage: fn(&HostStage, &Chunk, &mut [J]),
    ) -> usize {
        let cap = Capacity {
            packets: 7,
            bytes: 24 * 1024,
        };
        let mut h = heap_stage(cap);
        let mut keys = KeyMap::new(cap.packets);
        let (mut next, mut chunks) = (0, 0);
        while next < jobs.len() {
            let c = stage(&mut h, &mut keys, cap, jobs, next, 5);
            assert!(c.n > 0 && c.start == next, "stalled at {next}");
            device(&mut h, &c);
            unstage(&h, &c, &mut jobs[c.start..c.start + c.n]);
            next += c.n;
            chunks += 1;
        }
        chunks
    }

    #[test]
    fn staging_and_unstaging_match_the_cpu_engine_across_chunks() {
        use crate::samples::Rng;
        let mut rng = Rng(77);
        let keys: Vec<crate::AeadKey> = (0..3)
            .map(|k: u8| crate::AeadKey::new(&[k + 1; 32]))
            .collect();
        let sizes = [
            0usize, 1, 15, 16, 17, 64, 1408, 9216, 300, 5000, 33, 0, 2000,
        ];
        let plain: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| {
                let mut v = vec![0u8; n + TAG_LEN];
                rng.fill(&mut v[..n]);
                v
            })
            .collect();
        let aads: Vec<Vec<u8>> = (0..sizes.len())
            .map(|i| vec![i.to_le_bytes()[0]; i % 20])
            .collect();
        let seal_set = |bufs: &mut Vec<Vec<u8>>| -> Vec<bool> {
            let mut jobs: Vec<SealJob<'_>> = bufs
                .iter_mut()
                .enumerate()
                .map(|(i, buf)| SealJob {
                    key: &keys[i % 3],
                    nonce: crate::nonce(i as u64),
                    aad: &aads[i],
                    len: sizes[i],
                    buf,
                    ok: false,
                })
                .collect();
            // One job with a buffer too short for its tag is refused, not sent.
            jobs[4].len = jobs[4].buf.len();
            through_chunks(
                &mut jobs,
                stage_aead,
                |h, c| device_gcm(h, c, true),
                unstage_seal,
            );
            jobs.iter().map(|j| j.ok).collect()
        };
        let mut got = plain.clone();
        let oks = seal_set(&mut got);
        let mut want = plain.clone();
        {
            let mut jobs: Vec<SealJob<'_>> = want
                .iter_mut()
                .enumerate()
                .map(|(i, buf)| SealJob {
                    key: &keys[i % 3],
                    nonce: crate::nonce(i as u64),
                    aad: &aads[i],
                    len: sizes[i],
                    buf,
                    ok: false,
                })
                .collect();
            jobs[4].len = jobs[4].buf.len();
            CpuEngine.seal(&mut jobs);
            assert_eq!(oks, jobs.iter().map(|j| j.ok).collect::<Vec<_>>());
        }
        assert!(!oks[4] && oks.iter().filter(|&&o| o).count() == sizes.len() - 1);
        for i in (0..sizes.len()).filter(|&i| i != 4) {
            assert!(got[i] == want[i], "sealed packet {i} differs");
        }
        // Open what was sealed (packet 2 tampered), through the same chunking.
        got[2][0] ^= 1;
        let mut jobs: Vec<OpenJob<'_>> = got
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| *i != 4)
            .map(|(i, buf)| OpenJob {
                key: &keys[i % 3],
                nonce: crate::nonce(i as u64),
                aad: &aads[i],
                len: sizes[i] + TAG_LEN,
                buf,
                ok: false,
            })
            .collect();
        through_chunks(
            &mut jobs,
            stage_aead,
            |h, c| device_gcm(h, c, false),
            unstage_open,
        );
        for (k, job) in jobs.iter().enumerate() {
            let i = if k >= 4 { k + 1 } else { k };
            assert_eq!(job.ok, i != 2, "open of packet {i}");
            if job.ok {
                assert!(job.buf[..sizes[i]] == plain[i][..sizes[i]], "plaintext {i}");
            }
        }
        // LZ4 both ways through the same glue.
        let text: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| crate::samples::compressible(&mut rng, n))
            .collect();
        let mut outs: Vec<Vec<u8>> = text
            .iter()
            .map(|t| vec![0u8; crate::compress_bound(t.len())])
            .collect();
        let mut jobs = CompressJob::batch(&text, &mut outs);
        let chunks = through_chunks(
            &mut jobs,
            stage_compress,
            |h, c| device_lz4(h, c, true),
            unstage_compress,
        );
        assert!(chunks >= 3, "the batch must cross chunk boundaries");
        let lens: Vec<Option<usize>> = jobs.iter().map(|j| j.out_len).collect();
        drop(jobs);
        let mut packed = Vec::new();
        for (i, len) in lens.iter().enumerate() {
            match len {
                Some(n) => {
                    assert!(*n < text[i].len());
                    let back = lz4_flex::block::decompress(&outs[i][..*n], text[i].len()).unwrap();
                    assert!(back == text[i], "compressed packet {i}");
                    packed.push((i, outs[i][..*n].to_vec()));
                }
                None => assert!(text[i].len() < 32, "packet {i} not compressed"),
            }
        }
        let mut backs: Vec<Vec<u8>> = vec![vec![0u8; 9216]; packed.len()];
        let mut jobs: Vec<DecompressJob<'_>> = packed
            .iter()
            .zip(backs.iter_mut())
            .map(|((_, src), dst)| DecompressJob {
                src,
                dst,
                out_len: None,
            })
            .collect();
        through_chunks(
            &mut jobs,
            stage_decompress,
            |h, c| device_lz4(h, c, false),
            unstage_decompress,
        );
        for (k, job) in jobs.iter().enumerate() {
            let i = packed[k].0;
            assert_eq!(job.out_len, Some(text[i].len()), "decompressed length {i}");
            assert!(
                job.dst[..text[i].len()] == text[i][..],
                "decompressed packet {i}"
            );
        }
    }

    #[test]
    fn arch_choice() {
        assert_eq!(arch_for(9, 0), "compute_90");
        assert_eq!(arch_for(8, 6), "compute_86");
        assert_eq!(arch_for(7, 5), "compute_75");
    }
}
