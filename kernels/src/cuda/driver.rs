//! The CUDA driver: which library is loaded (`DWCP_LIBCUDA`, the system's, or none), what
//! the device and driver say of themselves, and the driver calls that differ between versions.

use super::*;

/// Makes the CUDA driver library at `path` the one the engine uses (a driver installed off the
/// library path, or the CPU stand-in `kernels/sim/sim_driver.cpp` that the tests build): it
/// is loaded globally, and cudarc's later load of `libcuda.so` by name finds it by its soname.
/// Once loaded it stays for the life of the process.
pub fn use_driver(path: &std::path::Path) -> Result<(), DriverLoadError> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    if !path.is_file() {
        return Err(DriverLoadError::Missing(path.to_owned()));
    }
    // SAFETY: loads a CUDA driver library, whose initialisers are sound to run; the handle is
    // leaked so the library stays loaded for the process's lifetime.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| {
        DriverLoadError::Load {
            path: path.to_owned(),
            source: Arc::new(e),
        }
    })?;
    std::mem::forget(lib);
    Ok(())
}

/// Why a CUDA driver library named by path did not load ([`use_driver`]).
#[derive(Clone, Debug, thiserror::Error)]
pub enum DriverLoadError {
    /// There is no file there.
    #[error("no CUDA driver library at {}", .0.display())]
    Missing(std::path::PathBuf),
    /// The loader refused it.
    #[error("cannot load the CUDA driver {}: {source}", path.display())]
    Load {
        /// The library.
        path: std::path::PathBuf,
        /// The loader's error.
        #[source]
        source: Arc<libloading::Error>,
    },
    /// The library `DWCP_LIBCUDA` names did not load.
    #[error("DWCP_LIBCUDA: {0}")]
    Env(#[source] Box<DriverLoadError>),
}

/// Loads the driver `DWCP_LIBCUDA` names, once per process; the error says why it failed.
pub(super) fn driver_from_env() -> Result<(), DriverLoadError> {
    static LOADED: std::sync::OnceLock<Result<(), DriverLoadError>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| match std::env::var_os("DWCP_LIBCUDA") {
            Some(p) => {
                use_driver(std::path::Path::new(&p)).map_err(|e| DriverLoadError::Env(Box::new(e)))
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
pub(super) fn pci_bus_id(ctx: &CudaContext) -> Result<String, DriverError> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    Ok(format!(
        "{:04x}:{:02x}:{:02x}.0",
        ctx.attribute(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
        ctx.attribute(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
        ctx.attribute(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?
    ))
}

/// The CUDA version the loaded driver supports, (major, minor); (0, 0) if it does not say.
pub(super) fn driver_cuda_version() -> (i32, i32) {
    let mut v = 0;
    // SAFETY: the driver library is loaded and initialised (`cuInit` succeeded); `v` is a
    // valid out-pointer.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&raw mut v) };
    if r.result().is_err() {
        return (0, 0);
    }
    (v / 1000, v % 1000 / 10)
}

/// Driver entry points the engine calls under one name where the driver has it and under
/// another where it does not (same signature): (preferred, fallback). The GPU image's driver
/// (550, CUDA 12.4) predates `cuEventElapsedTime_v2` (CUDA 12.8).
pub const DRIVER_FALLBACKS: &[(&str, &str)] = &[("cuEventElapsedTime_v2", "cuEventElapsedTime")];

pub(super) type ElapsedFn = unsafe extern "C" fn(
    *mut f32,
    cudarc::driver::sys::CUevent,
    cudarc::driver::sys::CUevent,
) -> cudarc::driver::sys::CUresult;

/// Milliseconds between two recorded, completed events: `cuEventElapsedTime_v2` where the
/// driver exports it, else `cuEventElapsedTime` (cudarc's `elapsed_ms` calls `_v2` alone and
/// panics on an older driver).
pub(super) fn event_elapsed_ms(start: &CudaEvent, stop: &CudaEvent) -> Result<f32, CudaError> {
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
