//! The NVIDIA driver of a GPU image: loads its kernel modules in a step of their own (a node
//! without a GPU says so in one line, not as a module failure), lists the GPUs the driver
//! found and makes the device nodes `libcuda` opens (there is no `nvidia-modprobe` here).

use std::path::Path;

use crate::modules::{self, Loaded};
use crate::sys::SysFs;

/// Where a GPU image keeps the NVIDIA modules, under `lib/modules/RELEASE/` (the image
/// builder's `GPU_MODULE_DIR`).
pub const MODULE_DIR: &str = "nvidia";
/// The modules, in load order (`nvidia-uvm` needs `nvidia`; CUDA needs both).
pub const MODULES: [&str; 2] = ["nvidia.ko", "nvidia-uvm.ko"];
/// The NVIDIA character devices' fixed major number.
pub const NVIDIA_MAJOR: u32 = 195;
/// `/dev/nvidiactl`'s minor number.
pub const CTL_MINOR: u32 = 255;

/// One GPU as the driver lists it in `/proc/driver/nvidia/gpus/BUS/information`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    /// PCI address, e.g. `0000:17:00.0`.
    pub bus: String,
    /// Model, e.g. `NVIDIA H100 80GB HBM3`.
    pub model: String,
    /// Its `/dev/nvidiaN` minor.
    pub minor: u32,
}

/// How bringing up the driver went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The image carries no NVIDIA driver (a standard image).
    NotInImage,
    /// `nvidia.ko` loaded nowhere: this node has no NVIDIA GPU.
    NoGpu,
    /// The driver is up: its version, the GPUs and the device nodes made.
    Ready {
        /// From `/proc/driver/nvidia/version`.
        version: String,
        /// The GPUs it drives.
        gpus: Vec<Gpu>,
    },
    /// Something failed; what.
    Failed(String),
}

impl Outcome {
    /// The console line for this outcome.
    pub fn line(&self) -> String {
        match self {
            Self::NotInImage => "gpu: no NVIDIA driver in this image; the data plane uses the CPU engine".into(),
            Self::NoGpu => "gpu: NVIDIA driver present, but no NVIDIA GPU on this node (nvidia.ko: no such device)".into(),
            Self::Ready { version, gpus } => {
                let list: Vec<String> = gpus
                    .iter()
                    .map(|g| format!("/dev/nvidia{} {} ({})", g.minor, g.bus, g.model))
                    .collect();
                format!(
                    "gpu: NVIDIA driver {version}, {} GPU(s): {}",
                    gpus.len(),
                    list.join(", ")
                )
            }
            Self::Failed(why) => format!("gpu: FAILED {why}"),
        }
    }
}

/// Reads `Key: value` lines (the driver's `/proc` format; tabs and spaces around the value).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// The GPUs the driver lists under `/proc/driver/nvidia/gpus/`, by minor number.
pub fn gpus(fs: &dyn SysFs) -> Vec<Gpu> {
    let dir = "/proc/driver/nvidia/gpus";
    let mut out: Vec<Gpu> = fs
        .list(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|bus| {
            let text = fs.read(&format!("{dir}/{bus}/information")).ok()?;
            Some(Gpu {
                minor: field(&text, "Device Minor")?.parse().ok()?,
                model: field(&text, "Model").unwrap_or("unknown model").to_owned(),
                bus,
            })
        })
        .collect();
    out.sort_by_key(|g| g.minor);
    out
}

/// The driver's version from `/proc/driver/nvidia/version`
/// (`NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.261.03  …`).
pub fn driver_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_owned)
}

/// A character device node to make: path, major, minor.
pub type Node = (String, u32, u32);

/// The device nodes CUDA opens: `/dev/nvidiactl`, one `/dev/nvidiaN` per GPU, and
/// `/dev/nvidia-uvm` and `-uvm-tools` (their major is dynamic: from `/proc/devices`).
pub fn device_nodes(proc_devices: &str, gpus: &[Gpu]) -> Result<Vec<Node>, String> {
    let major_of = |name: &str| {
        proc_devices.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            let major = w.next()?.parse::<u32>().ok()?;
            (w.next() == Some(name)).then_some(major)
        })
    };
    let uvm =
        major_of("nvidia-uvm").ok_or("nvidia-uvm is loaded but not in /proc/devices".to_owned())?;
    let mut nodes = vec![("/dev/nvidiactl".to_owned(), NVIDIA_MAJOR, CTL_MINOR)];
    nodes.extend(
        gpus.iter()
            .map(|g| (format!("/dev/nvidia{}", g.minor), NVIDIA_MAJOR, g.minor)),
    );
    nodes.push(("/dev/nvidia-uvm".to_owned(), uvm, 0));
    nodes.push(("/dev/nvidia-uvm-tools".to_owned(), uvm, 1));
    Ok(nodes)
}

/// Loads the driver's modules from `modules_dir` (`/lib/modules/RELEASE`), then lists the GPUs
/// and makes the device nodes. The caller prints [`Outcome::line`].
pub fn bring_up(fs: &dyn SysFs, modules_dir: &Path) -> Outcome {
    let dir = modules_dir.join(MODULE_DIR);
    if !dir.join(MODULES[0]).exists() {
        return Outcome::NotInImage;
    }
    for m in MODULES {
        match modules::load(&dir.join(m)) {
            Loaded::Loaded | Loaded::AlreadyLoaded => {}
            Loaded::NoDevice if m == MODULES[0] => return Outcome::NoGpu,
            Loaded::NoDevice => return Outcome::Failed(format!("{m}: no such device")),
            Loaded::Failed(e) => return Outcome::Failed(format!("{m}: {e}")),
        }
    }
    let gpus = gpus(fs);
    let version = fs
        .read("/proc/driver/nvidia/version")
        .ok()
        .and_then(|t| driver_version(&t))
        .unwrap_or_else(|| "of unknown version".into());
    let nodes = match fs
        .read("/proc/devices")
        .map_err(|e| format!("/proc/devices: {e}"))
        .and_then(|t| device_nodes(&t, &gpus))
    {
        Ok(n) => n,
        Err(e) => return Outcome::Failed(e),
    };
    for (path, major, minor) in nodes {
        if let Err(e) = mknod(&path, major, minor) {
            return Outcome::Failed(format!("cannot make {path} ({major}:{minor}): {e}"));
        }
    }
    Outcome::Ready { version, gpus }
}

fn mknod(path: &str, major: u32, minor: u32) -> nix::Result<()> {
    use nix::sys::stat::{Mode, SFlag, makedev};
    match nix::sys::stat::mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o660),
        makedev(u64::from(major), u64::from(minor)),
    ) {
        Err(nix::errno::Errno::EEXIST) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake tree under a temporary root.
    fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, crate::sys::RootedFs) {
        let dir = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let p = dir.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let fs = crate::sys::RootedFs::new(dir.path());
        (dir, fs)
    }

    const H100: &str = "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 0\nGPU UUID: \t GPU-5b1e\nBus Location: \t 0000:17:00.0\nDevice Minor: \t 1\nGPU Excluded:\t No\n";

    #[test]
    fn gpus_come_from_the_driver_s_proc_files_by_minor() {
        let (_d, fs) = tree(&[
            ("/proc/driver/nvidia/gpus/0000:17:00.0/information", H100),
            (
                "/proc/driver/nvidia/gpus/0000:03:00.0/information",
                "Model: \t\t NVIDIA L4\nDevice Minor: \t 0\n",
            ),
            // A GPU whose file lacks the minor is not listed (no node can be made for it).
            (
                "/proc/driver/nvidia/gpus/0000:99:00.0/information",
                "Model: x\n",
            ),
        ]);
        let g = gpus(&fs);
        assert_eq!(
            g,
            [
                Gpu {
                    bus: "0000:03:00.0".into(),
                    model: "NVIDIA L4".into(),
                    minor: 0
                },
                Gpu {
                    bus: "0000:17:00.0".into(),
                    model: "NVIDIA H100 80GB HBM3".into(),
                    minor: 1
                },
            ]
        );
        let (_e, none) = tree(&[]);
        assert!(gpus(&none).is_empty());
    }

    #[test]
    fn device_nodes_take_uvm_s_major_from_proc_devices() {
        let devices = "Character devices:\n  1 mem\n195 nvidia-frontend\n226 drm\n507 nvidia-uvm\n\nBlock devices:\n  8 sd\n";
        let g = [Gpu {
            bus: "0000:17:00.0".into(),
            model: "H100".into(),
            minor: 1,
        }];
        assert_eq!(
            device_nodes(devices, &g).unwrap(),
            [
                ("/dev/nvidiactl".to_owned(), 195, 255),
                ("/dev/nvidia1".to_owned(), 195, 1),
                ("/dev/nvidia-uvm".to_owned(), 507, 0),
                ("/dev/nvidia-uvm-tools".to_owned(), 507, 1),
            ]
        );
        let e = device_nodes("Character devices:\n195 nvidia-frontend\n", &g).unwrap_err();
        assert!(e.contains("nvidia-uvm"), "{e}");
    }

    #[test]
    fn driver_version_is_read_from_the_nvrm_line() {
        let text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.261.03  Wed Jun 11 12:00:00 UTC 2025\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";
        assert_eq!(driver_version(text).as_deref(), Some("535.261.03"));
        assert_eq!(driver_version("GCC version: 12.2.0\n"), None);
    }

    #[test]
    fn an_image_without_the_driver_says_so_and_loads_nothing() {
        let (_d, fs) = tree(&[]);
        let modules = tempfile::tempdir().unwrap();
        let o = bring_up(&fs, modules.path());
        assert_eq!(o, Outcome::NotInImage);
        assert!(o.line().contains("CPU engine"), "{}", o.line());
    }

    #[test]
    fn a_module_that_cannot_load_is_a_failure_naming_it() {
        // Not an ELF module: the kernel refuses it (or, unprivileged, refuses us); either way
        // the outcome names the file and keeps the CPU engine.
        let (_d, fs) = tree(&[]);
        let modules = tempfile::tempdir().unwrap();
        let dir = modules.path().join(MODULE_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(MODULES[0]), b"not a module").unwrap();
        match bring_up(&fs, modules.path()) {
            Outcome::Failed(why) => assert!(why.starts_with("nvidia.ko: "), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_ready_line_lists_every_gpu() {
        let o = Outcome::Ready {
            version: "535.261.03".into(),
            gpus: vec![Gpu {
                bus: "0000:17:00.0".into(),
                model: "NVIDIA H100 80GB HBM3".into(),
                minor: 0,
            }],
        };
        assert_eq!(
            o.line(),
            "gpu: NVIDIA driver 535.261.03, 1 GPU(s): /dev/nvidia0 0000:17:00.0 (NVIDIA H100 80GB HBM3)"
        );
    }
}
