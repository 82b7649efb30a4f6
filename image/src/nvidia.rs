//! The NVIDIA driver stack for a GPU image (`image/nvidia-pin.toml`, decision 0015): the
//! kernel modules built against the pinned kernel's headers, the GSP firmware, the user-space
//! driver libraries and NVRTC, fetched by pin and cached.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::kernel::{self, Kernel, KernelError, KernelPin, sha256_file};
use crate::modules;

/// The pin committed in `image/nvidia-pin.toml`.
pub const PIN_TOML: &str = include_str!("../nvidia-pin.toml");

/// The kernel modules a GPU image carries, in load order (each after what it needs).
pub const MODULES: &[&str] = &["nvidia.ko", "nvidia-uvm.ko"];

/// Where the driver's libraries lie in the Debian packages.
const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu/nvidia/current";

/// Every file of the driver stack, pinned.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NvidiaPin {
    /// The driver version every part must carry, e.g. `550.163.01`.
    pub driver: String,
    /// GSP firmware files to carry, from `lib/firmware/nvidia/DRIVER/`.
    pub firmware: Vec<String>,
    /// The kernel modules' source (Debian's `nvidia-kernel-dkms`).
    pub module_source: KernelPin,
    /// The GSP firmware package.
    pub firmware_package: KernelPin,
    /// User-space driver libraries (`libcuda1`, …).
    pub libraries: Vec<KernelPin>,
    /// The kernel's build tree: headers and kbuild, at the kernel's version.
    pub headers: Vec<KernelPin>,
    /// NVRTC for the driver's CUDA version.
    pub nvrtc: WheelPin,
}

/// A PyPI wheel pinned by name, version and SHA-256.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WheelPin {
    /// Distribution name, e.g. `nvidia-cuda-nvrtc-cu12`.
    pub wheel: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the `.whl`, hex.
    pub sha256: String,
}

impl NvidiaPin {
    /// The pin committed in the repository.
    pub fn committed() -> Self {
        toml::from_str(PIN_TOML).expect("image/nvidia-pin.toml is checked by a unit test")
    }

    /// Whether this pin's headers are the build tree of `kernel` (same ABI and version);
    /// the reason when not.
    pub fn matches_kernel(&self, kernel: &KernelPin) -> Result<(), String> {
        let release = kernel.release();
        let abi = release.strip_suffix("-amd64").unwrap_or(release);
        for want in [
            format!("linux-headers-{release}"),
            format!("linux-headers-{abi}-common"),
        ] {
            if !self.headers.iter().any(|h| h.package == want) {
                return Err(format!(
                    "image/nvidia-pin.toml has no {want} for kernel {release}: re-pin with scripts/repin-kernel.sh"
                ));
            }
        }
        if let Some(h) = self.headers.iter().find(|h| h.version != kernel.version) {
            return Err(format!(
                "image/nvidia-pin.toml pins {} {}, the kernel is {}: re-pin with scripts/repin-kernel.sh",
                h.package, h.version, kernel.version
            ));
        }
        Ok(())
    }
}

/// A file the image carries: path in the image, contents, permission bits.
pub type ImageFile = (String, Vec<u8>, u32);
/// A built kernel module: file name and contents.
pub type BuiltModule = (String, Vec<u8>);

/// The driver stack, ready to go into an image.
#[derive(Clone, Debug)]
pub struct Driver {
    /// Driver version.
    pub version: String,
    /// NVRTC version.
    pub nvrtc_version: String,
    /// The built kernel modules: file name ([`MODULES`]) and contents, in load order.
    pub modules: Vec<BuiltModule>,
    /// Kernel modules the driver's modules need from the kernel package (`depends=`).
    pub module_depends: Vec<String>,
    /// Firmware, libraries and NVRTC: path in the image, contents, mode.
    pub files: Vec<ImageFile>,
    /// Symbolic links: path in the image, target.
    pub links: Vec<(String, String)>,
}

/// Why the driver stack could not be had.
#[derive(Debug, thiserror::Error)]
pub enum NvidiaError {
    /// The pin does not fit the kernel.
    #[error("{0}")]
    Pin(String),
    /// A package could not be fetched or unpacked.
    #[error("NVIDIA driver package")]
    Package(#[from] KernelError),
    /// The kernel modules did not build.
    #[error(
        "building the NVIDIA kernel modules failed ({status}); the build's output is in {log}:\n{tail}"
    )]
    Build {
        /// How make ended.
        status: String,
        /// Full output.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// A built module is not what the image needs.
    #[error("{0}")]
    Module(String),
    /// Reading a module's `.modinfo`.
    #[error("NVIDIA kernel module")]
    Modinfo(#[from] modules::ModuleError),
    /// A file the packages should hold is missing.
    #[error("{0} is missing from the NVIDIA packages")]
    Missing(PathBuf),
    /// The NVRTC wheel could not be fetched or is not the pinned one.
    #[error("NVRTC wheel {wheel}=={version}: {detail}")]
    Wheel {
        /// Name.
        wheel: String,
        /// Version.
        version: String,
        /// What went wrong.
        detail: String,
    },
    /// File I/O in the cache.
    #[error("{0}")]
    Io(PathBuf, #[source] std::io::Error),
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> NvidiaError + '_ {
    move |e| NvidiaError::Io(p.to_owned(), e)
}

/// Fetches (once, into `cache`) and builds the driver stack for `kernel`.
pub fn fetch(pin: &NvidiaPin, kernel: &Kernel, cache: &Path) -> Result<Driver, NvidiaError> {
    pin.matches_kernel(&kernel.pin).map_err(NvidiaError::Pin)?;
    let (modules, module_depends) = build_modules(pin, kernel, cache)?;
    let mut files = Vec::new();
    let mut links = Vec::new();

    let fw_root = kernel::fetch_deb(&pin.firmware_package, cache)?;
    for name in &pin.firmware {
        // Where the kernel looks; the package has it there or, merged-/usr, under usr/.
        let rel = format!("lib/firmware/nvidia/{}/{name}", pin.driver);
        let src = [fw_root.join(&rel), fw_root.join("usr").join(&rel)]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| NvidiaError::Missing(fw_root.join(&rel)))?;
        let data = std::fs::read(&src).map_err(io(&src))?;
        files.push((rel, data, 0o644));
    }

    for lib in &pin.libraries {
        let root = kernel::fetch_deb(lib, cache)?;
        let dir = root.join(LIB_DIR);
        let entries = std::fs::read_dir(&dir).map_err(|_| NvidiaError::Missing(dir.clone()))?;
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            let at = format!("usr/lib/x86_64-linux-gnu/{name}");
            match std::fs::read_link(&p) {
                Ok(target) => links.push((at, target.to_string_lossy().into_owned())),
                Err(_) => files.push((at, std::fs::read(&p).map_err(io(&p))?, 0o755)),
            }
        }
    }

    let nvrtc = fetch_wheel(&pin.nvrtc, cache)?;
    let lib = nvrtc.join("nvidia/cuda_nvrtc/lib");
    let entries = std::fs::read_dir(&lib).map_err(|_| NvidiaError::Missing(lib.clone()))?;
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libnvrtc"))
        })
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(NvidiaError::Missing(lib.join("libnvrtc.so.*")));
    }
    for p in found {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        let data = std::fs::read(&p).map_err(io(&p))?;
        files.push((format!("usr/lib/x86_64-linux-gnu/{name}"), data, 0o755));
    }

    Ok(Driver {
        version: pin.driver.clone(),
        nvrtc_version: pin.nvrtc.version.clone(),
        modules,
        module_depends,
        files,
        links,
    })
}

/// A short key naming one build of the modules: the source, the headers and the kernel.
fn build_key(pin: &NvidiaPin, kernel: &Kernel) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(pin.module_source.sha256.as_bytes());
    for p in &pin.headers {
        h.update(p.sha256.as_bytes());
    }
    h.update(kernel.pin.sha256.as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// Builds `nvidia.ko` and `nvidia-uvm.ko` against the kernel's headers (once per source,
/// headers and kernel; cached), stripped of debug information, and checks them against the
/// kernel and the driver version. Returns them with the kernel modules they depend on.
fn build_modules(
    pin: &NvidiaPin,
    kernel: &Kernel,
    cache: &Path,
) -> Result<(Vec<BuiltModule>, Vec<String>), NvidiaError> {
    let out = cache.join("nvidia-modules").join(build_key(pin, kernel));
    let done = out.join(".complete");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).map_err(io(&out))?;
        let tree = out.join("tree");
        for p in pin.headers.iter().chain([&pin.module_source]) {
            kernel::unpack_deb(&kernel::cached_deb(p, cache)?, &tree)?;
        }
        let release = kernel.pin.release();
        let sysout = tree.join(format!("usr/src/linux-headers-{release}"));
        let common = pin
            .headers
            .iter()
            .find(|h| h.package.ends_with("-common"))
            .map(|h| tree.join("usr/src").join(&h.package))
            .ok_or_else(|| NvidiaError::Pin("no -common headers pinned".into()))?;
        // Debian's per-flavour Makefile includes the common tree by its installed path.
        let makefile = sysout.join("Makefile");
        let text = std::fs::read_to_string(&makefile).map_err(io(&makefile))?;
        let installed = format!(
            "/usr/src/{}",
            common.file_name().unwrap_or_default().to_string_lossy()
        );
        std::fs::write(
            &makefile,
            text.replace(&installed, &common.to_string_lossy()),
        )
        .map_err(io(&makefile))?;
        let src = tree.join(format!("usr/src/nvidia-current-{}", pin.driver));
        if !src.is_dir() {
            return Err(NvidiaError::Missing(src));
        }
        let log = out.join("build.log");
        let log_file = std::fs::File::create(&log).map_err(io(&log))?;
        let jobs = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let status = Command::new("make")
            .current_dir(&src)
            .arg(format!("-j{jobs}"))
            .arg("modules")
            .arg(format!("SYSSRC={}", common.display()))
            .arg(format!("SYSOUT={}", sysout.display()))
            .arg("NV_EXCLUDE_KERNEL_MODULES=nvidia-drm nvidia-modeset nvidia-peermem")
            .stdout(log_file.try_clone().map_err(io(&log))?)
            .stderr(log_file)
            .status()
            .map_err(io(Path::new("make")))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            return Err(NvidiaError::Build {
                status: status.to_string(),
                log,
                tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        for m in MODULES {
            let built = src.join(m);
            let stripped = out.join(m);
            let s = Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&stripped)
                .arg(&built)
                .status()
                .map_err(io(Path::new("strip")))?;
            if !s.success() {
                return Err(NvidiaError::Module(format!(
                    "strip --strip-debug {} failed ({s})",
                    built.display()
                )));
            }
        }
        // The tree is only needed to build (hundreds of MiB); the modules stay.
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::write(&done, b"").map_err(io(&done))?;
    }
    let mut built = Vec::new();
    let mut depends = Vec::new();
    for m in MODULES {
        let path = out.join(m);
        let info = modules::modinfo(&path)?;
        let field = |k: &str| {
            info.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let release = kernel.pin.release();
        if field("vermagic").split_whitespace().next() != Some(release) {
            return Err(NvidiaError::Module(format!(
                "{m} was built for `{}`, the kernel is {release}",
                field("vermagic")
            )));
        }
        if field("version") != pin.driver {
            return Err(NvidiaError::Module(format!(
                "{m} is version {}, the pin says {}",
                field("version"),
                pin.driver
            )));
        }
        let own: Vec<String> = MODULES
            .iter()
            .map(|x| modules::canonical(x.trim_end_matches(".ko")))
            .collect();
        for d in field("depends").split(',').filter(|d| !d.is_empty()) {
            let d = modules::canonical(d);
            if !own.contains(&d) && !depends.contains(&d) {
                depends.push(d);
            }
        }
        built.push(((*m).to_owned(), std::fs::read(&path).map_err(io(&path))?));
    }
    Ok((built, depends))
}

/// The pinned wheel unpacked in the cache (`nvrtc/VERSION/`, where `scripts/setup.sh` puts
/// NVRTC 13 too), fetched with pip and checked by SHA-256 first if needed.
pub fn fetch_wheel(pin: &WheelPin, cache: &Path) -> Result<PathBuf, NvidiaError> {
    let root = cache.join("nvrtc").join(&pin.version);
    let done = root.join(".complete");
    if done.exists() {
        return Ok(root);
    }
    let err = |detail: String| NvidiaError::Wheel {
        wheel: pin.wheel.clone(),
        version: pin.version.clone(),
        detail,
    };
    let dl = cache.join("wheels").join(&pin.version);
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl).map_err(io(&dl))?;
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
        ])
        .args([
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux2014_x86_64",
        ])
        .args([
            "--platform",
            "manylinux1_x86_64",
            "--python-version",
            "3.11",
            "-d",
        ])
        .arg(&dl)
        .arg(format!("{}=={}", pin.wheel, pin.version))
        .output()
        .map_err(|e| err(format!("cannot run python3 -m pip: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "pip download failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let whl = std::fs::read_dir(&dl)
        .map_err(io(&dl))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| err("pip downloaded no wheel".into()))?;
    let actual = sha256_file(&whl).map_err(io(&whl))?;
    if actual != pin.sha256 {
        return Err(err(format!(
            "{}: SHA-256 {actual} differs from the pinned {}",
            whl.display(),
            pin.sha256
        )));
    }
    let _ = std::fs::remove_dir_all(&root);
    let out = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&whl)
        .arg(&root)
        .output()
        .map_err(|e| err(format!("cannot run python3 -m zipfile: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "unzip failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::write(&done, b"").map_err(io(&done))?;
    let _ = std::fs::remove_dir_all(&dl);
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_pin_parses_and_fits_the_committed_kernel() {
        let pin = NvidiaPin::committed();
        assert!(pin.module_source.url.is_some() && pin.firmware_package.url.is_some());
        for p in pin.libraries.iter().chain(&pin.headers) {
            assert_eq!(p.sha256.len(), 64, "{}", p.package);
            assert!(p.url.is_some(), "{} has no address", p.package);
        }
        for p in [&pin.module_source, &pin.firmware_package]
            .into_iter()
            .chain(&pin.libraries)
        {
            assert!(
                p.version.starts_with(&pin.driver),
                "{} {} is not driver {}",
                p.package,
                p.version,
                pin.driver
            );
        }
        assert_eq!(pin.matches_kernel(&KernelPin::committed()), Ok(()));
    }

    #[test]
    fn headers_of_another_kernel_are_refused_naming_the_fix() {
        let pin = NvidiaPin::committed();
        let mut other = KernelPin::committed();
        other.version = "6.1.999-1".into();
        let e = pin.matches_kernel(&other).unwrap_err();
        assert!(
            e.contains("6.1.999-1") && e.contains("repin-kernel.sh"),
            "{e}"
        );
        other.package = "linux-image-6.1.0-99-amd64".into();
        let e = pin.matches_kernel(&other).unwrap_err();
        assert!(e.contains("linux-headers-6.1.0-99-amd64"), "{e}");
    }
}
