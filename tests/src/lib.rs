//! Workspace-level integration tests: dependency rules between crates now; netns traffic
//! tests and QEMU boot, provisioning and tunnel tests as those issues land. The tests are in
//! `tests/tests/`; this library holds what they share.

#![deny(unsafe_code)]

use std::path::PathBuf;

/// The workspace root (where `Cargo.toml` with `[workspace]` is).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}
