//! The kernels' sources and their compilation: finding NVRTC, compiling each `.cu` file
//! for the device's architecture, ptxas's report of each kernel's registers and memory, and
//! the block sizes the kernels are launched with.

use super::*;

/// The header every kernel file is compiled with.
pub const COMMON_SOURCE: &str = include_str!("../../cuda/common.cuh");
/// Batched AES-256-GCM.
pub const GCM_SOURCE: &str = include_str!("../../cuda/gcm.cu");
/// Batched LZ4 block compression.
pub const LZ4_SOURCE: &str = include_str!("../../cuda/lz4.cu");

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
pub(super) fn parse_ptxas(log: &str) -> Vec<KernelResources> {
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

/// The loaded NVRTC's version, (major, minor); (0, 0) if it does not say.
pub(super) fn nvrtc_version() -> (i32, i32) {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (`ensure_nvrtc` found it); both are valid out-pointers.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&raw mut major, &raw mut minor) };
    if r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        (major, minor)
    } else {
        (0, 0)
    }
}
