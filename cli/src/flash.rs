//! `dwcp flash`: writes a disk image and a node's config to a block device or a file, then
//! reads both back and checks them. Refuses an invalid config, a mounted device, a target
//! smaller than the image and the disk the running system boots from; a real block device
//! needs `--yes`.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

const CHUNK: usize = 4 << 20;

fn device_name(path: &Path) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    real.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Devices (by kernel name) that back a mounted file system, with their parent disks.
fn mounted_devices() -> Vec<(String, String)> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let dev = f.next()?;
            let at = f.next()?;
            let name = device_name(Path::new(dev))?;
            dev.starts_with("/dev/").then(|| (name, at.to_owned()))
        })
        .collect()
}

/// The whole-disk name a partition belongs to (`sda2` → `sda`, `nvme0n1p1` → `nvme0n1`).
fn parent_disk(name: &str) -> String {
    let link = std::fs::read_link(format!("/sys/class/block/{name}")).ok();
    if let Some(l) = link
        && std::path::Path::new(&format!("/sys/class/block/{name}/partition")).exists()
        && let Some(parent) = l.parent().and_then(|p| p.file_name())
    {
        return parent.to_string_lossy().into_owned();
    }
    name.to_owned()
}

/// Checks a block device target; returns its size.
fn check_block_device(target: &Path, yes: bool) -> anyhow::Result<u64> {
    let name = device_name(target).context("cannot resolve the target device")?;
    for (dev, at) in mounted_devices() {
        let disk = parent_disk(&dev);
        if dev == name || disk == name {
            if at == "/" || at == "/boot" || at == "/boot/efi" {
                bail!(
                    "{} holds {at} of the running system (the disk it boots from): refusing",
                    target.display()
                );
            }
            bail!(
                "{} is mounted ({} on {at}): unmount it first",
                target.display(),
                dev
            );
        }
    }
    if !yes {
        bail!(
            "{} is a block device: everything on it will be lost; add --yes to go ahead",
            target.display()
        );
    }
    let mut f = std::fs::File::open(target)?;
    Ok(f.seek(SeekFrom::End(0))?)
}

/// Flashes `image` with `config` onto `target`.
pub fn flash(
    image: &Path,
    config: &Path,
    target: &Path,
    yes: bool,
    progress: bool,
) -> anyhow::Result<()> {
    let config_text = super::image_build::checked_config(config)?;
    let image_len = std::fs::metadata(image)
        .with_context(|| format!("cannot read {}", image.display()))?
        .len();
    let meta = std::fs::metadata(target).ok();
    let is_block = meta
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device());
    let target_len = if is_block {
        Some(check_block_device(target, yes)?)
    } else {
        meta.map(|m| m.len())
    };
    if let Some(len) = target_len
        && len < image_len
    {
        bail!(
            "{} holds {len} bytes, the image needs {image_len}: refusing",
            target.display()
        );
    }
    let mut src = std::fs::File::open(image)?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create(!is_block)
        .truncate(false)
        .open(target)?;
    let bar = progress.then(|| {
        let b = indicatif::ProgressBar::new(image_len);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(format!("writing {}", target.display()));
        b
    });
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
        written += n as u64;
        if let Some(b) = &bar {
            b.set_position(written);
        }
    }
    dst.sync_all()?;
    drop(dst);
    if let Some(b) = &bar {
        b.finish_with_message("written");
    }
    dwcp_image::disk::write_config_partition(
        target,
        &[("dwcp.toml".to_owned(), config_text.clone().into_bytes())],
    )?;
    // The kernel command line follows the config (hugepages, isolated cores, console, IOMMU).
    let cfg = dwcp_provisioning::validate::check(&dwcp_provisioning::SourceFile::new(
        config.display().to_string(),
        config_text.clone(),
    ))
    .map_err(|d| anyhow::anyhow!("{}", d[0]))?;
    let cmdline = dwcp_provisioning::cmdline::kernel_cmdline(&cfg);
    let n = dwcp_image::disk::set_loader_options(target, &cmdline)?;
    println!("loader entries: {n} updated with `{cmdline}`");
    verify(image, target, &config_text)?;
    Ok(())
}

/// Reads the target back: everything outside the config partition equals the image, and the
/// config partition holds the config.
pub fn verify(image: &Path, target: &Path, config_text: &str) -> anyhow::Result<()> {
    let (cfg_off, cfg_len) =
        dwcp_image::disk::find_partition(target, dwcp_image::disk::CONFIG_LABEL)?;
    let (esp_off, esp_len) = dwcp_image::disk::find_partition(target, dwcp_image::disk::ESP_NAME)?;
    let image_len = std::fs::metadata(image)?.len();
    let hash_outside = |p: &Path| -> anyhow::Result<String> {
        let mut f = std::fs::File::open(p)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut pos = 0u64;
        while pos < image_len {
            let want = usize::try_from((image_len - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
            f.read_exact(&mut buf[..want])?;
            // The part of this chunk outside the config partition: before it, after it.
            let chunk = &buf[..want];
            let rel = |x: u64| {
                usize::try_from(x.saturating_sub(pos))
                    .unwrap_or(usize::MAX)
                    .min(want)
            };
            // The ESP and the config partition are adjacent: skip both as one range.
            let (lo, hi) = (
                cfg_off.min(esp_off),
                (cfg_off + cfg_len).max(esp_off + esp_len),
            );
            let (skip_from, skip_to) = (rel(lo), rel(hi));
            h.update(&chunk[..skip_from]);
            h.update(&chunk[skip_to.max(skip_from)..]);
            pos += want as u64;
        }
        Ok(hex_digest(h))
    };
    let (a, b) = (hash_outside(image)?, hash_outside(target)?);
    if a != b {
        bail!(
            "verification failed: {} differs from the image outside the config partition",
            target.display()
        );
    }
    let back = dwcp_image::disk::read_config_partition(target, "dwcp.toml")?;
    if back != config_text.as_bytes() {
        bail!("verification failed: the config partition does not hold the config");
    }
    // The system files on the ESP are checked file by file (the loader entries changed).
    let esp_image = read_region(image, esp_off, esp_len)?;
    let esp_target = read_region(target, esp_off, esp_len)?;
    for f in [
        "EFI/BOOT/BOOTX64.EFI",
        "dwcp/slot-a/vmlinuz",
        "dwcp/slot-a/initrd.img",
    ] {
        if dwcp_image::disk::fat_read(&esp_image, f)? != dwcp_image::disk::fat_read(&esp_target, f)?
        {
            bail!("verification failed: {f} on the ESP differs from the image");
        }
    }
    println!(
        "verified: partition table {a}, ESP system files identical, config partition holds the config"
    );
    Ok(())
}

fn read_region(p: &Path, off: u64, len: u64) -> anyhow::Result<Vec<u8>> {
    let mut f = std::fs::File::open(p)?;
    f.seek(SeekFrom::Start(off))?;
    let mut buf = vec![0u8; usize::try_from(len)?];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn hex_digest(h: Sha256) -> String {
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The default image location for `--image`.
pub fn default_image() -> PathBuf {
    super::image_build::workspace_root()
        .join("target")
        .join("artifacts")
        .join("disk.img")
}
