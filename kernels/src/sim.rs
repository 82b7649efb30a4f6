//! The CPU stand-in for the CUDA driver (`kernels/sim/sim_driver.cpp`): builds it with the
//! system C++ compiler, so that the CUDA engine's whole host side, with the real kernels run
//! by a SIMT emulator, can be exercised on machines without a GPU — the tests do, and an
//! operator can point `DWCP_LIBCUDA` at the built library to try `offload.gpu = on` anywhere.
//! It says what it is in the device name; it is for checking, not for speed. Beside it, a
//! stand-in for NVIDIA's management library (`kernels/sim/sim_nvml.cpp`), for the GPU status
//! the data plane reports.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The stand-in's source, and the kernel sources it includes.
const FILES: [(&str, &str); 5] = [
    ("sim_driver.cpp", include_str!("../sim/sim_driver.cpp")),
    ("simt.h", include_str!("../sim/simt.h")),
    ("common.cuh", crate::cuda::COMMON_SOURCE),
    ("gcm.cu", crate::cuda::GCM_SOURCE),
    ("lz4.cu", crate::cuda::LZ4_SOURCE),
];

/// What the device calls itself (`cuDeviceGetName`).
pub const DEVICE_NAME: &str = "DWCP simulated GPU (host CPU, libcuda stand-in)";

/// How the stand-in is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Optimised, for running.
    Plain,
    /// With the race check (`kernels/sim/simt.h`): ThreadSanitizer, told only of the
    /// ordering CUDA's barriers give, reports two CUDA threads touching the same bytes (one
    /// writing) with no barrier between. The process that loads it must start with
    /// ThreadSanitizer's runtime preloaded ([`tsan_runtime`]).
    RaceCheck,
}

/// Why a stand-in could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The system C++ compiler did not run.
    #[error("cannot run c++ (scripts/setup.sh installs g++): {0}")]
    NoCompiler(#[source] std::io::Error),
    /// A source could not be written where it is built.
    #[error("{}: {source}", path.display())]
    Write {
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The compiler refused a source.
    #[error("{file} does not compile:\n{stderr}")]
    Compile {
        /// The source file.
        file: String,
        /// What the compiler said.
        stderr: String,
    },
    /// The compiler has no ThreadSanitizer runtime.
    #[error("c++ has no libtsan.so (scripts/setup.sh installs it: apt-get install libtsan2)")]
    NoTsan,
}

/// ThreadSanitizer's runtime library, which a process loading a [`Build::RaceCheck`] stand-in
/// preloads (`LD_PRELOAD`): the path `c++` gives, or why there is none.
pub fn tsan_runtime() -> Result<PathBuf, BuildError> {
    let out = Command::new("c++")
        .arg("-print-file-name=libtsan.so")
        .output()
        .map_err(BuildError::NoCompiler)?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if path.is_absolute() && path.exists() {
        Ok(path)
    } else {
        Err(BuildError::NoTsan)
    }
}

/// Writes the sources into `dir` and builds `dir/libcuda.so` (soname `libcuda.so`) with `c++`;
/// returns the library's path, or why it could not be built.
pub fn build(dir: &Path) -> Result<PathBuf, BuildError> {
    build_as(dir, Build::Plain)
}

/// [`build`], as `how` says.
pub fn build_as(dir: &Path, how: Build) -> Result<PathBuf, BuildError> {
    write_sources(dir, &FILES)?;
    let flags: &[&str] = match how {
        Build::Plain => &["-O2"],
        Build::RaceCheck => &["-O1", "-g", "-fsanitize=thread", "-DDWCP_SIMT_TSAN"],
    };
    compile(dir, "sim_driver.cpp", "libcuda.so", "libcuda.so", flags)
}

/// The CUDA stand-in's device as the NVML stand-in reports it ([`build_nvml`]), for tests that
/// read the GPU status back; its other device differs in each field.
pub const NVML_DEVICE: NvmlDevice = NvmlDevice {
    pci_bus_id: "0000:41:00.0",
    name: DEVICE_NAME,
    memory_total: 1 << 30,
    memory_free: (1 << 30) - (96 << 20),
    utilization_pct: 7,
    temperature_c: 41,
    power_mw: 87_250,
    clock_events: 0x20,
    ecc_errors: (3, 0),
};

/// A device of the NVML stand-in.
#[derive(Clone, Copy, Debug)]
pub struct NvmlDevice {
    /// Where it is (`cuDeviceGetAttribute`'s PCI domain, bus and device on the CUDA stand-in).
    pub pci_bus_id: &'static str,
    /// Its name.
    pub name: &'static str,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Free memory, bytes.
    pub memory_free: u64,
    /// GPU utilisation, percent.
    pub utilization_pct: u32,
    /// Core temperature, °C.
    pub temperature_c: u32,
    /// Power draw, milliwatts.
    pub power_mw: u32,
    /// NVML's clock event reasons (`0x20`: software thermal slowdown).
    pub clock_events: u64,
    /// ECC errors, (corrected, uncorrected).
    pub ecc_errors: (u64, u64),
}

/// Writes the stand-in for NVIDIA's management library (`kernels/sim/sim_nvml.cpp`: two GPUs,
/// the second where the CUDA stand-in's device is, [`NVML_DEVICE`]) into `dir` and builds
/// `dir/libnvidia-ml.so` (soname `libnvidia-ml.so.1`); returns its path, or why it could not
/// be built. `DWCP_LIBNVML` pointed at it gives the data plane GPU status to report.
pub fn build_nvml(dir: &Path) -> Result<PathBuf, BuildError> {
    write_sources(
        dir,
        &[("sim_nvml.cpp", include_str!("../sim/sim_nvml.cpp"))],
    )?;
    compile(
        dir,
        "sim_nvml.cpp",
        "libnvidia-ml.so",
        "libnvidia-ml.so.1",
        &["-O2"],
    )
}

fn write_sources(dir: &Path, files: &[(&str, &str)]) -> Result<(), BuildError> {
    std::fs::create_dir_all(dir).map_err(|source| BuildError::Write {
        path: dir.to_owned(),
        source,
    })?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| BuildError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Builds `dir/source` into the shared library `dir/lib` with soname `soname`.
fn compile(
    dir: &Path,
    source: &str,
    lib: &str,
    soname: &str,
    flags: &[&str],
) -> Result<PathBuf, BuildError> {
    let lib = dir.join(lib);
    let out = Command::new("c++")
        .args(flags)
        .args([
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-shared",
            "-fPIC",
        ])
        .arg(format!("-Wl,-soname,{soname}"))
        .arg("-o")
        .arg(&lib)
        .arg(dir.join(source))
        .output()
        .map_err(BuildError::NoCompiler)?;
    if !out.status.success() {
        return Err(BuildError::Compile {
            file: source.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(lib)
}
