//! The QEMU harness: boots appliance artifacts (direct kernel, UEFI disk, PXE) under TCG by
//! default, wires virtual links between nodes, reads the serial console and enforces
//! time-outs, cleaning up every process it started.
//!
//! The harness arrives with the boot-path issue.

#![deny(unsafe_code)]
