//! The CPU stand-in for the CUDA driver (`kernels/cuda/sim_driver.cpp`): builds it with the
//! system C++ compiler, so that the CUDA engine's whole host side, with the real kernels run
//! by a SIMT emulator, can be exercised on machines without a GPU — the tests do, and an
//! operator can point `DWCP_LIBCUDA` at the built library to try `offload.gpu = on` anywhere.
//! It says what it is in the device name; it is for checking, not for speed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The stand-in's source, and the kernel sources it includes.
const FILES: [(&str, &str); 5] = [
    ("sim_driver.cpp", include_str!("../cuda/sim_driver.cpp")),
    ("simt.h", include_str!("../cuda/simt.h")),
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
    /// With the race check (`kernels/cuda/simt.h`): ThreadSanitizer, told only of the
    /// ordering CUDA's barriers give, reports two CUDA threads touching the same bytes (one
    /// writing) with no barrier between. The process that loads it must start with
    /// ThreadSanitizer's runtime preloaded ([`tsan_runtime`]).
    RaceCheck,
}

/// ThreadSanitizer's runtime library, which a process loading a [`Build::RaceCheck`] stand-in
/// preloads (`LD_PRELOAD`): the path `c++` gives, or why there is none.
pub fn tsan_runtime() -> Result<PathBuf, String> {
    let out = Command::new("c++")
        .arg("-print-file-name=libtsan.so")
        .output()
        .map_err(|e| format!("cannot run c++ (scripts/setup.sh installs g++): {e}"))?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if path.is_absolute() && path.exists() {
        Ok(path)
    } else {
        Err("c++ has no libtsan.so (scripts/setup.sh installs it: apt-get install libtsan2)".into())
    }
}

/// Writes the sources into `dir` and builds `dir/libcuda.so` (soname `libcuda.so`) with `c++`;
/// returns the library's path, or why it could not be built.
pub fn build(dir: &Path) -> Result<PathBuf, String> {
    build_as(dir, Build::Plain)
}

/// [`build`], as `how` says.
pub fn build_as(dir: &Path, how: Build) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, text) in FILES {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let lib = dir.join("libcuda.so");
    let flags: &[&str] = match how {
        Build::Plain => &["-O2"],
        Build::RaceCheck => &["-O1", "-g", "-fsanitize=thread", "-DDWCP_SIMT_TSAN"],
    };
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
        .arg("-Wl,-soname,libcuda.so")
        .arg("-o")
        .arg(&lib)
        .arg(dir.join("sim_driver.cpp"))
        .output()
        .map_err(|e| format!("cannot run c++ (scripts/setup.sh installs g++): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sim_driver.cpp does not compile:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(lib)
}
