//! DWCP node provisioning: the node configuration schema and its validation (the one source
//! of truth for every config field), and — behind the default `cli` feature — the operator CLI
//! `dwcp`.
//!
//! `init` and `dataplane` depend on this crate with `default-features = false`: they get the
//! schema, [`load_file`] and [`check`], and none of the CLI.

#![deny(unsafe_code)]

pub mod cmdline;
pub mod docs;
pub mod document;
pub mod example;
pub mod schema;
pub mod structure;
pub mod summary;
pub mod types;
pub mod validate;

pub use document::{Diagnostic, FieldPath, SourceFile};
pub use schema::NodeConfig;
pub use validate::{LoadError, check, load_file};

#[cfg(feature = "cli")]
pub mod cli;
