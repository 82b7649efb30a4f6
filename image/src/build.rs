//! One image build: kernel, module closure and caller's files into `vmlinuz`, `initrd.img`
//! and `manifest.json` in an output directory.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::initramfs::{EntryKind, Initramfs};
use crate::kernel::{Kernel, sha256_file};
use crate::modules::{self, Closure};

/// What goes into the image beside the kernel.
#[derive(Clone, Debug, Default)]
pub struct ImageSpec {
    /// Modules to load at boot (their dependencies are added).
    pub modules: Vec<String>,
    /// Files: path in the image, contents, permission bits.
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Empty directories to create (mount points).
    pub dirs: Vec<String>,
    /// Symbolic links: path in the image, target.
    pub links: Vec<(String, String)>,
}

/// What a build produced, written as `manifest.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Manifest {
    /// Kernel package name.
    pub kernel_package: String,
    /// Kernel package version.
    pub kernel_version: String,
    /// Kernel release (`uname -r`).
    pub kernel_release: String,
    /// SHA-256 of the kernel package.
    pub kernel_package_sha256: String,
    /// Modules in load order.
    pub modules: Vec<String>,
    /// Requested modules that are built into the kernel.
    pub builtin_modules: Vec<String>,
    /// Output files and their SHA-256 (file name → hex).
    pub files: Vec<(String, String)>,
    /// Files inside the initramfs with their size and SHA-256.
    pub initramfs: Vec<(String, u64, String)>,
    /// The NVIDIA driver a GPU image carries (version), absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvidia_driver: Option<String>,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Module closure.
    #[error("kernel modules")]
    Modules(#[from] modules::ModuleError),
    /// File I/O.
    #[error("{0}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// The path of modules inside the image for a kernel release.
pub fn modules_path(release: &str) -> String {
    format!("lib/modules/{release}")
}

/// Builds the image into `out`.
pub fn build(kernel: &Kernel, spec: &ImageSpec, out: &Path) -> Result<Manifest, BuildError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |e| BuildError::Io(p, e)
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let wanted: Vec<&str> = spec.modules.iter().map(String::as_str).collect();
    let closure: Closure = modules::resolve(&kernel.modules_dir, &wanted)?;

    let mut initrd = Initramfs::new();
    for d in &spec.dirs {
        initrd.dir(d);
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    initrd.add("dev/console", EntryKind::CharDev(5, 1), 0o600);
    initrd.add("dev/null", EntryKind::CharDev(1, 3), 0o666);
    let release = kernel.pin.release();
    let mod_root = modules_path(release);
    for m in &closure.modules {
        let src = kernel.modules_dir.join(&m.rel_path);
        let data = std::fs::read(&src).map_err(io(&src))?;
        initrd.file(&format!("{mod_root}/{}", m.rel_path), data, 0o644);
    }
    initrd.file(
        &format!("{mod_root}/modules.dep"),
        closure.modules_dep().into_bytes(),
        0o644,
    );
    let order: String = closure
        .modules
        .iter()
        .map(|m| format!("{}\n", m.rel_path))
        .collect();
    initrd.file(
        &format!("{mod_root}/modules.order"),
        order.into_bytes(),
        0o644,
    );
    for (path, data, perm) in &spec.files {
        initrd.file(path, data.clone(), *perm);
    }
    for (path, target) in &spec.links {
        initrd.add(path, EntryKind::Symlink(target.clone()), 0o777);
    }

    let initrd_path = out.join("initrd.img");
    let gz = initrd.to_gzip().map_err(io(&initrd_path))?;
    std::fs::write(&initrd_path, &gz).map_err(io(&initrd_path))?;
    let vmlinuz_path = out.join("vmlinuz");
    std::fs::copy(&kernel.vmlinuz, &vmlinuz_path).map_err(io(&vmlinuz_path))?;

    let mut files = Vec::new();
    for name in ["vmlinuz", "initrd.img"] {
        let p = out.join(name);
        files.push((name.to_owned(), sha256_file(&p).map_err(io(&p))?));
    }
    let initramfs = initrd
        .entries()
        .iter()
        .filter_map(|(path, e)| match &e.kind {
            EntryKind::File(d) => {
                use sha2::Digest as _;
                Some((
                    path.clone(),
                    d.len() as u64,
                    hex::encode(sha2::Sha256::digest(d)),
                ))
            }
            _ => None,
        })
        .collect();
    let manifest = Manifest {
        kernel_package: kernel.pin.package.clone(),
        kernel_version: kernel.pin.version.clone(),
        kernel_release: release.to_owned(),
        kernel_package_sha256: kernel.pin.sha256.clone(),
        modules: closure.modules.iter().map(|m| m.name.clone()).collect(),
        builtin_modules: closure.builtin.clone(),
        files,
        initramfs,
        nvidia_driver: None,
    };
    let mpath = out.join("manifest.json");
    let json = serde_json::to_string_pretty(&manifest)
        .map_err(|e| BuildError::Io(mpath.clone(), e.into()))?;
    std::fs::write(&mpath, json + "\n").map_err(io(&mpath))?;
    Ok(manifest)
}
