//! Workspace-level integration tests: dependency rules between crates, and QEMU boots of the
//! real image (netns traffic tests join as the data plane lands). The tests are in
//! `tests/tests/`; this library holds what they share: building the artifacts once and
//! booting a node with a given config.

#![deny(unsafe_code)]

pub mod monitoring;
pub mod netns;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use dwcp_cli::{image_build, qemu_boot};
use dwcp_qemu::Vm;

/// The workspace root (where `Cargo.toml` with `[workspace]` is).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Fails loudly when QEMU is missing, unless `DWCP_SKIP_QEMU=1` asks to skip (also loudly).
/// Returns whether the test should run.
pub fn require_qemu(test: &str) -> bool {
    if dwcp_qemu::available() {
        return true;
    }
    if std::env::var("DWCP_SKIP_QEMU").is_ok_and(|v| v == "1") {
        eprintln!(
            "SKIPPED {test}: {} not installed and DWCP_SKIP_QEMU=1",
            dwcp_qemu::QEMU
        );
        return false;
    }
    panic!(
        "{test} needs {}: run scripts/setup.sh as root (installs qemu-system-x86), \
         or set DWCP_SKIP_QEMU=1 to skip the QEMU tier",
        dwcp_qemu::QEMU
    );
}

/// The image's init and data plane, built once per test process.
pub fn binaries() -> (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| image_build::build_binaries(true).expect("build the binaries"))
        .clone()
}

/// Image artifacts without an embedded config, built once per test process.
pub fn artifacts() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = workspace_root().join("target").join("test-artifacts");
        image_build::build(None, &dir, binaries()).expect("image build");
        dir
    })
}

/// GPU image artifacts (`dwcp image build --gpu`) without an embedded config, built once per
/// test process (the first build on a machine compiles the NVIDIA kernel modules: minutes).
pub fn gpu_artifacts() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = workspace_root().join("target").join("test-artifacts-gpu");
        image_build::build_variant(None, &dir, binaries(), image_build::Variant::Gpu)
            .unwrap_or_else(|e| panic!("GPU image build: {e:#}"));
        dir
    })
}

/// The initramfs of `artifacts` unpacked into a temporary root (regular files and symbolic
/// links, with their modes), and the archive's entries: path → (mode, data).
pub fn unpack_initramfs(
    artifacts: &Path,
) -> (
    tempfile::TempDir,
    std::collections::BTreeMap<String, (u32, Vec<u8>)>,
) {
    use std::os::unix::fs::PermissionsExt as _;
    let files =
        dwcp_image::initramfs::read_gzip(&std::fs::read(artifacts.join("initrd.img")).unwrap())
            .unwrap();
    let root = tempfile::tempdir().unwrap();
    for (path, (mode, data)) in &files {
        let p = root.path().join(path);
        match mode & 0o170_000 {
            0o100_000 => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, data).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))
                    .unwrap();
            }
            0o120_000 => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(String::from_utf8_lossy(data).as_ref(), &p).unwrap();
            }
            _ => {}
        }
    }
    (root, files)
}

/// A finished command's standard output, then its standard error, as text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One QEMU boot at a time: two TCG guests on a two-core machine slow each other past the
/// time-outs and make boot times meaningless.
pub fn qemu_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Boots the test artifacts with `config_text` merged in as `/etc/dwcp/dwcp.toml`.
/// `adjust` may change the VM (e.g. drop the IOMMU).
pub fn boot(
    name: &str,
    config_text: &str,
    adjust: impl FnOnce(&mut dwcp_qemu::VmSpec),
) -> anyhow::Result<(Vm, tempfile::TempDir)> {
    boot_from(artifacts(), name, config_text, &[], adjust)
}

/// [`boot`] with the kernel and initramfs from `artifacts`, and `layers` (gzip'd cpio
/// archives) appended after the config's: the kernel unpacks them in order, so a layer's file
/// replaces the image's at the same path.
pub fn boot_from(
    artifacts: &Path,
    name: &str,
    config_text: &str,
    layers: &[Vec<u8>],
    adjust: impl FnOnce(&mut dwcp_qemu::VmSpec),
) -> anyhow::Result<(Vm, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut initrd = std::fs::read(artifacts.join("initrd.img"))?;
    initrd.extend(image_build::config_initrd(config_text)?);
    for layer in layers {
        initrd.extend(layer);
    }
    let initrd_path = dir.path().join("initrd.img");
    std::fs::write(&initrd_path, initrd)?;
    // Invalid configs still need a VM shape: take it from the QEMU example then.
    let shape_text = dwcp_provisioning::example::qemu_example()?;
    let cfg = dwcp_provisioning::check(&dwcp_provisioning::SourceFile::new("c", config_text))
        .or_else(|_| dwcp_provisioning::check(&dwcp_provisioning::SourceFile::new("c", shape_text)))
        .map_err(|d| anyhow::anyhow!("{}", d[0]))?;
    let mut spec = qemu_boot::vm_spec(name, &cfg, artifacts, initrd_path);
    spec.console_log = Some(
        workspace_root()
            .join("target")
            .join(format!("console-{name}.log")),
    );
    adjust(&mut spec);
    let vm = Vm::start(&spec)?;
    Ok((vm, dir))
}

/// Generous: a TCG boot takes 5 to 15 s here, more when the machine is busy.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
