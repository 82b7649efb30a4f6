//! `dwcp image build`: the appliance's binaries with the glibc they are linked against, the
//! pinned kernel and its modules, optionally the NVIDIA driver stack (`--gpu`) and a node
//! config, into `vmlinuz`, `initrd.img`, `disk.img` and `manifest.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use dwcp_image::{ImageSpec, KernelPin, Manifest};

use dwcp_provisioning::document::SourceFile;

/// Modules the image loads at boot (their dependencies come along): paravirtual and common
/// data-centre NICs, RDMA, vfio, the FAT config partition, EFI variables, and the ACPI power button.
pub const IMAGE_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "e1000e",
    "ixgbe",
    "i40e",
    "ice",
    "mlx5_core",
    // RDMA (RoCEv2): user-space verbs, Soft-RoCE, and ConnectX's RDMA side, which DPDK's
    // bifurcated mlx5 driver needs too (ib_core comes along).
    "ib_uverbs",
    "rdma_rxe",
    "mlx5_ib",
    // Soft-RoCE asks the crypto API for "crc32" (the ICRC) when a device is added, which an
    // initramfs without modprobe cannot load on demand: "failed to add eth3" (ENOENT).
    "crc32_generic",
    "vfio-pci",
    // vfio asks for its IOMMU backend with request_module, which an initramfs without
    // modprobe cannot answer: load it explicitly or DPDK finds "no supported IOMMU extensions".
    "vfio_iommu_type1",
    "vfat",
    // systemd-boot's LoaderDevicePartUUID names the partition it started from: how init
    // tells the boot disk from others that are attached.
    "efivarfs",
    "nls_cp437",
    "nls_iso8859-1",
    "button",
    "evdev",
];

/// The workspace this `dwcp` was built from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Builds `dwcp-init` and `dwcp-dataplane`, linked against glibc (the image carries the
/// loader and the libraries they need: [`runtime_libraries`]; decision 0014), with host paths
/// remapped so the binaries do not depend on where the repository or cargo's registry lie.
pub fn build_binaries(quiet: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    let root = workspace_root();
    let target_dir = root.join("target").join("image");
    let home = std::env::var("CARGO_HOME").unwrap_or_else(|_| {
        format!(
            "{}/.cargo",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into())
        )
    });
    let rustflags = format!(
        "--remap-path-prefix={home}=/cargo --remap-path-prefix={}=/dwcp",
        root.display()
    );
    let target = "x86_64-unknown-linux-gnu";
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "dwcp-init",
            "-p",
            "dwcp-dataplane",
            "--target",
            target,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", rustflags);
    if quiet {
        cmd.arg("--quiet");
    }
    let status = cmd
        .status()
        .context("cannot run cargo to build the image's binaries")?;
    if !status.success() {
        bail!("building dwcp-init and dwcp-dataplane failed ({status})");
    }
    let bin = target_dir.join(target).join("release");
    Ok((bin.join("dwcp-init"), bin.join("dwcp-dataplane")))
}

/// The dynamic loader and shared libraries `binary` needs, as the build machine's loader
/// resolves them (`ldd`): (absolute path, contents). Empty for a statically linked binary. A
/// library the loader cannot find is an error that names it.
pub fn runtime_libraries(binary: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd (Debian's libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("{}: shared library {}", binary.display(), line.trim());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`;
        // the kernel's vDSO has no file.
        let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) else {
            continue;
        };
        let data = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
        libs.push((path.to_owned(), data));
    }
    Ok(libs)
}

/// Reads and validates a config for the image; prints every problem on failure.
pub fn checked_config(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Err(diags) = dwcp_provisioning::validate::check(&SourceFile::new(
        path.display().to_string(),
        text.clone(),
    )) {
        for d in &diags {
            eprintln!("{d}");
        }
        bail!(
            "{} has {} problem(s); not building an image with it",
            path.display(),
            diags.len()
        );
    }
    Ok(text)
}

/// Where a GPU image keeps the NVIDIA kernel modules, under `lib/modules/RELEASE/` (init's
/// `gpu::MODULE_DIR`): apart from `modules.dep`, so init loads them in a step of its own.
pub const GPU_MODULE_DIR: &str = "nvidia";

/// Which image to build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Variant {
    /// The CPU engine only: no NVIDIA driver.
    #[default]
    Standard,
    /// With the NVIDIA driver stack (`image/nvidia-pin.toml`; decision 0015).
    Gpu,
}

/// Builds the standard image into `out`.
pub fn build(
    config: Option<&Path>,
    out: &Path,
    binaries: (PathBuf, PathBuf),
) -> anyhow::Result<Manifest> {
    build_variant(config, out, binaries, Variant::Standard)
}

/// Builds the image `variant` into `out`.
pub fn build_variant(
    config: Option<&Path>,
    out: &Path,
    binaries: (PathBuf, PathBuf),
    variant: Variant,
) -> anyhow::Result<Manifest> {
    let config_text = config.map(checked_config).transpose()?;
    let pin = KernelPin::committed();
    eprintln!(
        "image: kernel {} {} (cached in {})",
        pin.package,
        pin.version,
        dwcp_image::cache_dir().display()
    );
    let kernel = dwcp_image::fetch(&pin, &dwcp_image::cache_dir())?;
    let (init, dataplane) = binaries;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut spec = ImageSpec {
        modules: IMAGE_MODULES.iter().map(|m| (*m).to_owned()).collect(),
        files: vec![
            ("init".into(), read(&init)?, 0o755),
            ("usr/bin/dwcp-dataplane".into(), read(&dataplane)?, 0o755),
        ],
        dirs: ["proc", "sys", "dev", "run", "tmp", "etc/dwcp"]
            .iter()
            .map(|d| (*d).to_owned())
            .collect(),
        links: Vec::new(),
    };
    // The loader and libraries both binaries need, once each, at the paths they were found.
    let mut needing: Vec<PathBuf> = vec![init.clone(), dataplane.clone()];
    let driver = match variant {
        Variant::Standard => None,
        Variant::Gpu => Some(add_nvidia(&kernel, &mut spec, &mut needing)?),
    };
    let mut libs: Vec<(String, Vec<u8>)> = Vec::new();
    for binary in &needing {
        for (path, data) in runtime_libraries(binary)? {
            // The NVIDIA libraries name each other; they are in the image already.
            if spec
                .files
                .iter()
                .any(|(p, ..)| Path::new(p).file_name() == Path::new(&path).file_name())
            {
                continue;
            }
            if !libs.iter().any(|(p, _)| *p == path) {
                libs.push((path, data));
            }
        }
    }
    for (path, data) in libs {
        spec.files
            .push((path.trim_start_matches('/').to_owned(), data, 0o755));
    }
    if let Some(text) = &config_text {
        spec.files.push((
            "etc/dwcp/dwcp.toml".into(),
            text.clone().into_bytes(),
            0o600,
        ));
    }
    let cmdline = match &config_text {
        Some(text) => dwcp_provisioning::validate::check(&dwcp_provisioning::SourceFile::new(
            "config",
            text.clone(),
        ))
        .map(|c| dwcp_provisioning::cmdline::kernel_cmdline(&c))
        .unwrap_or_else(|_| DEFAULT_CMDLINE.to_owned()),
        None => DEFAULT_CMDLINE.to_owned(),
    };
    let mut manifest = dwcp_image::build(&kernel, &spec, out).context("image build failed")?;
    manifest.nvidia_driver = driver;
    write_disk(out, config_text.as_deref(), &cmdline)?;
    let disk = out.join("disk.img");
    manifest
        .files
        .push(("disk.img".into(), dwcp_image::kernel::sha256_file(&disk)?));
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    Ok(manifest)
}

/// Adds the NVIDIA driver stack to `spec`: the kernel modules (built for `kernel`, in
/// [`GPU_MODULE_DIR`]) and the kernel modules they need, the GSP firmware, libcuda, NVML and
/// NVRTC. Pushes the libraries onto `needing`, whose own libraries the image must carry too.
/// Returns the driver version.
fn add_nvidia(
    kernel: &dwcp_image::kernel::Kernel,
    spec: &mut ImageSpec,
    needing: &mut Vec<PathBuf>,
) -> anyhow::Result<String> {
    let pin = dwcp_image::nvidia::NvidiaPin::committed();
    eprintln!(
        "image: NVIDIA driver {} and NVRTC {} (the first build compiles the kernel modules: minutes)",
        pin.driver, pin.nvrtc.version
    );
    let cache = dwcp_image::cache_dir();
    let driver = dwcp_image::nvidia::fetch(&pin, kernel, &cache).context("NVIDIA driver stack")?;
    let release = kernel.pin.release();
    for (name, data) in &driver.modules {
        spec.files.push((
            format!(
                "{}/{GPU_MODULE_DIR}/{name}",
                dwcp_image::build::modules_path(release)
            ),
            data.clone(),
            0o644,
        ));
    }
    for d in &driver.module_depends {
        if !spec.modules.contains(d) {
            spec.modules.push(d.clone());
        }
    }
    // ldd reads the libraries from a folder of their own, where their links resolve.
    let staging = cache.join("nvidia-libraries").join(&driver.version);
    std::fs::create_dir_all(&staging)?;
    for (path, data, mode) in &driver.files {
        if path.contains(".so") {
            let p = staging.join(Path::new(path).file_name().unwrap_or_default());
            std::fs::write(&p, data)?;
            needing.push(p);
        }
        spec.files.push((path.clone(), data.clone(), *mode));
    }
    spec.links.extend(driver.links.iter().cloned());
    Ok(driver.version)
}

/// Kernel command line for an image without a node config.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0,115200 loglevel=4 panic=5";
/// Boot tries a new slot gets (systemd-boot boot counting).
pub const BOOT_TRIES: u32 = 3;

/// The loader entry of a slot: `slot-a+3.conf` and its text (version 1: the first system).
pub fn loader_entry(slot: char, cmdline: &str) -> (String, String) {
    (
        format!("loader/entries/slot-{slot}+{BOOT_TRIES}.conf"),
        dwcp_image::disk::slot_entry_text(slot, cmdline, 1),
    )
}

/// `DIR/disk.img`: GPT with the ESP (systemd-boot, loader entry for slot A with boot counting,
/// slot A's kernel and initramfs under `/dwcp/slot-a/`) and the `DWCP-CONFIG` partition.
pub fn write_disk(out: &Path, config: Option<&str>, cmdline: &str) -> anyhow::Result<()> {
    let boot =
        dwcp_image::kernel::fetch_deb(&dwcp_image::kernel::boot_pin(), &dwcp_image::cache_dir())?;
    let efi = std::fs::read(boot.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"))
        .context("systemd-bootx64.efi missing from the systemd-boot-efi package")?;
    let (entry, entry_text) = loader_entry('a', cmdline);
    let spec = dwcp_image::disk::DiskSpec {
        esp_files: vec![
            ("EFI/BOOT/BOOTX64.EFI".into(), efi),
            (
                "loader/loader.conf".into(),
                dwcp_image::disk::LOADER_CONF.as_bytes().to_vec(),
            ),
            (entry, entry_text.into_bytes()),
            (
                "dwcp/slot-a/vmlinuz".into(),
                std::fs::read(out.join("vmlinuz"))?,
            ),
            (
                "dwcp/slot-a/initrd.img".into(),
                std::fs::read(out.join("initrd.img"))?,
            ),
        ],
        config_files: config
            .map(|c| vec![("dwcp.toml".to_owned(), c.as_bytes().to_vec())])
            .unwrap_or_default(),
        esp_mib: esp_mib(out)?,
        config_mib: 16,
    };
    dwcp_image::disk::write_disk(&spec, &out.join("disk.img")).context("disk image")?;
    Ok(())
}

/// The ESP's size: room for two slots (A/B updates) of this image's kernel and initramfs, and
/// some to spare; at least 96 MiB (a standard image's ESP).
pub fn esp_mib(out: &Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for f in ["vmlinuz", "initrd.img"] {
        let p = out.join(f);
        bytes += std::fs::metadata(&p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .len();
    }
    let slots_mib = (2 * bytes).div_ceil(1 << 20) + 32;
    Ok(slots_mib.div_ceil(32).saturating_mul(32).max(96))
}

/// A gzip'd cpio holding only `/etc/dwcp/dwcp.toml`: appended to an initrd, the kernel merges
/// it in (the PXE way of giving a node its config).
pub fn config_initrd(config_text: &str) -> std::io::Result<Vec<u8>> {
    let mut i = dwcp_image::initramfs::Initramfs::new();
    i.file("etc/dwcp/dwcp.toml", config_text.as_bytes().to_vec(), 0o600);
    i.to_gzip()
}

/// The data-plane binary built with the release profile (built now if needed), for benchmarks.
pub fn release_dataplane() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "-p",
            "dwcp-dataplane",
        ])
        .status()
        .context("cannot run cargo to build the data plane")?;
    if !status.success() {
        bail!("building dwcp-dataplane (release) failed ({status})");
    }
    Ok(root.join("target").join("release").join("dwcp-dataplane"))
}
