//! Binding data NICs to `vfio-pci` so the data plane can drive them from user space:
//! `driver_override`, unbind from the current driver, re-probe, then check the result and the
//! device's IOMMU group. ConnectX (mlx5) NICs are the exception: DPDK drives them beside the
//! kernel's `mlx5_core` (bifurcated), so they are never bound to vfio-pci.

use crate::sys::SysFs;

/// A device bound to vfio-pci.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    /// PCI address, `0000:00:03.0`.
    pub pci: String,
    /// The driver it had before (`e1000e`), if any.
    pub previous_driver: Option<String>,
    /// Its IOMMU group, whose `/dev/vfio/N` the data plane opens.
    pub iommu_group: String,
}

/// Why a device could not be bound.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VfioError {
    /// No IOMMU: vfio cannot isolate devices.
    #[error(
        "no IOMMU is active (/sys/kernel/iommu_groups is empty): enable VT-d/AMD-Vi in the \
         firmware and put intel_iommu=on (or amd_iommu=on) iommu=pt on the kernel command line"
    )]
    NoIommu,
    /// The configured PCI address names no device.
    #[error("{0}: no such PCI device on this machine")]
    NoDevice(String),
    /// The vfio-pci driver is not loaded.
    #[error("the vfio-pci driver is not loaded (module vfio-pci missing from the image?)")]
    NoDriver,
    /// A sysfs step failed.
    #[error("{pci}: {step} failed: {detail}")]
    Step {
        /// Device.
        pci: String,
        /// Which step.
        step: &'static str,
        /// The error.
        detail: String,
    },
    /// After probing, another driver (or none) holds the device.
    #[error("{pci}: after probing, the device is bound to {found} instead of vfio-pci")]
    NotBound {
        /// Device.
        pci: String,
        /// What holds it.
        found: String,
    },
    /// The device has no IOMMU group.
    #[error("{0}: the device has no IOMMU group")]
    NoGroup(String),
    /// A ConnectX (mlx5) NIC that the kernel's `mlx5_core` does not hold.
    #[error(
        "{pci} is a ConnectX (mlx5) NIC bound to {found}: DPDK's mlx5 driver runs beside the \
         kernel's mlx5_core (bifurcated), never on vfio-pci; give it back to mlx5_core (clear \
         driver_override) and keep mlx5_core and mlx5_ib in the image"
    )]
    Mlx5NotWithCore {
        /// Device.
        pci: String,
        /// What holds it.
        found: String,
    },
}

/// PCI vendor ID of Mellanox (NVIDIA networking), whose ConnectX NICs use mlx5.
const MELLANOX: &str = "0x15b3";

/// How a DPDK port's NIC was readied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// Bound to vfio-pci.
    Vfio(Bound),
    /// A ConnectX left with the kernel's `mlx5_core`, for DPDK's bifurcated mlx5 driver.
    Bifurcated {
        /// PCI address.
        pci: String,
    },
}

/// Readies a DPDK port's NIC: vfio-pci for most, left with `mlx5_core` for a ConnectX.
pub fn prepare(fs: &dyn SysFs, pci: &str) -> Result<Prepared, VfioError> {
    let dev = format!("/sys/bus/pci/devices/{pci}");
    let vendor = fs.read(&format!("{dev}/vendor")).unwrap_or_default();
    if vendor.trim() != MELLANOX {
        return bind(fs, pci).map(Prepared::Vfio);
    }
    match fs.link_name(&format!("{dev}/driver")) {
        Some(d) if d == "mlx5_core" => Ok(Prepared::Bifurcated {
            pci: pci.to_owned(),
        }),
        other => Err(VfioError::Mlx5NotWithCore {
            pci: pci.to_owned(),
            found: other.unwrap_or_else(|| "no driver".to_owned()),
        }),
    }
}

/// Whether the kernel has an active IOMMU.
pub fn iommu_present(fs: &dyn SysFs) -> bool {
    fs.list("/sys/kernel/iommu_groups")
        .is_ok_and(|g| !g.is_empty())
}

/// Binds one device to vfio-pci (a no-op when it already is).
pub fn bind(fs: &dyn SysFs, pci: &str) -> Result<Bound, VfioError> {
    if !iommu_present(fs) {
        return Err(VfioError::NoIommu);
    }
    let dev = format!("/sys/bus/pci/devices/{pci}");
    if !fs.exists(&dev) {
        return Err(VfioError::NoDevice(pci.to_owned()));
    }
    if !fs.exists("/sys/bus/pci/drivers/vfio-pci") {
        return Err(VfioError::NoDriver);
    }
    let step = |step: &'static str| {
        let pci = pci.to_owned();
        move |e: std::io::Error| VfioError::Step {
            pci,
            step,
            detail: e.to_string(),
        }
    };
    let previous = fs.link_name(&format!("{dev}/driver"));
    if previous.as_deref() != Some("vfio-pci") {
        fs.write(&format!("{dev}/driver_override"), "vfio-pci")
            .map_err(step("driver_override"))?;
        if previous.is_some() {
            fs.write(&format!("{dev}/driver/unbind"), pci)
                .map_err(step("unbind"))?;
        }
        fs.write("/sys/bus/pci/drivers_probe", pci)
            .map_err(step("probe"))?;
    }
    match fs.link_name(&format!("{dev}/driver")) {
        Some(d) if d == "vfio-pci" => {}
        other => {
            return Err(VfioError::NotBound {
                pci: pci.to_owned(),
                found: other.unwrap_or_else(|| "no driver".to_owned()),
            });
        }
    }
    let group = fs
        .link_name(&format!("{dev}/iommu_group"))
        .ok_or_else(|| VfioError::NoGroup(pci.to_owned()))?;
    Ok(Bound {
        pci: pci.to_owned(),
        previous_driver: previous,
        iommu_group: group,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// A tiny kernel: files, symlinks, and the effect of driver_override + drivers_probe.
    #[derive(Default)]
    struct FakeKernel {
        files: RefCell<BTreeMap<String, String>>,
        links: RefCell<BTreeMap<String, String>>,
        dirs: BTreeSet<String>,
        writes: RefCell<Vec<(String, String)>>,
    }

    impl SysFs for FakeKernel {
        fn read(&self, path: &str) -> std::io::Result<String> {
            self.files
                .borrow()
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::ErrorKind::NotFound.into())
        }
        fn write(&self, path: &str, value: &str) -> std::io::Result<()> {
            self.writes
                .borrow_mut()
                .push((path.to_owned(), value.to_owned()));
            let dev = format!("/sys/bus/pci/devices/{value}");
            if path.ends_with("/driver/unbind") {
                self.links.borrow_mut().remove(&format!("{dev}/driver"));
            } else if path == "/sys/bus/pci/drivers_probe" {
                let over = self
                    .files
                    .borrow()
                    .get(&format!("{dev}/driver_override"))
                    .cloned();
                let driver = over.unwrap_or_else(|| "e1000e".into());
                self.links
                    .borrow_mut()
                    .insert(format!("{dev}/driver"), driver);
            } else {
                self.files
                    .borrow_mut()
                    .insert(path.to_owned(), value.to_owned());
            }
            Ok(())
        }
        fn exists(&self, path: &str) -> bool {
            self.dirs.contains(path) || self.files.borrow().contains_key(path)
        }
        fn list(&self, dir: &str) -> std::io::Result<Vec<String>> {
            let prefix = format!("{dir}/");
            Ok(self
                .dirs
                .iter()
                .filter_map(|d| d.strip_prefix(&prefix))
                .map(str::to_owned)
                .collect())
        }
        fn link_name(&self, path: &str) -> Option<String> {
            self.links.borrow().get(path).cloned()
        }
    }

    const PCI: &str = "0000:00:03.0";

    fn machine(iommu: bool) -> FakeKernel {
        let mut k = FakeKernel::default();
        k.dirs.insert(format!("/sys/bus/pci/devices/{PCI}"));
        k.dirs.insert("/sys/bus/pci/drivers/vfio-pci".into());
        k.dirs.insert("/sys/kernel/iommu_groups".into());
        if iommu {
            k.dirs.insert("/sys/kernel/iommu_groups/7".into());
            k.links.borrow_mut().insert(
                format!("/sys/bus/pci/devices/{PCI}/iommu_group"),
                "7".into(),
            );
        }
        k.links.borrow_mut().insert(
            format!("/sys/bus/pci/devices/{PCI}/driver"),
            "e1000e".into(),
        );
        k
    }

    #[test]
    fn binds_in_the_right_order() {
        let k = machine(true);
        let b = bind(&k, PCI).unwrap();
        assert_eq!(
            b,
            Bound {
                pci: PCI.into(),
                previous_driver: Some("e1000e".into()),
                iommu_group: "7".into()
            }
        );
        let dev = format!("/sys/bus/pci/devices/{PCI}");
        let writes: Vec<(String, String)> = k.writes.borrow().clone();
        assert_eq!(
            writes,
            vec![
                (format!("{dev}/driver_override"), "vfio-pci".into()),
                (format!("{dev}/driver/unbind"), PCI.into()),
                ("/sys/bus/pci/drivers_probe".into(), PCI.into()),
            ]
        );
        // Binding again changes nothing.
        k.writes.borrow_mut().clear();
        bind(&k, PCI).unwrap();
        assert!(k.writes.borrow().is_empty());
    }

    #[test]
    fn a_connectx_stays_with_mlx5_core_and_is_never_bound_to_vfio() {
        let mut k = machine(false);
        let dev = format!("/sys/bus/pci/devices/{PCI}");
        k.files
            .get_mut()
            .insert(format!("{dev}/vendor"), "0x15b3\n".into());
        k.links
            .get_mut()
            .insert(format!("{dev}/driver"), "mlx5_core".into());
        // No IOMMU needed: the NIC stays with the kernel.
        assert_eq!(
            prepare(&k, PCI).unwrap(),
            Prepared::Bifurcated { pci: PCI.into() }
        );
        assert!(k.writes.borrow().is_empty());
        // One that someone bound to vfio-pci is named, not used.
        k.links
            .get_mut()
            .insert(format!("{dev}/driver"), "vfio-pci".into());
        let e = prepare(&k, PCI).unwrap_err();
        assert_eq!(
            e,
            VfioError::Mlx5NotWithCore {
                pci: PCI.into(),
                found: "vfio-pci".into()
            }
        );
        assert!(
            e.to_string()
                .contains("ConnectX (mlx5) NIC bound to vfio-pci"),
            "{e}"
        );
        assert!(k.writes.borrow().is_empty());
    }

    #[test]
    fn other_nics_are_bound_to_vfio() {
        let k = machine(true);
        k.files.borrow_mut().insert(
            format!("/sys/bus/pci/devices/{PCI}/vendor"),
            "0x8086\n".into(),
        );
        assert!(matches!(prepare(&k, PCI), Ok(Prepared::Vfio(_))));
    }

    #[test]
    fn no_iommu_is_a_clear_error() {
        let e = bind(&machine(false), PCI).unwrap_err();
        assert_eq!(e, VfioError::NoIommu);
        assert!(e.to_string().contains("intel_iommu=on"));
    }

    #[test]
    fn unknown_device() {
        let e = bind(&machine(true), "0000:00:09.0").unwrap_err();
        assert_eq!(e, VfioError::NoDevice("0000:00:09.0".into()));
    }

    #[test]
    fn probe_that_does_not_take() {
        let k = machine(true);
        // Something resets driver_override: the probe gives the device back to e1000e.
        k.files.borrow_mut().insert("ignore".into(), String::new());
        let real_write = k.write(
            &format!("/sys/bus/pci/devices/{PCI}/driver_override"),
            "e1000e",
        );
        real_write.unwrap();
        struct Stubborn<'a>(&'a FakeKernel);
        impl SysFs for Stubborn<'_> {
            fn read(&self, p: &str) -> std::io::Result<String> {
                self.0.read(p)
            }
            fn write(&self, p: &str, v: &str) -> std::io::Result<()> {
                if p.ends_with("driver_override") {
                    Ok(())
                } else {
                    self.0.write(p, v)
                }
            }
            fn exists(&self, p: &str) -> bool {
                self.0.exists(p)
            }
            fn list(&self, d: &str) -> std::io::Result<Vec<String>> {
                self.0.list(d)
            }
            fn link_name(&self, p: &str) -> Option<String> {
                self.0.link_name(p)
            }
        }
        let e = bind(&Stubborn(&k), PCI).unwrap_err();
        assert_eq!(
            e,
            VfioError::NotBound {
                pci: PCI.into(),
                found: "e1000e".into()
            }
        );
    }
}
