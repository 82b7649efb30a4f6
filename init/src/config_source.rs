//! Finding and validating the node config at boot: the first candidate that exists wins, and
//! an invalid config is reported with every error instead of booting the data plane.
//!
//! Candidates, in order (docs/architecture.md, "Boot flow"): the `DWCP-CONFIG` partition on the boot disk
//! (`crate::boot_disk` chooses it), then `/etc/dwcp/dwcp.toml` in the initramfs. None
//! present: the node is unprovisioned.

use std::path::{Path, PathBuf};

use dwcp_provisioning::{Diagnostic, NodeConfig, SourceFile};

/// Path of the config inside the initramfs (PXE adds it there as a second initrd).
pub const INITRAMFS_CONFIG: &str = "etc/dwcp/dwcp.toml";

/// Where a config can come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Candidate {
    /// `dwcp.toml` on the config partition (FAT, label and GPT name `DWCP-CONFIG`).
    Partition {
        /// The block device, e.g. `vda2`.
        device: String,
        /// Where the file is once the partition is mounted.
        path: PathBuf,
    },
    /// A file in the root filesystem (the initramfs).
    InitramfsFile(PathBuf),
}

/// Where init mounts the config partition (read-only).
pub const PARTITION_MOUNT: &str = "run/dwcp/config-partition";

impl Candidate {
    /// The file the config is read from.
    pub fn path(&self) -> &Path {
        match self {
            Candidate::Partition { path, .. } | Candidate::InitramfsFile(path) => path,
        }
    }
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Candidate::Partition { device, .. } => {
                write!(f, "config partition /dev/{device} (DWCP-CONFIG)")
            }
            Candidate::InitramfsFile(p) => write!(f, "initramfs file {}", p.display()),
        }
    }
}

/// What init found.
#[derive(Debug)]
pub enum ConfigState {
    /// A valid config.
    Provisioned {
        /// Where it came from.
        source: Candidate,
        /// The config.
        config: Box<NodeConfig>,
    },
    /// The config partition's `dwcp.toml` is invalid, but the last-known-good copy init
    /// saved after an earlier READY is valid: the node runs with it and says so.
    LastGood {
        /// The partition.
        source: Candidate,
        /// The last-known-good config.
        config: Box<NodeConfig>,
        /// Why `dwcp.toml` was rejected.
        rejected: Vec<Diagnostic>,
    },
    /// A config that exists but cannot be used: safe mode, the errors on the console.
    Invalid {
        /// Where it came from.
        source: Candidate,
        /// Every problem, or one saying why the file could not be read.
        diagnostics: Vec<Diagnostic>,
    },
    /// No config anywhere: the node waits to be provisioned.
    Unprovisioned,
}

/// The candidates under `root` (`/` at boot; a temporary tree in tests), in order.
/// Name of the last-known-good copy on the config partition.
pub const LAST_GOOD: &str = "dwcp.last-good.toml";

/// The last-known-good config next to a partition candidate, if there is a valid one.
fn last_good(candidate: &Candidate) -> Option<NodeConfig> {
    let Candidate::Partition { path, .. } = candidate else {
        return None;
    };
    let p = path.with_file_name(LAST_GOOD);
    let text = std::fs::read_to_string(&p).ok()?;
    dwcp_provisioning::check(&SourceFile::new(p.display().to_string(), text)).ok()
}

/// The candidates under `root`, in order: the mounted config partition (when init found and
/// mounted one), then the initramfs file.
pub fn candidates(root: &Path, partition: Option<&str>) -> Vec<Candidate> {
    let mut c = Vec::new();
    if let Some(device) = partition {
        c.push(Candidate::Partition {
            device: device.to_owned(),
            path: root.join(PARTITION_MOUNT).join("dwcp.toml"),
        });
    }
    c.push(Candidate::InitramfsFile(root.join(INITRAMFS_CONFIG)));
    c
}

/// Looks for the config under `root` and validates the first one found.
pub fn discover(root: &Path, partition: Option<&str>) -> ConfigState {
    for candidate in candidates(root, partition) {
        let path = candidate.path().to_path_buf();
        let path = &path;
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                let src = SourceFile::new(path.display().to_string(), "");
                let d = src.diagnostic(
                    0,
                    dwcp_provisioning::FieldPath::root(),
                    format!("cannot read: {e}"),
                );
                return ConfigState::Invalid {
                    source: candidate,
                    diagnostics: vec![d],
                };
            }
        };
        let checked = SourceFile::from_bytes(path.display().to_string(), bytes)
            .map_err(|d| vec![d])
            .and_then(|src| dwcp_provisioning::check(&src));
        return match checked {
            Ok(config) => ConfigState::Provisioned {
                source: candidate,
                config: Box::new(config),
            },
            Err(diagnostics) => match last_good(&candidate) {
                Some(config) => ConfigState::LastGood {
                    source: candidate,
                    config: Box::new(config),
                    rejected: diagnostics,
                },
                None => ConfigState::Invalid {
                    source: candidate,
                    diagnostics,
                },
            },
        };
    }
    ConfigState::Unprovisioned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, text: &str) {
        let p = root.join(INITRAMFS_CONFIG);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn partition_wins_over_the_initramfs_and_is_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let text = dwcp_provisioning::example::example().unwrap();
        write(dir.path(), &text);
        let part = dir.path().join(PARTITION_MOUNT);
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(
            part.join("dwcp.toml"),
            text.replace("site-a-gw1", "from-partition"),
        )
        .unwrap();
        match discover(dir.path(), Some("vda2")) {
            ConfigState::Provisioned { config, source } => {
                assert_eq!(config.name.0, "from-partition");
                assert_eq!(
                    source.to_string(),
                    "config partition /dev/vda2 (DWCP-CONFIG)"
                );
            }
            other => panic!("{other:?}"),
        }
        // An empty partition falls back to the initramfs file.
        std::fs::remove_file(part.join("dwcp.toml")).unwrap();
        assert!(matches!(
            discover(dir.path(), Some("vda2")),
            ConfigState::Provisioned {
                source: Candidate::InitramfsFile(_),
                ..
            }
        ));
    }

    #[test]
    fn invalid_partition_config_falls_back_to_the_last_good_copy() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join(PARTITION_MOUNT);
        std::fs::create_dir_all(&part).unwrap();
        let text = dwcp_provisioning::example::example().unwrap();
        std::fs::write(
            part.join("dwcp.toml"),
            text.replace("mtu = 1500", "mtu = 1"),
        )
        .unwrap();
        match discover(dir.path(), Some("vda2")) {
            ConfigState::Invalid { diagnostics, .. } => assert_eq!(diagnostics.len(), 2),
            other => panic!("{other:?}"),
        }
        std::fs::write(
            part.join(LAST_GOOD),
            text.replace("site-a-gw1", "known-good"),
        )
        .unwrap();
        match discover(dir.path(), Some("vda2")) {
            ConfigState::LastGood {
                config, rejected, ..
            } => {
                assert_eq!(config.name.0, "known-good");
                assert_eq!(rejected.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_config_is_unprovisioned() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            discover(dir.path(), None),
            ConfigState::Unprovisioned
        ));
    }

    #[test]
    fn valid_config_is_used() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &dwcp_provisioning::example::example().unwrap());
        match discover(dir.path(), None) {
            ConfigState::Provisioned { config, source } => {
                assert_eq!(config.name.0, "site-a-gw1");
                assert_eq!(
                    source,
                    Candidate::InitramfsFile(dir.path().join(INITRAMFS_CONFIG))
                );
            }
            other => panic!("expected provisioned, got {other:?}"),
        }
    }

    #[test]
    fn a_config_that_is_not_utf8_is_invalid_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(INITRAMFS_CONFIG);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"# site A\nname = \"gw\xE91\"\n").unwrap();
        match discover(dir.path(), None) {
            ConfigState::Invalid { diagnostics, .. } => {
                assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
                let d = &diagnostics[0];
                assert_eq!((d.line, d.column), (2, 11), "{d}");
                assert!(d.message.starts_with("not UTF-8 (byte 0xE9)"), "{d}");
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn invalid_config_reports_every_error() {
        let dir = tempfile::tempdir().unwrap();
        let text = dwcp_provisioning::example::example()
            .unwrap()
            .replace("mtu = 1500", "mtu = 100")
            .replace("name = \"site-a-gw1\"", "name = \"-bad\"");
        write(dir.path(), &text);
        match discover(dir.path(), None) {
            ConfigState::Invalid { diagnostics, .. } => {
                // One bad name and two bad MTUs.
                assert_eq!(diagnostics.len(), 3, "{diagnostics:?}");
                assert!(
                    diagnostics
                        .iter()
                        .all(|d| d.file.ends_with("etc/dwcp/dwcp.toml"))
                );
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }
}
