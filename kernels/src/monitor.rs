//! GPU status for operators through NVIDIA's management library (NVML, loaded at run time
//! when present): name, memory, utilisation and temperature, sampled by the control thread.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;

/// One sample of a GPU's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuSnapshot {
    /// Device name.
    pub name: String,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Free memory, bytes.
    pub memory_free: u64,
    /// GPU utilisation over the driver's last sample period, percent.
    pub utilization_pct: Option<u32>,
    /// Core temperature, °C.
    pub temperature_c: Option<u32>,
}

impl GpuSnapshot {
    /// One line for the console.
    pub fn line(&self) -> String {
        let opt = |v: Option<u32>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v}{unit}"));
        format!(
            "{} | memory {} MiB free of {} MiB | utilisation {} | temperature {}",
            self.name,
            self.memory_free >> 20,
            self.memory_total >> 20,
            opt(self.utilization_pct, "%"),
            opt(self.temperature_c, "C")
        )
    }
}

/// An NVML handle on one device.
pub struct GpuMonitor {
    nvml: Nvml,
    index: u32,
}

impl GpuMonitor {
    /// Opens NVML for device `index`; `None` when NVML or the device is not there.
    pub fn new(index: u32) -> Option<Self> {
        if crate::cuda::STATIC_BUILD {
            return None;
        }
        let nvml = ["libnvidia-ml.so.1", "libnvidia-ml.so"]
            .iter()
            .find_map(|lib| {
                Nvml::builder()
                    .lib_path(std::ffi::OsStr::new(lib))
                    .init()
                    .ok()
            })?;
        nvml.device_by_index(index).ok()?;
        Some(Self { nvml, index })
    }

    /// Samples the device now.
    pub fn snapshot(&self) -> Option<GpuSnapshot> {
        let d = self.nvml.device_by_index(self.index).ok()?;
        let mem = d.memory_info().ok();
        Some(GpuSnapshot {
            name: d.name().unwrap_or_else(|_| "unknown GPU".into()),
            memory_total: mem.as_ref().map_or(0, |m| m.total),
            memory_free: mem.as_ref().map_or(0, |m| m.free),
            utilization_pct: d.utilization_rates().ok().map(|u| u.gpu),
            temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_line_says_what_is_unknown() {
        let s = GpuSnapshot {
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_total: 80 << 30,
            memory_free: 79 << 30,
            utilization_pct: Some(3),
            temperature_c: None,
        };
        assert_eq!(
            s.line(),
            "NVIDIA H100 80GB HBM3 | memory 80896 MiB free of 81920 MiB | utilisation 3% | temperature n/a"
        );
    }

    #[test]
    fn no_nvml_is_none_not_a_panic() {
        match GpuMonitor::new(0) {
            Some(m) => assert!(m.snapshot().is_some(), "NVML opened but gave no sample"),
            None => assert!(
                !crate::cuda::driver_present(),
                "the NVIDIA driver is here but NVML did not open"
            ),
        }
    }
}
