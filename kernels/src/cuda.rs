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

/// The header every kernel file is compiled with.
pub const COMMON_SOURCE: &str = include_str!("../cuda/common.cuh");
/// Batched AES-256-GCM.
pub const GCM_SOURCE: &str = include_str!("../cuda/gcm.cu");
/// Batched LZ4 block compression.
pub const LZ4_SOURCE: &str = include_str!("../cuda/lz4.cu");

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
    DriverLibrary(String),
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
    Thread(String),
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

/// Whether NVRTC can be loaded here (no GPU or driver is needed to compile).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names; no symbol is called.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Where `scripts/setup.sh` unpacks the NVRTC wheel (`nvidia-cuda-nvrtc`), under the cache.
pub const NVRTC_CACHE: &str = ".cache/dwcp/nvrtc/13.0.88/nvidia/cu13/lib/libnvrtc.so.13";

/// Makes NVRTC loadable when it is not on the library path: loads it by full path from
/// `$DWCP_NVRTC` or the setup script's cache (the dynamic loader then finds it by its soname).
/// Returns where it came from, or `None` when no NVRTC is to be had.
pub fn ensure_nvrtc() -> Option<String> {
    if nvrtc_present() {
        return Some("library path".into());
    }
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("DWCP_NVRTC") {
        candidates.push(std::path::PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(std::path::Path::new(&home).join(NVRTC_CACHE));
    }
    for path in candidates {
        if !path.is_file() {
            continue;
        }
        // NVRTC opens its builtins library by name at compile time: load it first, from the
        // same folder.
        if let Some(dir) = path.parent() {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("libnvrtc-builtins.so") {
                    // SAFETY: as below, for NVRTC's builtins library.
                    if let Ok(lib) = unsafe { libloading::Library::new(entry.path()) } {
                        std::mem::forget(lib);
                    }
                }
            }
        }
        // SAFETY: loads NVIDIA's NVRTC library, whose initialisers are sound to run; the
        // handle is leaked so the library stays loaded for the process's lifetime.
        if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
            std::mem::forget(lib);
            if nvrtc_present() {
                return Some(path.display().to_string());
            }
        }
    }
    None
}

/// Makes the CUDA driver library at `path` the one the engine uses (a driver installed off the
/// library path, or the CPU stand-in `kernels/sim/sim_driver.cpp` that the tests build): it
/// is loaded globally, and cudarc's later load of `libcuda.so` by name finds it by its soname.
/// Once loaded it stays for the life of the process.
pub fn use_driver(path: &std::path::Path) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    if !path.is_file() {
        return Err(format!("no CUDA driver library at {}", path.display()));
    }
    // SAFETY: loads a CUDA driver library, whose initialisers are sound to run; the handle is
    // leaked so the library stays loaded for the process's lifetime.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
        .map_err(|e| format!("cannot load the CUDA driver {}: {e}", path.display()))?;
    std::mem::forget(lib);
    Ok(())
}

/// Loads the driver `DWCP_LIBCUDA` names, once per process; the error says why it failed.
fn driver_from_env() -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| match std::env::var_os("DWCP_LIBCUDA") {
            Some(p) => {
                use_driver(std::path::Path::new(&p)).map_err(|e| format!("DWCP_LIBCUDA: {e}"))
            }
            None => Ok(()),
        })
        .clone()
}

/// Whether this binary is statically linked (then it must not load NVRTC or the driver).
pub const STATIC_BUILD: bool = cfg!(target_feature = "crt-static");

/// Whether the CUDA driver library can be loaded here.
pub fn driver_present() -> bool {
    if STATIC_BUILD || driver_from_env().is_err() {
        return false;
    }
    // SAFETY: only tries to dlopen the candidate library names; no symbol is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The kernel sources as NVRTC compiles them: (file name, common header + file).
pub fn sources() -> [(&'static str, String); 2] {
    [
        ("gcm.cu", format!("{COMMON_SOURCE}\n{GCM_SOURCE}")),
        ("lz4.cu", format!("{COMMON_SOURCE}\n{LZ4_SOURCE}")),
    ]
}

/// Threads per block of `gcm_key_setup` (one thread per key).
pub const KEY_SETUP_BLOCK: u32 = 64;
/// Threads per block of `gcm_seal` and `gcm_open` (one warp per packet).
pub const GCM_BLOCK: u32 = 256;
/// Threads per block of `lz4_compress` (one warp per packet; its shared hash tables, one per
/// warp, are sized for `LZ4_COMPRESS_WARPS` in `lz4.cu`, which must match).
pub const LZ4_COMPRESS_BLOCK: u32 = 4 * 32;
/// Threads per block of `lz4_decompress` (one thread per packet; `LZ4_DECOMPRESS_THREADS`).
pub const LZ4_DECOMPRESS_BLOCK: u32 = 32;
/// Threads per block of `lz4_decompress_warp` (one warp per packet; `LZ4_DECOMPRESS_WARPS`
/// warps, which must match).
pub const LZ4_DECOMPRESS_WARP_BLOCK: u32 = 4 * 32;

/// The block size the engine launches `kernel` with.
pub fn launch_block(kernel: &str) -> Option<u32> {
    match kernel {
        "gcm_key_setup" => Some(KEY_SETUP_BLOCK),
        "gcm_seal" | "gcm_open" => Some(GCM_BLOCK),
        "lz4_compress" => Some(LZ4_COMPRESS_BLOCK),
        "lz4_decompress" => Some(LZ4_DECOMPRESS_BLOCK),
        "lz4_decompress_warp" => Some(LZ4_DECOMPRESS_WARP_BLOCK),
        _ => None,
    }
}

/// What ptxas reports for one kernel built for a real architecture: what decides how many of
/// its threads a multiprocessor holds, and whether it spills to (slow) local memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    /// The kernel.
    pub kernel: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory per block, bytes.
    pub shared_bytes: u32,
    /// Stack frame per thread, bytes (local memory).
    pub stack_bytes: u32,
    /// Spill stores plus spill loads, bytes (local memory).
    pub spill_bytes: u32,
}

/// A multiprocessor's limits that occupancy depends on.
#[derive(Clone, Copy, Debug)]
pub struct SmLimits {
    /// Threads resident at once.
    pub threads: u32,
    /// Blocks resident at once.
    pub blocks: u32,
    /// 32-bit registers.
    pub registers: u32,
    /// Shared memory, bytes (what blocks may use together).
    pub shared_bytes: u32,
}

impl SmLimits {
    /// NVIDIA's published limits for `sm_80` (A100) and `sm_90` (H100, H200).
    pub fn of(sm: &str) -> Option<Self> {
        match sm {
            "sm_80" => Some(Self {
                threads: 2048,
                blocks: 32,
                registers: 65_536,
                shared_bytes: 164 * 1024,
            }),
            "sm_90" => Some(Self {
                threads: 2048,
                blocks: 32,
                registers: 65_536,
                shared_bytes: 228 * 1024,
            }),
            _ => None,
        }
    }
}

impl KernelResources {
    /// Warps of this kernel one multiprocessor holds at once when launched in blocks of
    /// `block` threads (registers are allocated per warp in units of 256; the driver keeps
    /// 1 KiB of shared memory per block).
    pub fn resident_warps(&self, block: u32, sm: SmLimits) -> u32 {
        let warps_per_block = block.div_ceil(32).max(1);
        let regs_per_warp = (self.registers * 32).next_multiple_of(256).max(256);
        let by_threads = sm.threads / (warps_per_block * 32);
        let by_regs = sm.registers / (regs_per_warp * warps_per_block);
        let by_shared = sm.shared_bytes / (self.shared_bytes + 1024);
        let blocks = by_threads.min(by_regs).min(by_shared).min(sm.blocks);
        blocks * warps_per_block
    }
}

/// Builds `src` for the real architecture `sm` (`sm_90`) with ptxas's verbose report and
/// returns each kernel's resources: the compiler's view of the kernels, which needs NVRTC
/// only (no GPU, no driver).
pub fn resources(
    file: &'static str,
    src: &str,
    sm: &str,
) -> Result<Vec<KernelResources>, CudaError> {
    use cudarc::nvrtc::result as nvrtc;
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let fail = |log: String| CudaError::Compile { file, log };
    let c_src = std::ffi::CString::new(src).map_err(|e| fail(e.to_string()))?;
    let c_name = std::ffi::CString::new(file).map_err(|e| fail(e.to_string()))?;
    let prog = nvrtc::create_program(&c_src, Some(&c_name)).map_err(|e| fail(e.to_string()))?;
    let opts = [format!("-arch={sm}"), "--ptxas-options=-v".to_owned()];
    // SAFETY: `prog` was created above and is destroyed exactly once, after its last use.
    let (compiled, log) = unsafe {
        let compiled = nvrtc::compile_program(prog, &opts);
        let log = nvrtc::get_program_log(prog);
        let _ = nvrtc::destroy_program(prog);
        (compiled, log)
    };
    let log: Vec<u8> = log
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.to_ne_bytes()[0])
        .take_while(|&b| b != 0)
        .collect();
    let log = String::from_utf8_lossy(&log).into_owned();
    compiled.map_err(|_| fail(log.clone()))?;
    Ok(parse_ptxas(&log))
}

/// Reads ptxas's `-v` report: per kernel, registers, shared memory, stack and spills.
fn parse_ptxas(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            out.push(KernelResources {
                kernel: rest.split('\'').next().unwrap_or_default().to_owned(),
                ..KernelResources::default()
            });
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        // The number in the comma-separated part that names `what`.
        let figure = |what: &str| -> u32 {
            line.split(',')
                .find(|part| part.contains(what))
                .and_then(|part| part.split_whitespace().find_map(|t| t.parse().ok()))
                .unwrap_or(0)
        };
        if line.contains("stack frame") {
            k.stack_bytes = figure("stack frame");
            k.spill_bytes = figure("spill stores") + figure("spill loads");
        } else if line.contains("registers") {
            k.registers = figure("registers");
            k.shared_bytes = figure("smem");
        }
    }
    out
}

/// Compiles one source to PTX for a virtual architecture such as `compute_90`.
pub fn compile(file: &'static str, src: &str, arch: &'static str) -> Result<String, CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        name: Some(file.to_owned()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| CudaError::Compile {
        file,
        log: match e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                log.to_string_lossy().into_owned()
            }
            other => format!("{other:?}"),
        },
    })?;
    Ok(ptx.to_src())
}

/// The newest virtual architecture this code is compiled for that a device of compute
/// capability `major.minor` runs.
pub fn arch_for(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (m, _) if m >= 12 => "compute_120",
        (10, _) | (11, _) => "compute_100",
        (9, _) => "compute_90",
        (8, n) if n >= 9 => "compute_89",
        (8, n) if n >= 6 => "compute_86",
        (8, _) => "compute_80",
        _ => "compute_75",
    }
}

/// What the engine knows of its device, for logs, metrics and the console.
#[derive(Clone, Debug, Default)]
pub struct DeviceInfo {
    /// Device name (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Compute capability.
    pub compute_capability: (i32, i32),
    /// Multiprocessors.
    pub multiprocessors: u32,
    /// Total device memory, bytes.
    pub memory_total: u64,
    /// Where the device is, `domain:bus:device.function` as `cuDeviceGetPCIBusId` writes it
    /// (`0000:41:00.0`): how NVML finds the same device (its indices need not be CUDA's).
    pub pci_bus_id: String,
    /// The architecture the kernels were compiled for.
    pub arch: &'static str,
    /// The CUDA version the driver supports (`cuDriverGetVersion`), e.g. (12, 2).
    pub driver_cuda: (i32, i32),
    /// The NVRTC that compiled the kernels (`nvrtcVersion`), e.g. (13, 0).
    pub nvrtc: (i32, i32),
}

/// The device's PCI address from its attributes, formatted as `cuDeviceGetPCIBusId` does.
fn pci_bus_id(ctx: &CudaContext) -> Result<String, DriverError> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    Ok(format!(
        "{:04x}:{:02x}:{:02x}.0",
        ctx.attribute(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
        ctx.attribute(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
        ctx.attribute(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?
    ))
}

/// The CUDA version the loaded driver supports, (major, minor); (0, 0) if it does not say.
fn driver_cuda_version() -> (i32, i32) {
    let mut v = 0;
    // SAFETY: the driver library is loaded and initialised (`cuInit` succeeded); `v` is a
    // valid out-pointer.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&raw mut v) };
    if r.result().is_err() {
        return (0, 0);
    }
    (v / 1000, v % 1000 / 10)
}

/// The loaded NVRTC's version, (major, minor); (0, 0) if it does not say.
fn nvrtc_version() -> (i32, i32) {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (`ensure_nvrtc` found it); both are valid out-pointers.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&raw mut major, &raw mut minor) };
    if r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        (major, minor)
    } else {
        (0, 0)
    }
}

/// Device memory, freed on drop.
struct DeviceBuf {
    ptr: CUdeviceptr,
}

impl DeviceBuf {
    fn new(bytes: usize) -> Result<Self, DriverError> {
        // SAFETY: plain allocation in the current context (the engine binds it first); the
        // memory is only reached through this handle and freed once in drop.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }?;
        Ok(Self { ptr })
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from malloc_sync and is freed exactly once; the engine
        // synchronises its streams before dropping its buffers.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// Page-locked host memory of `T`s, freed on drop.
struct Pinned<T: Copy + Default> {
    ptr: *mut T,
    len: usize,
    /// Heap memory standing in for page-locked memory (tests of the staging code on machines
    /// without a driver); `ptr` points into it and drop does not call the driver.
    heap: Option<Box<[T]>>,
}

// SAFETY: the buffer is plain memory owned by this handle; access goes through &/&mut self.
unsafe impl<T: Copy + Default + Send> Send for Pinned<T> {}

impl<T: Copy + Default> Pinned<T> {
    fn new(len: usize) -> Result<Self, DriverError> {
        let len = len.max(1);
        let bytes = len * size_of::<T>();
        // SAFETY: flags 0 asks for ordinary (cached, not write-combined) page-locked memory;
        // the pointer is checked and initialised below before any read.
        let raw = unsafe { result::malloc_host(bytes, 0) }?;
        let ptr = raw.cast::<T>();
        // SAFETY: `ptr` points to `len` properly aligned (page-aligned) `T`s that we own.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }.fill(T::default());
        Ok(Self {
            ptr,
            len,
            heap: None,
        })
    }

    #[cfg(test)]
    fn heap(len: usize) -> Self {
        let mut b = vec![T::default(); len.max(1)].into_boxed_slice();
        Self {
            ptr: b.as_mut_ptr(),
            len: b.len(),
            heap: Some(b),
        }
    }

    fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` holds `len` initialised `T`s owned by self; the engine waits for its
        // stream before reading memory a copy writes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in as_slice, with exclusive access through &mut self; the engine waits for
        // its stream before writing memory a pending copy reads.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Copy + Default> Drop for Pinned<T> {
    fn drop(&mut self) {
        if self.heap.is_some() {
            return;
        }
        // SAFETY: `ptr` came from malloc_host and is freed once, after the streams are idle.
        let _ = unsafe { result::free_host(self.ptr.cast()) };
    }
}

/// One operation's descriptor columns, named per operation in the comments of `stage_*`.
struct HostStage {
    data: Pinned<u8>,
    dst: Pinned<u8>,
    a: Pinned<u32>,
    b: Pinned<u32>,
    c: Pinned<u32>,
    d: Pinned<u32>,
    out: Pinned<u32>,
    ok: Pinned<u8>,
    nonces: Pinned<u8>,
    keys_raw: Pinned<u8>,
    /// Jobs the host refused before staging (buffer too short): not sent.
    refused: Vec<bool>,
}

struct DeviceStage {
    data: DeviceBuf,
    dst: DeviceBuf,
    a: DeviceBuf,
    b: DeviceBuf,
    c: DeviceBuf,
    d: DeviceBuf,
    out: DeviceBuf,
    ok: DeviceBuf,
    nonces: DeviceBuf,
    keys_raw: DeviceBuf,
    keys: DeviceBuf,
}

/// What a lane holds in flight.
#[derive(Clone, Copy, Debug, Default)]
struct Chunk {
    start: usize,
    n: usize,
    bytes: usize,
    dst_bytes: usize,
    keys: usize,
}

struct Lane {
    stream: Arc<CudaStream>,
    host: HostStage,
    dev: DeviceStage,
    pending: Option<Chunk>,
    start: CudaEvent,
    stop: CudaEvent,
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

fn record_len(aad: usize, len: usize) -> usize {
    (aad + len + TAG_LEN).next_multiple_of(16)
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

/// Driver entry points the engine calls under one name where the driver has it and under
/// another where it does not (same signature): (preferred, fallback). The GPU image's driver
/// (550, CUDA 12.4) predates `cuEventElapsedTime_v2` (CUDA 12.8).
pub const DRIVER_FALLBACKS: &[(&str, &str)] = &[("cuEventElapsedTime_v2", "cuEventElapsedTime")];

type ElapsedFn = unsafe extern "C" fn(
    *mut f32,
    cudarc::driver::sys::CUevent,
    cudarc::driver::sys::CUevent,
) -> cudarc::driver::sys::CUresult;

/// Milliseconds between two recorded, completed events: `cuEventElapsedTime_v2` where the
/// driver exports it, else `cuEventElapsedTime` (cudarc's `elapsed_ms` calls `_v2` alone and
/// panics on an older driver).
fn event_elapsed_ms(start: &CudaEvent, stop: &CudaEvent) -> Result<f32, CudaError> {
    static ELAPSED: std::sync::OnceLock<Option<ElapsedFn>> = std::sync::OnceLock::new();
    let f = ELAPSED.get_or_init(|| {
        let (preferred, fallback) = DRIVER_FALLBACKS[0];
        [preferred, fallback].into_iter().find_map(|name| {
            // SAFETY: the driver library is loaded (an event exists); both names have
            // `ElapsedFn`'s signature in cuda.h, and the symbol lives as long as the
            // library, which cudarc never unloads.
            unsafe {
                cudarc::driver::sys::culib()
                    .get::<ElapsedFn>(name.as_bytes())
                    .ok()
                    .map(|s| *s)
            }
        })
    });
    let f = f.ok_or_else(|| {
        CudaError::Driver(DriverError(
            cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_FOUND,
        ))
    })?;
    let mut ms = 0f32;
    // SAFETY: both events belong to the engine's context and were recorded on a stream the
    // caller synchronised; `ms` is a valid out-pointer for the call.
    let r = unsafe { f(&raw mut ms, start.cu_event(), stop.cu_event()) };
    r.result().map_err(CudaError::Driver)?;
    Ok(ms)
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
        driver_from_env().map_err(CudaError::DriverLibrary)?;
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

/// What staging needs of an AEAD job, seal or open alike.
trait AeadJob {
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
fn stage_aead<J: AeadJob>(
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
fn unstage_seal(h: &HostStage, _c: &Chunk, jobs: &mut [SealJob<'_>]) {
    for (i, job) in jobs.iter_mut().enumerate() {
        job.ok = !h.refused[i] && h.ok.as_slice()[i] != 0;
        if job.ok {
            let at = h.a.as_slice()[i] as usize + h.b.as_slice()[i] as usize;
            let n = job.len + TAG_LEN;
            job.buf[..n].copy_from_slice(&h.data.as_slice()[at..at + n]);
        }
    }
}

fn unstage_open(h: &HostStage, _c: &Chunk, jobs: &mut [OpenJob<'_>]) {
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
fn stage_compress(
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

fn unstage_lz4(h: &HostStage, i: usize, dst: &mut [u8]) -> Option<usize> {
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

fn unstage_compress(h: &HostStage, _c: &Chunk, jobs: &mut [CompressJob<'_>]) {
    for (i, job) in jobs.iter_mut().enumerate() {
        job.out_len = unstage_lz4(h, i, job.dst);
    }
}

/// Packs DecompressJobs: as compress, d = the caller's output space, at most a lane's bytes
/// (so every job whose input fits a lane is staged).
fn stage_decompress(
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

fn unstage_decompress(h: &HostStage, _c: &Chunk, jobs: &mut [DecompressJob<'_>]) {
    for (i, job) in jobs.iter_mut().enumerate() {
        job.out_len = unstage_lz4(h, i, job.dst);
    }
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
