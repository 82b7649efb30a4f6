//! Which disk the node booted from, so that init takes its config partition and EFI system
//! partition from that disk and not from another one that happens to be attached (a USB stick,
//! another node's old disk: decision 0025). systemd-boot names the partition it was started from
//! in the EFI variable `LoaderDevicePartUUID`; the disk whose GPT holds that partition is the
//! boot disk. Where the boot disk is unknown (PXE, a kernel booted directly) and several disks
//! offer a partition, init takes none of them and says why: running with another node's
//! identity is worse than waiting in safe mode.

use std::fmt::Write as _;

use crate::sys::SysFs;

/// Where init mounts efivarfs.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// systemd-boot's variable naming the partition it was loaded from (the Boot Loader
/// Interface's vendor GUID).
pub const LOADER_DEVICE_PART_UUID: &str =
    "LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The GPT name of the config partition.
pub const CONFIG_PARTITION: &str = "DWCP-CONFIG";

/// The GPT name of the EFI system partition.
pub const EFI_PARTITION: &str = "EFI-SYSTEM";

/// A named GPT partition the kernel found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Block device name (`vdb2`).
    pub dev: String,
    /// The disk it is on (`vdb`).
    pub disk: String,
    /// Its number in the disk's partition table (`PARTN`).
    pub number: u32,
    /// Its GPT name (`PARTNAME`).
    pub name: String,
}

/// Every named partition, from `/sys/block/DISK/PART/uevent`, disk by disk.
pub fn partitions(fs: &dyn SysFs) -> Vec<Partition> {
    let mut out = Vec::new();
    for disk in fs.list("/sys/block").unwrap_or_default() {
        for dev in fs.list(&format!("/sys/block/{disk}")).unwrap_or_default() {
            if !dev.starts_with(&disk) || dev == disk {
                continue;
            }
            let Ok(uevent) = fs.read(&format!("/sys/block/{disk}/{dev}/uevent")) else {
                continue;
            };
            let field = |key: &str| uevent.lines().find_map(|l| l.trim().strip_prefix(key));
            if field("DEVTYPE=") != Some("partition") {
                continue;
            }
            if let (Some(name), Some(number)) = (
                field("PARTNAME="),
                field("PARTN=").and_then(|n| n.parse().ok()),
            ) {
                out.push(Partition {
                    dev,
                    disk: disk.clone(),
                    number,
                    name: name.to_owned(),
                });
            }
        }
    }
    out
}

/// The partition GUID in efivarfs's bytes for [`LOADER_DEVICE_PART_UUID`] (four bytes of
/// attributes, then UTF-16LE text, perhaps NUL-terminated), lowercased.
pub fn loader_partition(bytes: &[u8]) -> Option<String> {
    let units: Vec<u16> = bytes
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let text = String::from_utf16(&units).ok()?.to_ascii_lowercase();
    let shape = text.len() == 36
        && text.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    shape.then_some(text)
}

/// A GUID in GPT's on-disk byte order (the first three fields little-endian) as lowercase
/// text.
pub fn guid_text(b: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, idx) in [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15]
        .into_iter()
        .enumerate()
    {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{:02x}", b[idx]);
    }
    s
}

/// A disk's partitions' unique GUIDs (as text) by partition number, or why they could not be
/// read.
pub type PartitionGuids = Result<Vec<(u32, String)>, String>;

/// The unique GUIDs of a disk's partitions, by number, read from its GPT (`/dev/DISK`).
pub fn gpt_partition_guids(disk: &str) -> PartitionGuids {
    let path = format!("/dev/{disk}");
    let mut f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    let gpt = gptman::GPT::find_from(&mut f).map_err(|e| format!("{path}: GPT: {e}"))?;
    Ok(gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| (n, guid_text(&p.unique_partition_guid)))
        .collect())
}

/// What init knows of the disk it booted from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootDisk {
    /// systemd-boot was started from the partition `esp` of `disk`.
    Known {
        /// The disk (`vdb`).
        disk: String,
        /// The partition the boot loader was started from (`vdb1`).
        esp: String,
    },
    /// Not known, and why.
    Unknown(String),
}

impl std::fmt::Display for BootDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootDisk::Known { disk, esp } => {
                write!(f, "{disk} (the boot loader was started from {esp})")
            }
            BootDisk::Unknown(why) => write!(f, "unknown: {why}"),
        }
    }
}

/// Finds the boot disk among the disks holding `partitions`: `loader` is the partition GUID
/// the boot loader names (or why there is none), `guids` reads a disk's partition GUIDs.
pub fn find(
    partitions: &[Partition],
    loader: Result<String, String>,
    guids: &dyn Fn(&str) -> PartitionGuids,
) -> BootDisk {
    let loader = match loader {
        Ok(l) => l,
        Err(why) => return BootDisk::Unknown(why),
    };
    let mut disks: Vec<&str> = partitions.iter().map(|p| p.disk.as_str()).collect();
    disks.dedup();
    let mut found = Vec::new();
    let mut unread = Vec::new();
    for disk in disks {
        match guids(disk) {
            Ok(g) => found.extend(
                g.iter()
                    .filter(|(_, guid)| *guid == loader)
                    .filter_map(|(n, _)| {
                        partitions.iter().find(|p| p.disk == disk && p.number == *n)
                    }),
            ),
            Err(e) => unread.push(e),
        }
    }
    match found[..] {
        [p] => BootDisk::Known {
            disk: p.disk.clone(),
            esp: p.dev.clone(),
        },
        [] => BootDisk::Unknown(format!(
            "no disk holds partition {loader}, which the boot loader says it was started from{}",
            if unread.is_empty() {
                String::new()
            } else {
                format!(" ({})", unread.join("; "))
            }
        )),
        _ => BootDisk::Unknown(format!(
            "partitions {} all have the GUID {loader} the boot loader was started from (copies of one image): the firmware's choice cannot be told",
            found
                .iter()
                .map(|p| p.dev.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Reads what the boot loader says (efivarfs must be mounted at [`EFIVARS`]) and finds the
/// boot disk among `partitions`.
pub fn detect(fs: &dyn SysFs, partitions: &[Partition]) -> BootDisk {
    let loader = if !fs.exists("/sys/firmware/efi") {
        Err("not booted through UEFI".to_owned())
    } else {
        match std::fs::read(format!("{EFIVARS}/{LOADER_DEVICE_PART_UUID}")) {
            Ok(bytes) => loader_partition(&bytes)
                .ok_or_else(|| "LoaderDevicePartUUID is not a GUID".to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(
                "the boot loader did not say which partition it was started from (no LoaderDevicePartUUID)"
                    .to_owned(),
            ),
            Err(e) => Err(format!("cannot read LoaderDevicePartUUID: {e}")),
        }
    };
    find(partitions, loader, &gpt_partition_guids)
}

/// Which partition named `name` init uses, and what the console should hear about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Choice {
    /// The partition to use (`vdb2`), if any.
    pub dev: Option<String>,
    /// Partitions of that name passed over, and why; `None` when there were none.
    pub note: Option<String>,
}

/// Chooses the partition named `name`: the one on the boot disk when the boot disk is known
/// (the others are passed over), else the only one; several on disks of which none is known
/// to be the boot disk: none.
pub fn choose(partitions: &[Partition], name: &str, boot: &BootDisk) -> Choice {
    let named: Vec<&Partition> = partitions.iter().filter(|p| p.name == name).collect();
    let list = |ps: &[&Partition]| {
        ps.iter()
            .map(|p| format!("/dev/{}", p.dev))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match boot {
        BootDisk::Known { disk, .. } => {
            let (mine, others): (Vec<&Partition>, Vec<&Partition>) =
                named.iter().partition(|p| &p.disk == disk);
            let note = (!others.is_empty()).then(|| {
                format!(
                    "passed over {} on other disks than the boot disk {disk}",
                    list(&others)
                )
            });
            Choice {
                dev: mine.first().map(|p| p.dev.clone()),
                note,
            }
        }
        BootDisk::Unknown(why) => match named[..] {
            [] => Choice {
                dev: None,
                note: None,
            },
            [p] => Choice {
                dev: Some(p.dev.clone()),
                note: None,
            },
            _ => Choice {
                dev: None,
                note: Some(format!(
                    "{} partitions named {name} ({}) and the boot disk is unknown ({why}): using none of them (detach the disks that are not this node's)",
                    named.len(),
                    list(&named)
                )),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::RootedFs;

    fn part(dev: &str, disk: &str, number: u32, name: &str) -> Partition {
        Partition {
            dev: dev.into(),
            disk: disk.into(),
            number,
            name: name.into(),
        }
    }

    /// Two disks with the same image layout: vda (another node's) and vdb (the boot disk).
    fn two_disks() -> Vec<Partition> {
        vec![
            part("vda1", "vda", 1, EFI_PARTITION),
            part("vda2", "vda", 2, CONFIG_PARTITION),
            part("vdb1", "vdb", 1, EFI_PARTITION),
            part("vdb2", "vdb", 2, CONFIG_PARTITION),
        ]
    }

    const ESP_A: &str = "0f3c3e7b-5a1d-4c2e-9b8a-1d2e3f405162";
    const ESP_B: &str = "a1b2c3d4-e5f6-4711-8899-aabbccddeeff";

    fn guids(disk: &str) -> PartitionGuids {
        match disk {
            "vda" => Ok(vec![
                (1, ESP_A.into()),
                (2, "11111111-0000-0000-0000-000000000002".into()),
            ]),
            "vdb" => Ok(vec![
                (1, ESP_B.into()),
                (2, "22222222-0000-0000-0000-000000000002".into()),
            ]),
            _ => Err(format!("/dev/{disk}: no such disk")),
        }
    }

    #[test]
    fn the_partitions_are_read_from_sysfs_disk_by_disk() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootedFs::new(dir.path());
        for (disk, dev, n, name) in [
            ("vda", "vda1", 1, EFI_PARTITION),
            ("vda", "vda2", 2, CONFIG_PARTITION),
            ("nvme0n1", "nvme0n1p1", 1, CONFIG_PARTITION),
        ] {
            let d = fs.path(&format!("/sys/block/{disk}/{dev}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("uevent"),
                format!(
                    "MAJOR=253\nDEVNAME={dev}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={name}\n"
                ),
            )
            .unwrap();
        }
        // Not partitions: the disk's own attributes, a partition without a GPT name.
        std::fs::create_dir_all(fs.path("/sys/block/vda/queue")).unwrap();
        let d = fs.path("/sys/block/vda/vda3");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("uevent"), "DEVTYPE=partition\nPARTN=3\n").unwrap();
        assert_eq!(
            partitions(&fs),
            vec![
                part("nvme0n1p1", "nvme0n1", 1, CONFIG_PARTITION),
                part("vda1", "vda", 1, EFI_PARTITION),
                part("vda2", "vda", 2, CONFIG_PARTITION),
            ]
        );
    }

    #[test]
    fn the_boot_loader_s_variable_and_gpt_guids_read_as_text() {
        let mut var = vec![6, 0, 0, 0];
        for u in "A1B2C3D4-E5F6-4711-8899-AABBCCDDEEFF\0".encode_utf16() {
            var.extend(u.to_le_bytes());
        }
        assert_eq!(loader_partition(&var).as_deref(), Some(ESP_B));
        assert_eq!(
            loader_partition(&var[..var.len() - 2]).as_deref(),
            Some(ESP_B)
        );
        assert_eq!(loader_partition(&var[..20]), None, "cut short");
        assert_eq!(loader_partition(&[6, 0, 0]), None);
        // GPT keeps the first three fields little-endian (EFI system partition's type GUID).
        let on_disk = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        assert_eq!(guid_text(&on_disk), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }

    #[test]
    fn the_boot_disk_is_the_one_holding_the_boot_loader_s_partition() {
        let ps = two_disks();
        let boot = find(&ps, Ok(ESP_B.into()), &guids);
        assert_eq!(
            boot,
            BootDisk::Known {
                disk: "vdb".into(),
                esp: "vdb1".into()
            }
        );
        let c = choose(&ps, CONFIG_PARTITION, &boot);
        assert_eq!(c.dev.as_deref(), Some("vdb2"));
        assert_eq!(
            c.note.as_deref(),
            Some("passed over /dev/vda2 on other disks than the boot disk vdb")
        );
        // Alone on the boot disk: nothing to say.
        let alone = &ps[2..];
        let c = choose(
            alone,
            CONFIG_PARTITION,
            &find(alone, Ok(ESP_B.into()), &guids),
        );
        assert_eq!(
            c,
            Choice {
                dev: Some("vdb2".into()),
                note: None
            }
        );
        // The boot disk has no config partition: another disk's is not taken.
        let c = choose(&ps[..3], CONFIG_PARTITION, &boot);
        assert_eq!(c.dev, None);
        assert!(c.note.unwrap().contains("/dev/vda2"));
    }

    #[test]
    fn an_unknown_boot_disk_allows_one_partition_but_never_a_guess_among_several() {
        let ps = two_disks();
        let why = |b: &BootDisk| match b {
            BootDisk::Unknown(w) => w.clone(),
            BootDisk::Known { .. } => panic!("{b:?}"),
        };
        // PXE or a kernel booted directly: no variable.
        let boot = find(&ps, Err("not booted through UEFI".into()), &guids);
        let c = choose(&ps, CONFIG_PARTITION, &boot);
        assert_eq!(c.dev, None);
        assert_eq!(
            c.note.as_deref(),
            Some(
                "2 partitions named DWCP-CONFIG (/dev/vda2, /dev/vdb2) and the boot disk is unknown (not booted through UEFI): using none of them (detach the disks that are not this node's)"
            )
        );
        assert_eq!(
            choose(&ps[..2], CONFIG_PARTITION, &boot),
            Choice {
                dev: Some("vda2".into()),
                note: None
            }
        );
        // A partition no disk holds.
        let boot = find(
            &ps,
            Ok("99999999-0000-0000-0000-000000000000".into()),
            &guids,
        );
        assert!(
            why(&boot).starts_with("no disk holds partition 99999999-"),
            "{boot}"
        );
        // Two copies of one image: the same GUID on both disks.
        let same = |_: &str| Ok(vec![(1, ESP_B.to_owned())]);
        let boot = find(&ps, Ok(ESP_B.into()), &same);
        assert!(
            why(&boot).contains("partitions vda1, vdb1 all have the GUID"),
            "{boot}"
        );
        assert_eq!(choose(&ps, CONFIG_PARTITION, &boot).dev, None);
        // A disk that cannot be read is named.
        let ps = vec![part("sdz1", "sdz", 1, EFI_PARTITION)];
        let boot = find(&ps, Ok(ESP_B.into()), &guids);
        assert!(why(&boot).ends_with("(/dev/sdz: no such disk)"), "{boot}");
    }
}
