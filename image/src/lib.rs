//! Builds the appliance's boot artifacts from a pinned Debian kernel package: the kernel and
//! its module closure, the initramfs (newc cpio, gzip) and a manifest of what went in.
//!
//! Generic mechanism only: this crate knows files, modules and archives, not DWCP config
//! fields; the caller says which files go where. A GPU image adds the NVIDIA driver stack
//! (`nvidia`).

#![deny(unsafe_code)]

pub mod build;
pub mod disk;
pub mod initramfs;
pub mod kernel;
pub mod modules;
pub mod nvidia;

pub use build::{ImageSpec, Manifest, build};
pub use kernel::{KernelPin, cache_dir, fetch};
