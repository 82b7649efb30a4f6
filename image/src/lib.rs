//! Builds the appliance's boot artifacts from a pinned Debian kernel package: the kernel and
//! its module closure, the initramfs (newc cpio), the GPT disk image and the PXE tree.
//!
//! Generic mechanism only: this crate knows files, modules and partitions, not DWCP config
//! fields. The builders arrive with the boot-path and provisioning issues.

#![deny(unsafe_code)]
