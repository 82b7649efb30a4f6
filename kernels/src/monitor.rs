//! GPU status for operators through NVIDIA's management library (NVML, loaded at run time
//! when present): name, memory, utilisation and temperature of the GPU the CUDA engine runs
//! on, found by its PCI address, sampled by a thread of its own (the control loop reads the
//! latest sample).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};

/// Names the NVML library to load instead of the driver's `libnvidia-ml.so.1` (the tests'
/// stand-in, `crate::sim::build_nvml`), as `DWCP_LIBCUDA` does for the CUDA driver.
pub const LIBRARY_ENV: &str = "DWCP_LIBNVML";

/// One sample of a GPU's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuSnapshot {
    /// Device name.
    pub name: String,
    /// Where it is (`0000:41:00.0`).
    pub pci_bus_id: String,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Free memory, bytes.
    pub memory_free: u64,
    /// GPU utilisation over the driver's last sample period, percent.
    pub utilization_pct: Option<u32>,
    /// Core temperature, °C.
    pub temperature_c: Option<u32>,
    /// Power draw, milliwatts.
    pub power_mw: Option<u32>,
    /// Why the clocks are below their maximum now (NVML's clock event reasons, a bit mask:
    /// [`CLOCK_EVENT_REASONS`]).
    pub clock_events: Option<u64>,
    /// ECC errors since the driver loaded: (corrected, uncorrected); `None` with ECC off.
    pub ecc_errors: Option<(u64, u64)>,
}

/// NVML's clock event ("throttle") reasons, bit and name. A GPU slowed by heat or power does
/// the offload's work more slowly; these say why.
pub const CLOCK_EVENT_REASONS: [(u64, &str); 9] = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

impl GpuSnapshot {
    /// The clock event reasons active in this sample, by name.
    pub fn clock_event_names(&self) -> Vec<&'static str> {
        let bits = self.clock_events.unwrap_or(0);
        CLOCK_EVENT_REASONS
            .iter()
            .filter(|(bit, _)| bits & bit != 0)
            .map(|(_, name)| *name)
            .collect()
    }

    /// One line for the console.
    pub fn line(&self) -> String {
        let opt = |v: Option<u32>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v}{unit}"));
        let mut line = format!(
            "{} at PCI {} | memory {} MiB free of {} MiB | utilisation {} | temperature {} | power {}",
            self.name,
            self.pci_bus_id,
            self.memory_free >> 20,
            self.memory_total >> 20,
            opt(self.utilization_pct, "%"),
            opt(self.temperature_c, "C"),
            opt(self.power_mw.map(|mw| (mw + 500) / 1000), " W")
        );
        let slowed: Vec<&str> = self
            .clock_event_names()
            .into_iter()
            .filter(|n| *n != "gpu_idle")
            .collect();
        if !slowed.is_empty() {
            line.push_str(&format!(" | clocks held down by {}", slowed.join(", ")));
        }
        if let Some((corrected, uncorrected)) = self.ecc_errors {
            line.push_str(&format!(
                " | ECC errors {corrected} corrected, {uncorrected} uncorrected"
            ));
        }
        line
    }
}

/// An NVML handle on one device, the one at a PCI address. (NVML numbers devices by PCI
/// order; CUDA's ordinals follow `CUDA_VISIBLE_DEVICES` and put the fastest first, so on a
/// node with several GPUs the same number can be two different GPUs.)
pub struct GpuMonitor {
    nvml: Nvml,
    library: String,
    pci_bus_id: String,
}

/// Why there is no GPU status from NVML.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A statically linked binary cannot load NVML.
    #[error("a statically linked binary loads no NVML")]
    StaticBuild,
    /// [`LIBRARY_ENV`] names a file that is not there.
    #[error("{LIBRARY_ENV}: no NVML library at {}", .0.display())]
    Missing(std::path::PathBuf),
    /// The library [`LIBRARY_ENV`] names did not open.
    #[error("{LIBRARY_ENV}: {0}")]
    Env(#[source] Box<MonitorError>),
    /// NVML did not initialise.
    #[error("NVML ({}) did not start: {source}", library.display())]
    Start {
        /// The library.
        library: std::path::PathBuf,
        /// NVML's error.
        #[source]
        source: nvml_wrapper::error::NvmlError,
    },
    /// NVML knows no GPU at the CUDA engine's PCI address.
    #[error("NVML ({}) has no GPU at PCI {pci_bus_id}: {source}", library.display())]
    NoGpu {
        /// The library.
        library: std::path::PathBuf,
        /// Where the CUDA engine's device is.
        pci_bus_id: String,
        /// NVML's error.
        #[source]
        source: nvml_wrapper::error::NvmlError,
    },
}

impl GpuMonitor {
    /// Opens NVML on the GPU at `pci_bus_id` (the CUDA engine's
    /// [`crate::cuda::DeviceInfo::pci_bus_id`]): the library [`LIBRARY_ENV`] names, else the
    /// driver's. Says why not when there is no NVML or it does not know that GPU.
    pub fn open(pci_bus_id: &str) -> Result<Self, MonitorError> {
        if crate::cuda::STATIC_BUILD {
            return Err(MonitorError::StaticBuild);
        }
        if let Some(path) = std::env::var_os(LIBRARY_ENV) {
            let path = Path::new(&path);
            if !path.is_file() {
                return Err(MonitorError::Missing(path.to_owned()));
            }
            return Self::open_with(path, pci_bus_id).map_err(|e| MonitorError::Env(Box::new(e)));
        }
        Self::open_with(Path::new("libnvidia-ml.so.1"), pci_bus_id).or_else(|first| {
            Self::open_with(Path::new("libnvidia-ml.so"), pci_bus_id).map_err(|_| first)
        })
    }

    /// Opens the NVML library `library` (a path, or a name the loader searches for) on the GPU
    /// at `pci_bus_id`.
    pub fn open_with(library: &Path, pci_bus_id: &str) -> Result<Self, MonitorError> {
        let nvml = Nvml::builder()
            .lib_path(library.as_os_str())
            .init()
            .map_err(|source| MonitorError::Start {
                library: library.to_owned(),
                source,
            })?;
        nvml.device_by_pci_bus_id(pci_bus_id)
            .map_err(|source| MonitorError::NoGpu {
                library: library.to_owned(),
                pci_bus_id: pci_bus_id.to_owned(),
                source,
            })?;
        Ok(Self {
            nvml,
            library: library.display().to_string(),
            pci_bus_id: pci_bus_id.to_owned(),
        })
    }

    /// Where the status comes from, for the start-up line.
    pub fn describe(&self) -> String {
        format!(
            "from NVML ({}) for the GPU at PCI {}",
            self.library, self.pci_bus_id
        )
    }

    /// Samples the device now.
    pub fn snapshot(&self) -> Option<GpuSnapshot> {
        let d = self
            .nvml
            .device_by_pci_bus_id(self.pci_bus_id.as_str())
            .ok()?;
        let mem = d.memory_info().ok();
        Some(GpuSnapshot {
            name: d.name().unwrap_or_else(|_| "unknown GPU".into()),
            pci_bus_id: self.pci_bus_id.clone(),
            memory_total: mem.as_ref().map_or(0, |m| m.total),
            memory_free: mem.as_ref().map_or(0, |m| m.free),
            utilization_pct: d.utilization_rates().ok().map(|u| u.gpu),
            temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
            power_mw: d.power_usage().ok(),
            clock_events: d.current_throttle_reasons().ok().map(|r| r.bits()),
            ecc_errors: d
                .total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
                .and_then(|c| {
                    d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                        .map(|u| (c, u))
                })
                .ok(),
        })
    }
}

/// How often [`GpuSampler`] samples the GPU.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(2);

/// The latest sample of a GPU, taken by a thread of its own: NVML calls can wait on the
/// driver (seconds while a GPU is being reset or has fallen off the bus), and the control
/// loop that reads the samples for metrics and the console must not wait with them.
pub struct GpuSampler {
    latest: Arc<Mutex<Option<(GpuSnapshot, Instant)>>>,
}

impl GpuSampler {
    /// Starts the sampling thread on `monitor`, every [`SAMPLE_PERIOD`].
    pub fn start(monitor: GpuMonitor) -> std::io::Result<Self> {
        Self::start_with(move || monitor.snapshot(), SAMPLE_PERIOD)
    }

    /// Starts a thread that calls `sample` every `period` and keeps its latest answer.
    pub fn start_with(
        mut sample: impl FnMut() -> Option<GpuSnapshot> + Send + 'static,
        period: Duration,
    ) -> std::io::Result<Self> {
        let latest = Arc::new(Mutex::new(None));
        let shared = Arc::downgrade(&latest);
        std::thread::Builder::new()
            .name("dwcp-gpu-status".into())
            .spawn(move || {
                loop {
                    let s = sample();
                    // The sampler was dropped: nobody reads the samples any more.
                    let Some(latest) = shared.upgrade() else {
                        return;
                    };
                    if let Some(s) = s {
                        *latest.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some((s, Instant::now()));
                    }
                    drop(latest);
                    std::thread::sleep(period);
                }
            })?;
        Ok(Self { latest })
    }

    /// The latest sample and how old it is, without waiting for NVML; `None` before the first.
    pub fn latest(&self) -> Option<(GpuSnapshot, Duration)> {
        let l = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        l.as_ref().map(|(s, at)| (s.clone(), at.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{NVML_DEVICE, build_nvml};

    #[test]
    fn snapshot_line_says_what_is_unknown() {
        let s = GpuSnapshot {
            name: "NVIDIA H100 80GB HBM3".into(),
            pci_bus_id: "0000:41:00.0".into(),
            memory_total: 80 << 30,
            memory_free: 79 << 30,
            utilization_pct: Some(3),
            temperature_c: None,
            power_mw: Some(312_600),
            clock_events: Some(0x1 | 0x4 | 0x40),
            ecc_errors: None,
        };
        assert_eq!(
            s.line(),
            "NVIDIA H100 80GB HBM3 at PCI 0000:41:00.0 | memory 80896 MiB free of 81920 MiB | utilisation 3% | temperature n/a | power 313 W | clocks held down by sw_power_cap, hw_thermal_slowdown"
        );
        let s = GpuSnapshot {
            clock_events: Some(0x1),
            ecc_errors: Some((2, 1)),
            power_mw: None,
            ..s
        };
        assert!(
            s.line()
                .ends_with("| power n/a | ECC errors 2 corrected, 1 uncorrected"),
            "an idle GPU is not held down: {}",
            s.line()
        );
    }

    #[test]
    fn no_nvml_says_why_not_a_panic() {
        match GpuMonitor::open("0000:41:00.0") {
            Ok(m) => assert!(m.snapshot().is_some(), "NVML opened but gave no sample"),
            Err(why) => assert!(why.to_string().contains("NVML"), "{why}"),
        }
    }

    /// The NVML stand-in, built once per test process.
    fn stand_in() -> &'static Path {
        static LIB: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
        LIB.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("dwcp-sim-nvml-{}", std::process::id()));
            build_nvml(&dir).unwrap_or_else(|e| panic!("{e}"))
        })
    }

    #[test]
    fn the_gpu_is_found_by_its_pci_address_not_by_number() {
        let m = GpuMonitor::open_with(stand_in(), NVML_DEVICE.pci_bus_id).unwrap();
        let s = m.snapshot().unwrap();
        assert_eq!(
            s,
            GpuSnapshot {
                name: NVML_DEVICE.name.into(),
                pci_bus_id: NVML_DEVICE.pci_bus_id.into(),
                memory_total: NVML_DEVICE.memory_total,
                memory_free: NVML_DEVICE.memory_free,
                utilization_pct: Some(NVML_DEVICE.utilization_pct),
                temperature_c: Some(NVML_DEVICE.temperature_c),
                power_mw: Some(NVML_DEVICE.power_mw),
                clock_events: Some(NVML_DEVICE.clock_events),
                ecc_errors: Some(NVML_DEVICE.ecc_errors),
            }
        );
        assert_eq!(s.clock_event_names(), ["sw_thermal_slowdown"]);
        assert!(
            m.describe().ends_with("for the GPU at PCI 0000:41:00.0"),
            "{}",
            m.describe()
        );
        // NVML's first GPU is another one: its number, CUDA's only ordinal, would be wrong.
        let nvml = Nvml::builder()
            .lib_path(stand_in().as_os_str())
            .init()
            .unwrap();
        let first = nvml.device_by_index(0).unwrap().name().unwrap();
        assert_ne!(first, NVML_DEVICE.name);
        // A GPU without ECC has no counts rather than zeros.
        let other = GpuMonitor::open_with(stand_in(), "0000:17:00.0").unwrap();
        assert_eq!(other.snapshot().unwrap().ecc_errors, None);
        // The forms of a bus id NVML takes.
        for id in ["0000:41:00", "41:00.0", "00000000:41:00.0"] {
            let s = GpuMonitor::open_with(stand_in(), id)
                .unwrap()
                .snapshot()
                .unwrap();
            assert_eq!(s.name, NVML_DEVICE.name, "{id}");
        }
    }

    #[test]
    fn a_sample_is_read_without_waiting_for_nvml() {
        let s = GpuSnapshot {
            name: "slow GPU".into(),
            ..GpuSnapshot::default()
        };
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = Arc::clone(&calls);
        let sampler = GpuSampler::start_with(
            move || {
                // The first answers at once, every later one after 2 s (a GPU being reset).
                if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                    std::thread::sleep(Duration::from_secs(2));
                }
                Some(s.clone())
            },
            Duration::from_millis(10),
        )
        .unwrap();
        let t = Instant::now();
        while sampler.latest().is_none() {
            assert!(t.elapsed() < Duration::from_secs(5), "no first sample");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The thread is now inside a slow call: reading still does not wait.
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let (got, age) = sampler.latest().unwrap();
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
        assert_eq!(got.name, "slow GPU");
        assert!(
            age >= Duration::from_millis(90),
            "the sample's age: {age:?}"
        );
        assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    }

    #[test]
    fn a_missing_library_or_gpu_is_named() {
        let why = GpuMonitor::open_with(stand_in(), "0000:99:00.0")
            .err()
            .unwrap()
            .to_string();
        assert!(why.contains("has no GPU at PCI 0000:99:00.0"), "{why}");
        let why = GpuMonitor::open_with(stand_in(), "not a bus id")
            .err()
            .unwrap()
            .to_string();
        assert!(why.contains("no GPU at PCI not a bus id"), "{why}");
        let why =
            GpuMonitor::open_with(Path::new("/nonexistent/libnvidia-ml.so.1"), "0000:41:00.0")
                .err()
                .unwrap()
                .to_string();
        assert!(
            why.contains("NVML (/nonexistent/libnvidia-ml.so.1) did not start"),
            "{why}"
        );
    }
}
