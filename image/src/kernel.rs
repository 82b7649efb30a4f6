//! Pinned Debian packages, the kernel's first: download once (`apt-get download`, or `curl`
//! from the archive address a pin gives), check the SHA-256, cache, unpack with `dpkg-deb`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The pin committed in `image/kernel-pin.toml`.
pub const PIN_TOML: &str = include_str!("../kernel-pin.toml");

/// A kernel package pinned by name, version and SHA-256.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    /// Debian package name, e.g. `linux-image-6.1.0-48-amd64`.
    pub package: String,
    /// Debian version, e.g. `6.1.172-1`.
    pub version: String,
    /// SHA-256 of the `.deb`, hex.
    pub sha256: String,
    /// The archive address to fetch it from, for packages outside the machine's apt sources
    /// (non-free, or dropped from the index but still in the pool); `apt-get download` without.
    #[serde(default)]
    pub url: Option<String>,
}

impl KernelPin {
    /// The pin committed in the repository.
    pub fn committed() -> Self {
        toml::from_str(PIN_TOML).expect("image/kernel-pin.toml is checked by a unit test")
    }
    /// The kernel release (`uname -r`), e.g. `6.1.0-48-amd64`.
    pub fn release(&self) -> &str {
        self.package
            .strip_prefix("linux-image-")
            .unwrap_or(&self.package)
    }
}

/// Why the kernel could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The cache directory could not be used.
    #[error("cannot use cache directory {0}")]
    Cache(PathBuf, #[source] std::io::Error),
    /// The download failed: the pinned version is gone, or apt is not set up.
    #[error(
        "cannot download {package}={version} ({detail}); if the Debian archive no longer has \
         it, re-pin with scripts/repin-kernel.sh"
    )]
    Download {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// What apt-get said.
        detail: String,
    },
    /// The downloaded file is not the pinned one.
    #[error("{path}: SHA-256 {actual} differs from the pinned {expected}")]
    Checksum {
        /// File.
        path: PathBuf,
        /// Pinned.
        expected: String,
        /// Found.
        actual: String,
    },
    /// `dpkg-deb` failed.
    #[error("cannot unpack {0} with dpkg-deb: {1}")]
    Unpack(PathBuf, String),
    /// The package lacks a file every kernel package has.
    #[error("{0} is missing from the kernel package")]
    Missing(PathBuf),
}

/// An unpacked kernel package.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// The pin it came from.
    pub pin: KernelPin,
    /// The compressed kernel image.
    pub vmlinuz: PathBuf,
    /// `lib/modules/RELEASE` in the unpacked tree.
    pub modules_dir: PathBuf,
}

/// The cache directory: `$DWCP_CACHE`, else `$XDG_CACHE_HOME/dwcp`, else `~/.cache/dwcp`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DWCP_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("dwcp");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache").join("dwcp")
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// The pin of systemd-boot's EFI package (`image/boot-pin.toml`).
pub fn boot_pin() -> KernelPin {
    toml::from_str(include_str!("../boot-pin.toml"))
        .expect("image/boot-pin.toml is checked by a unit test")
}

/// Downloads (once, checked by SHA-256) and unpacks a pinned Debian package; returns the
/// root of the unpacked tree.
pub fn fetch_deb(pin: &KernelPin, cache: &Path) -> Result<PathBuf, KernelError> {
    let deb = cached_deb(pin, cache)?;
    let root = cache.join("debs").join(format!("{}-unpacked", pin.sha256));
    let done = root.join(".complete");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&root);
        unpack_deb(&deb, &root)?;
        std::fs::write(&done, b"").map_err(|e| KernelError::Cache(done.clone(), e))?;
    }
    Ok(root)
}

/// The pinned `.deb` in the cache, downloaded and checked by SHA-256 first if needed.
pub fn cached_deb(pin: &KernelPin, cache: &Path) -> Result<PathBuf, KernelError> {
    let dir = cache.join("debs");
    std::fs::create_dir_all(&dir).map_err(|e| KernelError::Cache(dir.clone(), e))?;
    let deb = dir.join(deb_file_name(pin));
    let verified = |p: &Path| sha256_file(p).is_ok_and(|s| s == pin.sha256);
    if !verified(&deb) {
        download(pin, &dir)?;
        let actual = sha256_file(&deb).map_err(|e| KernelError::Cache(deb.clone(), e))?;
        if actual != pin.sha256 {
            let _ = std::fs::remove_file(&deb);
            return Err(KernelError::Checksum {
                path: deb,
                expected: pin.sha256.clone(),
                actual,
            });
        }
    }
    Ok(deb)
}

/// Unpacks a `.deb`'s files into `root` (which may already hold other packages' files).
pub fn unpack_deb(deb: &Path, root: &Path) -> Result<(), KernelError> {
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(root)
        .output()
        .map_err(|e| KernelError::Unpack(deb.to_owned(), e.to_string()))?;
    if !out.status.success() {
        return Err(KernelError::Unpack(
            deb.to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(())
}

/// Returns the unpacked pinned kernel, downloading and unpacking it into `cache` if needed.
pub fn fetch(pin: &KernelPin, cache: &Path) -> Result<Kernel, KernelError> {
    let root = fetch_deb(pin, cache)?;
    let release = pin.release();
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    let modules_dir = root.join("lib/modules").join(release);
    for p in [&vmlinuz, &modules_dir] {
        if !p.exists() {
            return Err(KernelError::Missing(p.clone()));
        }
    }
    Ok(Kernel {
        pin: pin.clone(),
        vmlinuz,
        modules_dir,
    })
}

/// The `.deb`'s file name: the last part of its address, else what `apt-get download` writes.
fn deb_file_name(pin: &KernelPin) -> String {
    match pin.url.as_deref().and_then(|u| u.rsplit('/').next()) {
        Some(name) if name.ends_with(".deb") => name.to_owned(),
        _ => format!(
            "{}_{}_amd64.deb",
            pin.package,
            pin.version.replace(':', "%3a")
        ),
    }
}

fn download(pin: &KernelPin, dir: &Path) -> Result<(), KernelError> {
    if let Some(url) = &pin.url {
        return curl(url, &dir.join(deb_file_name(pin))).map_err(|detail| KernelError::Download {
            package: pin.package.clone(),
            version: pin.version.clone(),
            detail,
        });
    }
    let spec = format!("{}={}", pin.package, pin.version);
    let attempt = || {
        Command::new("apt-get")
            .args(["download", "-q", &spec])
            .current_dir(dir)
            .output()
    };
    let err = |detail: String| KernelError::Download {
        package: pin.package.clone(),
        version: pin.version.clone(),
        detail,
    };
    let mut out = attempt().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        // A fresh machine may have no package lists yet.
        let _ = Command::new("apt-get").args(["update", "-qq"]).output();
        out = attempt().map_err(|e| err(e.to_string()))?;
    }
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(err(last.trim().to_owned()));
    }
    Ok(())
}

/// Fetches `url` into `to` with `curl` (through a temporary name, so a cut download never
/// looks whole); the error says what curl said.
pub fn curl(url: &str, to: &Path) -> Result<(), String> {
    let part = to.with_extension("part");
    let out = Command::new("curl")
        .args([
            "--fail",
            "--silent",
            "--show-error",
            "--location",
            "--retry",
            "3",
        ])
        .args(["--max-time", "900", "--output"])
        .arg(&part)
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&part);
        return Err(format!(
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    std::fs::rename(&part, to).map_err(|e| format!("{}: {e}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_pin_parses() {
        assert_eq!(boot_pin().package, "systemd-boot-efi");
    }

    #[test]
    fn a_pinned_address_names_the_file() {
        let mut pin = boot_pin();
        assert_eq!(
            deb_file_name(&pin),
            "systemd-boot-efi_252.39-1~deb12u2_amd64.deb"
        );
        pin.url = Some("http://deb.debian.org/debian/pool/main/l/linux/x_1_all.deb".into());
        assert_eq!(deb_file_name(&pin), "x_1_all.deb");
    }

    #[test]
    fn committed_pin_parses() {
        let pin = KernelPin::committed();
        assert!(pin.package.starts_with("linux-image-") && pin.package.ends_with("-amd64"));
        assert_eq!(pin.sha256.len(), 64);
        assert!(pin.release().ends_with("-amd64"));
    }
}
