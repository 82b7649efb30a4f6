//! The appliance's PID 1: mounts, console, modules, config discovery and validation,
//! hugepages, cores and IRQs, vfio binding, the NVIDIA driver of a GPU image, data-plane
//! supervision and clean shutdown (docs/architecture.md, "Boot flow").
//!
//! Links the config schema only (`dwcp-provisioning`). Everything that reads
//! or writes sysfs/procfs goes through [`sys::SysFs`], so the logic is unit-tested on a fake
//! tree; [`boot`] is the real-machine flow, tested under QEMU.

#![deny(unsafe_code)]

pub mod boot;
pub mod boot_assessment;
pub mod boot_disk;
pub mod config_source;
pub mod console;
pub mod cpus;
pub mod ethtool;
pub mod gpu;
pub mod hugepages;
pub mod irq;
pub mod lifecycle;
pub mod management;
pub mod modules;
pub mod rdma;
pub mod safe_status;
pub mod sntp;
pub mod supervise;
pub mod sys;
pub mod vfio;
