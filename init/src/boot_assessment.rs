//! Marking the booted slot good (systemd-boot's boot assessment): once the data plane is
//! READY, the loader entry of the slot named by `dwcp.slot=` on the kernel command line loses
//! its boot counter (`slot-a+2-1.conf` → `slot-a.conf`), so the boot loader stops counting
//! tries down and never falls back from it.

use std::path::Path;

use nix::mount::{MsFlags, mount, umount};

/// Where the ESP is mounted while the entry is renamed.
pub const ESP_MOUNT: &str = "/run/dwcp/esp";

/// The slot letter from a kernel command line (`dwcp.slot=a`).
pub fn slot_from_cmdline(cmdline: &str) -> Option<char> {
    cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("dwcp.slot="))
        .and_then(|s| s.chars().next())
        .filter(char::is_ascii_lowercase)
}

/// The good name of a counted entry of `slot` (`slot-a+2-1.conf` → `slot-a.conf`), or `None`
/// when the name is not a counted entry of that slot.
pub fn good_name(entry: &str, slot: char) -> Option<String> {
    let prefix = format!("slot-{slot}+");
    let rest = entry.strip_prefix(&prefix)?.strip_suffix(".conf")?;
    let counter_ok = rest
        .split('-')
        .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    counter_ok.then(|| format!("slot-{slot}.conf"))
}

/// Renames the booted slot's counted entry on the EFI system partition `esp` (the boot
/// disk's, [`crate::boot_disk::choose`]); returns what was renamed.
pub fn mark_good(
    esp: &crate::boot_disk::Choice,
    cmdline: &str,
) -> Result<Option<(String, String)>, String> {
    let Some(slot) = slot_from_cmdline(cmdline) else {
        return Ok(None);
    };
    let dev = match (&esp.dev, &esp.note) {
        (Some(dev), _) => dev,
        (None, Some(note)) => return Err(format!("no EFI system partition to use: {note}")),
        (None, None) => return Err("no EFI-SYSTEM partition".into()),
    };
    let _ = std::fs::create_dir_all(ESP_MOUNT);
    let source = format!("/dev/{dev}");
    mount(
        Some(source.as_str()),
        ESP_MOUNT,
        Some("vfat"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("codepage=437,iocharset=iso8859-1"),
    )
    .map_err(|e| format!("cannot mount {source}: {}", e.desc()))?;
    let entries = Path::new(ESP_MOUNT).join("loader/entries");
    let result = (|| {
        for e in std::fs::read_dir(&entries)
            .map_err(|e| e.to_string())?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(good) = good_name(&name, slot) {
                std::fs::rename(entries.join(&name), entries.join(&good))
                    .map_err(|e| e.to_string())?;
                nix::unistd::sync();
                return Ok(Some((name, good)));
            }
        }
        Ok(None)
    })();
    let _ = umount(ESP_MOUNT);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            slot_from_cmdline("console=ttyS0 dwcp.slot=b quiet"),
            Some('b')
        );
        assert_eq!(slot_from_cmdline("console=ttyS0"), None);
        assert_eq!(
            good_name("slot-a+2-1.conf", 'a').as_deref(),
            Some("slot-a.conf")
        );
        assert_eq!(
            good_name("slot-a+3.conf", 'a').as_deref(),
            Some("slot-a.conf")
        );
        assert_eq!(good_name("slot-a.conf", 'a'), None);
        assert_eq!(good_name("slot-b+1-2.conf", 'a'), None);
        assert_eq!(good_name("slot-a+x.conf", 'a'), None);
    }

    #[test]
    fn no_esp_of_the_boot_disk_is_no_renaming() {
        use crate::boot_disk::Choice;
        // Not a slot boot (PXE, a kernel started directly): nothing to mark.
        assert_eq!(mark_good(&Choice::default(), "console=ttyS0"), Ok(None));
        let passed_over = Choice {
            dev: None,
            note: Some("passed over /dev/vda1 on other disks than the boot disk vdb".into()),
        };
        let why = mark_good(&passed_over, "dwcp.slot=a").unwrap_err();
        assert!(
            why.ends_with("passed over /dev/vda1 on other disks than the boot disk vdb"),
            "{why}"
        );
        assert_eq!(
            mark_good(&Choice::default(), "dwcp.slot=a"),
            Err("no EFI-SYSTEM partition".into())
        );
    }
}
