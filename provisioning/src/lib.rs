//! DWCP node provisioning: the node configuration schema and its validation (the one source
//! of truth for every config field), the generated config docs, example configs, the kernel
//! command line a config asks for, and the contracts init and the data plane share (exit
//! statuses, log shipping).
//!
//! `init`, `dataplane` and the operator CLI (`dwcp-cli`) all link it; it links none of them,
//! nor the image builder or the QEMU harness.

#![deny(unsafe_code)]

pub mod cmdline;
pub mod docs;
pub mod document;
pub mod example;
pub mod exit;
pub mod inventory;
pub mod schema;
pub mod structure;
pub mod summary;
pub mod syslog;
pub mod types;
pub mod validate;

pub use document::{Diagnostic, FieldPath, SourceFile};
pub use schema::NodeConfig;
pub use validate::{LoadError, check, load_file};
