//! The appliance's PID 1 (DESIGN §3): mounts, console, modules, config discovery and
//! validation, hugepages, cores, vfio binding, data-plane supervision and clean shutdown.
//!
//! Links the config schema only (`dwcp-provisioning` without its CLI). So far: config
//! discovery ([`config_source`]); the rest of the boot flow arrives with the boot-path issue.

#![deny(unsafe_code)]

pub mod config_source;
