//! The one layer through which init touches sysfs, procfs and `/dev`: every path is taken
//! relative to a root, which is `/` at boot and a temporary tree in unit tests.

use std::io;
use std::path::{Path, PathBuf};

/// File-system access as init needs it.
pub trait SysFs {
    /// Reads a whole file as text.
    fn read(&self, path: &str) -> io::Result<String>;
    /// Writes a value to a file (sysfs attributes take one write).
    fn write(&self, path: &str, value: &str) -> io::Result<()>;
    /// Whether the path exists.
    fn exists(&self, path: &str) -> bool;
    /// Names in a directory, sorted.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// The last component of a symlink's target (`driver` → `e1000e`).
    fn link_name(&self, path: &str) -> Option<String>;
}

/// [`SysFs`] on the real file system under a root directory.
#[derive(Clone, Debug)]
pub struct RootedFs {
    root: PathBuf,
}

impl RootedFs {
    /// Access under `root` (`/` at boot).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The real path of `path`.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

impl SysFs for RootedFs {
    fn read(&self, path: &str) -> io::Result<String> {
        std::fs::read_to_string(self.path(path))
    }
    fn write(&self, path: &str, value: &str) -> io::Result<()> {
        use std::io::Write as _;
        // No create, no truncate: sysfs attributes exist or the write is an error.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path(path))?;
        f.write_all(value.as_bytes())
    }
    fn exists(&self, path: &str) -> bool {
        self.path(path).exists()
    }
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(dir))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }
    fn link_name(&self, path: &str) -> Option<String> {
        let target = std::fs::read_link(self.path(path)).ok()?;
        Path::new(&target)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }
}
