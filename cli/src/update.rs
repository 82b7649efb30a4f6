//! `dwcp update`: writes a new system into the inactive slot of a disk and makes it the
//! default with a boot counter. Refuses to update from a slot that was never marked good (it
//! never reached READY), so a bad system cannot replace the last good one.

use std::path::Path;

use anyhow::{Context as _, bail};
use dwcp_image::disk;

/// What an update did.
#[derive(Debug)]
pub struct Updated {
    /// The slot that was running (and stays as the fallback).
    pub from: char,
    /// The slot written.
    pub to: char,
}

/// Installs `new_dir`'s kernel and initramfs into the inactive slot of `target`.
pub fn update(new_dir: &Path, target: &Path) -> anyhow::Result<Updated> {
    let active = disk::default_slot(target)?.context("loader.conf names no default slot")?;
    let entries = disk::loader_entries(target)?;
    let states: Vec<disk::EntryState> = entries
        .iter()
        .filter_map(|e| disk::entry_state(e))
        .collect();
    let current = states
        .iter()
        .find(|e| e.slot == active)
        .with_context(|| format!("no loader entry for the default slot {active}"))?;
    if current.tries_left.is_some() {
        bail!(
            "slot {} ({}) has not been marked good yet — it has not reached DWCP READY: refusing to update from it",
            active.to_ascii_uppercase(),
            current.name
        );
    }
    let to = if active == 'a' { 'b' } else { 'a' };
    let options = disk::entry_options(target, &current.name)?;
    let read = |f: &str| {
        std::fs::read(new_dir.join(f))
            .with_context(|| format!("cannot read {}", new_dir.join(f).display()))
    };
    disk::install_slot(
        target,
        to,
        &read("vmlinuz")?,
        &read("initrd.img")?,
        &options,
        super::image_build::BOOT_TRIES,
    )?;
    Ok(Updated { from: active, to })
}
