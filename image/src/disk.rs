//! A bootable GPT disk image written by Rust code, without root or loop devices: an EFI
//! system partition (FAT32) and a small FAT config partition named `DWCP-CONFIG`. The caller
//! says which files go on each. Reproducible: fixed GUIDs derived from the contents, FAT
//! timestamps at the DOS epoch, fixed volume IDs.

use std::io::{Cursor, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// Sector size.
const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries.
const ALIGN: u64 = 2048;
/// GPT name and FAT label of the config partition.
pub const CONFIG_LABEL: &str = "DWCP-CONFIG";
/// GPT name of the EFI system partition.
pub const ESP_NAME: &str = "EFI-SYSTEM";

/// What goes on the disk.
#[derive(Clone, Debug, Default)]
pub struct DiskSpec {
    /// Files on the ESP: path (with `/`), contents.
    pub esp_files: Vec<(String, Vec<u8>)>,
    /// Files on the config partition.
    pub config_files: Vec<(String, Vec<u8>)>,
    /// ESP size in MiB (at least 64: FAT32 with 512-byte clusters).
    pub esp_mib: u64,
    /// Config partition size in MiB.
    pub config_mib: u64,
}

/// Why a disk could not be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// File system or partition table error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The partition table.
    #[error("partition table: {0}")]
    Gpt(String),
    /// No config partition on the target.
    #[error("no partition named {CONFIG_LABEL} on {0}")]
    NoConfigPartition(String),
    /// The ESP cannot hold the new slot beside the other one.
    #[error(
        "the ESP has {free_mib} MiB for slot {slot}, which needs {need_mib} MiB (kernel and \
         initramfs); nothing was written. A larger image (a GPU image) needs a disk made for \
         it: flash that image's disk.img"
    )]
    EspFull {
        /// The slot to install.
        slot: char,
        /// What the slot's files need, MiB (rounded up).
        need_mib: u64,
        /// Free space plus what the slot's old files take, MiB.
        free_mib: u64,
    },
}

/// A GUID in GPT's on-disk byte order from its text form.
fn guid(text: &str) -> [u8; 16] {
    let hex: Vec<u8> = text
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|p| u8::from_str_radix(&p.iter().collect::<String>(), 16).unwrap_or(0))
        .collect();
    let mut g = [0u8; 16];
    g.copy_from_slice(&hex[..16]);
    // The first three fields are little-endian on disk.
    g[..4].reverse();
    g[4..6].reverse();
    g[6..8].reverse();
    g
}

fn derived_guid(seed: &[u8], what: &str) -> [u8; 16] {
    let h = Sha256::new()
        .chain_update(seed)
        .chain_update(what.as_bytes())
        .finalize();
    let mut g = [0u8; 16];
    g.copy_from_slice(&h[..16]);
    g[7] = (g[7] & 0x0f) | 0x40; // version 4 layout, for tools that check
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

/// FAT timestamps: one fixed, valid date (2020-01-01 00:00), so builds are reproducible and
/// UEFI's FAT driver accepts renames (it rejects entries whose date is the all-zero "month 0,
/// day 0" a zero timestamp decodes to, which breaks systemd-boot's boot counting).
#[derive(Debug)]
struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 2020,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FIXED_TIME: FixedTime = FixedTime;

fn fs_options() -> fatfs::FsOptions {
    fatfs::FsOptions::new().time_provider(&FIXED_TIME)
}

fn fat_label(label: &str) -> [u8; 11] {
    let mut l = [b' '; 11];
    for (d, s) in l.iter_mut().zip(label.bytes()) {
        *d = s.to_ascii_uppercase();
    }
    l
}

/// A FAT file system image of `mib` MiB holding `files`.
pub fn fat_image(
    mib: u64,
    label: &str,
    fat32: bool,
    volume_id: u32,
    files: &[(String, Vec<u8>)],
) -> std::io::Result<Vec<u8>> {
    let size =
        usize::try_from(mib << 20).map_err(|_| std::io::Error::other("partition too large"))?;
    let mut img = Cursor::new(vec![0u8; size]);
    let mut opts = fatfs::FormatVolumeOptions::new()
        .volume_id(volume_id)
        .volume_label(fat_label(label));
    if fat32 {
        opts = opts.fat_type(fatfs::FatType::Fat32).bytes_per_cluster(512);
    }
    fatfs::format_volume(&mut img, opts)?;
    {
        let fs = fatfs::FileSystem::new(&mut img, fs_options())?;
        {
            let root = fs.root_dir();
            let mut sorted: Vec<&(String, Vec<u8>)> = files.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            for (path, data) in sorted {
                let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
                let Some((name, dirs)) = parts.split_last() else {
                    continue;
                };
                let mut dir = root.clone();
                for d in dirs {
                    dir = match dir.open_dir(d) {
                        Ok(x) => x,
                        Err(_) => dir.create_dir(d)?,
                    };
                }
                let mut f = dir.create_file(name)?;
                f.truncate()?;
                f.write_all(data)?;
                f.flush()?;
            }
        }
        fs.unmount()?;
    }
    Ok(img.into_inner())
}

/// Reads one file from a FAT image.
pub fn fat_read(image: &[u8], path: &str) -> std::io::Result<Vec<u8>> {
    let mut cur = Cursor::new(image.to_vec());
    let fs = fatfs::FileSystem::new(&mut cur, fatfs::FsOptions::new())?;
    let mut f = fs.root_dir().open_file(path.trim_start_matches('/'))?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// Writes the disk image to `out` (created or replaced).
pub fn write_disk(spec: &DiskSpec, out: &Path) -> Result<(), DiskError> {
    let mut seed = Sha256::new();
    for (p, d) in spec.esp_files.iter().chain(&spec.config_files) {
        seed.update(p.as_bytes());
        seed.update(d);
    }
    let seed = seed.finalize();
    let vol = |what: &str| {
        u32::from_le_bytes(derived_guid(&seed, what)[..4].try_into().unwrap_or([0; 4]))
    };
    let esp = fat_image(
        spec.esp_mib.max(64),
        "DWCP-ESP",
        true,
        vol("esp"),
        &spec.esp_files,
    )?;
    let config = fat_image(
        spec.config_mib.max(8),
        CONFIG_LABEL,
        false,
        vol("config"),
        &spec.config_files,
    )?;

    let esp_sectors = esp.len() as u64 / SECTOR;
    let config_sectors = config.len() as u64 / SECTOR;
    // Room for the backup GPT at the end (33 sectors), rounded to the alignment.
    let total = ALIGN + esp_sectors + config_sectors + ALIGN;
    let mut disk = Cursor::new(vec![0u8; usize::try_from(total * SECTOR).unwrap_or(0)]);
    let mut gpt = gptman::GPT::new_from(&mut disk, SECTOR, derived_guid(&seed, "disk"))
        .map_err(|e| DiskError::Gpt(e.to_string()))?;
    gpt.align = ALIGN;
    let esp_start = ALIGN;
    let config_start = esp_start + esp_sectors;
    gpt[1] = gptman::GPTPartitionEntry {
        partition_type_guid: guid("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        unique_partition_guid: derived_guid(&seed, "esp"),
        starting_lba: esp_start,
        ending_lba: esp_start + esp_sectors - 1,
        attribute_bits: 0,
        partition_name: ESP_NAME.into(),
    };
    gpt[2] = gptman::GPTPartitionEntry {
        // Microsoft basic data: every OS offers to mount it, so operators can edit the config.
        partition_type_guid: guid("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"),
        unique_partition_guid: derived_guid(&seed, "config"),
        starting_lba: config_start,
        ending_lba: config_start + config_sectors - 1,
        attribute_bits: 0,
        partition_name: CONFIG_LABEL.into(),
    };
    gptman::GPT::write_protective_mbr_into(&mut disk, SECTOR)
        .map_err(|e| DiskError::Gpt(e.to_string()))?;
    gpt.write_into(&mut disk)
        .map_err(|e| DiskError::Gpt(e.to_string()))?;
    disk.seek(SeekFrom::Start(esp_start * SECTOR))?;
    disk.write_all(&esp)?;
    disk.seek(SeekFrom::Start(config_start * SECTOR))?;
    disk.write_all(&config)?;
    std::fs::write(out, disk.into_inner())?;
    Ok(())
}

/// Where a named partition is on a disk image or block device: (byte offset, byte length).
pub fn find_partition(target: &Path, name: &str) -> Result<(u64, u64), DiskError> {
    let mut f = std::fs::File::open(target)?;
    let gpt = gptman::GPT::find_from(&mut f).map_err(|e| DiskError::Gpt(e.to_string()))?;
    let ss = gpt.sector_size;
    gpt.iter()
        .find(|(_, p)| p.is_used() && p.partition_name.as_str() == name)
        .map(|(_, p)| {
            (
                p.starting_lba * ss,
                (p.ending_lba - p.starting_lba + 1) * ss,
            )
        })
        .ok_or_else(|| DiskError::NoConfigPartition(target.display().to_string()))
}

/// Replaces the config partition's files on a disk image or device (reformats it).
pub fn write_config_partition(target: &Path, files: &[(String, Vec<u8>)]) -> Result<(), DiskError> {
    let (offset, len) = find_partition(target, CONFIG_LABEL)?;
    let mib = len >> 20;
    let mut seed = Sha256::new();
    for (p, d) in files {
        seed.update(p.as_bytes());
        seed.update(d);
    }
    let vol = u32::from_le_bytes(
        derived_guid(&seed.finalize(), "config")[..4]
            .try_into()
            .unwrap_or([0; 4]),
    );
    let image = fat_image(mib, CONFIG_LABEL, false, vol, files)?;
    let mut f = std::fs::OpenOptions::new().write(true).open(target)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&image)?;
    f.sync_all()?;
    Ok(())
}

/// Rewrites the `options` line of every loader entry on the ESP (the kernel command line a
/// node's config implies), in place on a disk image or device.
pub fn set_loader_options(target: &Path, options: &str) -> Result<usize, DiskError> {
    let (offset, len) = find_partition(target, ESP_NAME)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)?;
    let slice = fscommon::StreamSlice::new(file, offset, offset + len)?;
    let fs = fatfs::FileSystem::new(slice, fs_options())?;
    let mut changed = 0;
    {
        let entries = fs.root_dir().open_dir("loader/entries")?;
        let names: Vec<String> = entries
            .iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| n.ends_with(".conf"))
            .collect();
        for name in names {
            let mut text = String::new();
            entries.open_file(&name)?.read_to_string(&mut text)?;
            let new: String = text
                .lines()
                .map(|l| {
                    if l.starts_with("options ") {
                        format!("options {options}{}\n", slot_arg(&name))
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            let mut f = entries.open_file(&name)?;
            f.truncate()?;
            f.write_all(new.as_bytes())?;
            f.flush()?;
            changed += 1;
        }
    }
    fs.unmount()?;
    Ok(changed)
}

/// ` dwcp.slot=a` for an entry named `slot-a…`, so init knows which slot it booted.
fn slot_arg(entry: &str) -> String {
    entry
        .strip_prefix("slot-")
        .and_then(|r| r.chars().next())
        .map(|c| format!(" dwcp.slot={c}"))
        .unwrap_or_default()
}

/// The loader entries on a disk's ESP, sorted.
pub fn loader_entries(target: &Path) -> Result<Vec<String>, DiskError> {
    let (offset, len) = find_partition(target, ESP_NAME)?;
    let file = std::fs::File::open(target)?;
    let slice = fscommon::StreamSlice::new(file, offset, offset + len)?;
    let fs = fatfs::FileSystem::new(slice, fs_options())?;
    let mut names: Vec<String> = fs
        .root_dir()
        .open_dir("loader/entries")?
        .iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    Ok(names)
}

/// Reads a file from the config partition of a disk image or device.
pub fn read_config_partition(target: &Path, path: &str) -> Result<Vec<u8>, DiskError> {
    let (offset, len) = find_partition(target, CONFIG_LABEL)?;
    let mut f = std::fs::File::open(target)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    f.read_exact(&mut buf)?;
    Ok(fat_read(&buf, path)?)
}

/// A loader entry's state from its file name (`slot-a.conf`, `slot-a+3.conf`, `slot-a+2-1.conf`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryState {
    /// File name.
    pub name: String,
    /// Slot letter.
    pub slot: char,
    /// Tries left, when the entry still counts (None: marked good).
    pub tries_left: Option<u32>,
}

/// Parses a loader entry name of ours.
pub fn entry_state(name: &str) -> Option<EntryState> {
    let rest = name.strip_prefix("slot-")?.strip_suffix(".conf")?;
    let slot = rest.chars().next().filter(char::is_ascii_lowercase)?;
    let counter = &rest[1..];
    let tries_left = match counter.strip_prefix('+') {
        None if counter.is_empty() => None,
        None => return None,
        Some(c) => Some(c.split('-').next()?.parse().ok()?),
    };
    Some(EntryState {
        name: name.to_owned(),
        slot,
        tries_left,
    })
}

/// `loader/loader.conf`: no `default` — systemd-boot then boots the first entry in its order,
/// which skips entries with no tries left (a `default` pattern would pin a failing slot).
pub const LOADER_CONF: &str = "timeout 0\neditor no\n";

/// The text of a slot's loader entry.
pub fn slot_entry_text(slot: char, options: &str, version: u64) -> String {
    format!(
        "title DWCP appliance, slot {}\nsort-key dwcp\nversion {version}\nlinux /dwcp/slot-{slot}/vmlinuz\ninitrd /dwcp/slot-{slot}/initrd.img\noptions {options} dwcp.slot={slot}\n",
        slot.to_ascii_uppercase()
    )
}

/// Every loader entry of ours with its `version` (boot order: systemd-boot puts entries with
/// no tries left last, then sorts by `sort-key`, then by `version`, newest first).
pub fn entry_versions(target: &Path) -> Result<Vec<(EntryState, u64)>, DiskError> {
    let (offset, len) = find_partition(target, ESP_NAME)?;
    let file = std::fs::File::open(target)?;
    let slice = fscommon::StreamSlice::new(file, offset, offset + len)?;
    let fs = fatfs::FileSystem::new(slice, fs_options())?;
    let entries = fs.root_dir().open_dir("loader/entries")?;
    let mut out = Vec::new();
    let names: Vec<String> = entries
        .iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    for name in names {
        let Some(state) = entry_state(&name) else {
            continue;
        };
        let mut text = String::new();
        entries.open_file(&name)?.read_to_string(&mut text)?;
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("version "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.push((state, version));
    }
    Ok(out)
}

/// The slot systemd-boot boots by default: the newest entry that still has tries left or is
/// marked good.
pub fn default_slot(target: &Path) -> Result<Option<char>, DiskError> {
    let entries = entry_versions(target)?;
    Ok(entries
        .iter()
        .filter(|(e, _)| e.tries_left != Some(0))
        .max_by_key(|(_, v)| *v)
        .map(|(e, _)| e.slot))
}

/// Installs a system into `slot` on the ESP: its kernel and initramfs, a loader entry with
/// `tries` boot tries and the given options (plus `dwcp.slot=`), replacing the slot's old
/// entries, and makes it the default.
pub fn install_slot(
    target: &Path,
    slot: char,
    vmlinuz: &[u8],
    initrd: &[u8],
    options: &str,
    tries: u32,
) -> Result<(), DiskError> {
    let next_version = entry_versions(target)?
        .iter()
        .map(|(_, v)| *v)
        .max()
        .unwrap_or(0)
        + 1;
    let (offset, len) = find_partition(target, ESP_NAME)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)?;
    let slice = fscommon::StreamSlice::new(file, offset, offset + len)?;
    let fs = fatfs::FileSystem::new(slice, fs_options())?;
    {
        let root = fs.root_dir();
        let dwcp = match root.open_dir("dwcp") {
            Ok(d) => d,
            Err(_) => root.create_dir("dwcp")?,
        };
        let dir_name = format!("slot-{slot}");
        let dir = match dwcp.open_dir(&dir_name) {
            Ok(d) => d,
            Err(_) => dwcp.create_dir(&dir_name)?,
        };
        // Check the room first: a write that runs out of space would leave the slot's old
        // files cut short while its loader entry still points at them.
        let stats = fs.stats()?;
        let cluster = u64::from(stats.cluster_size());
        let clusters = |bytes: u64| bytes.div_ceil(cluster);
        let old_files: u64 = dir
            .iter()
            .filter_map(Result::ok)
            .filter(|e| e.is_file())
            .map(|e| clusters(e.len()))
            .sum();
        let need = clusters(vmlinuz.len() as u64) + clusters(initrd.len() as u64);
        let room = u64::from(stats.free_clusters()) + old_files;
        if need > room {
            let mib = |c: u64| (c * cluster).div_ceil(1 << 20);
            return Err(DiskError::EspFull {
                slot: slot.to_ascii_uppercase(),
                need_mib: mib(need),
                free_mib: mib(room),
            });
        }
        for (name, data) in [("vmlinuz", vmlinuz), ("initrd.img", initrd)] {
            let mut f = dir.create_file(name)?;
            f.truncate()?;
            f.write_all(data)?;
            f.flush()?;
        }
        let entries = root.open_dir("loader/entries")?;
        let old: Vec<String> = entries
            .iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| entry_state(n).is_some_and(|e| e.slot == slot))
            .collect();
        for n in old {
            entries.remove(&n)?;
        }
        let text = slot_entry_text(slot, options, next_version);
        let mut f = entries.create_file(&format!("slot-{slot}+{tries}.conf"))?;
        f.truncate()?;
        f.write_all(text.as_bytes())?;
        f.flush()?;
        let mut conf = root.create_file("loader/loader.conf")?;
        conf.truncate()?;
        conf.write_all(LOADER_CONF.as_bytes())?;
        conf.flush()?;
    }
    fs.unmount()?;
    Ok(())
}

/// The options of a slot's entry, without `dwcp.slot=`.
pub fn entry_options(target: &Path, entry: &str) -> Result<String, DiskError> {
    let (offset, len) = find_partition(target, ESP_NAME)?;
    let file = std::fs::File::open(target)?;
    let slice = fscommon::StreamSlice::new(file, offset, offset + len)?;
    let fs = fatfs::FileSystem::new(slice, fs_options())?;
    let mut text = String::new();
    fs.root_dir()
        .open_file(&format!("loader/entries/{entry}"))?
        .read_to_string(&mut text)?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .map(|o| {
            o.split_whitespace()
                .filter(|a| !a.starts_with("dwcp.slot="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DiskSpec {
        DiskSpec {
            esp_files: vec![
                ("EFI/BOOT/BOOTX64.EFI".into(), vec![0x4d, 0x5a, 1, 2]),
                ("loader/loader.conf".into(), b"timeout 0\n".to_vec()),
            ],
            config_files: vec![("dwcp.toml".into(), b"name = \"x\"\n".to_vec())],
            esp_mib: 64,
            config_mib: 8,
        }
    }

    #[test]
    fn disk_is_reproducible_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        write_disk(&spec(), &a).unwrap();
        write_disk(&spec(), &b).unwrap();
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "two builds differ"
        );
        assert_eq!(
            read_config_partition(&a, "dwcp.toml").unwrap(),
            b"name = \"x\"\n"
        );
        let (off, len) = find_partition(&a, ESP_NAME).unwrap();
        assert_eq!(off, ALIGN * SECTOR);
        assert_eq!(len, 64 << 20);
        let disk = std::fs::read(&a).unwrap();
        let esp = &disk[usize::try_from(off).unwrap()..usize::try_from(off + len).unwrap()];
        assert_eq!(
            fat_read(esp, "EFI/BOOT/BOOTX64.EFI").unwrap(),
            vec![0x4d, 0x5a, 1, 2]
        );
    }

    #[test]
    fn config_partition_can_be_replaced_alone() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        write_disk(&spec(), &a).unwrap();
        let before = std::fs::read(&a).unwrap();
        write_config_partition(&a, &[("dwcp.toml".into(), b"name = \"y\"\n".to_vec())]).unwrap();
        assert_eq!(
            read_config_partition(&a, "dwcp.toml").unwrap(),
            b"name = \"y\"\n"
        );
        let after = std::fs::read(&a).unwrap();
        let (off, _) = find_partition(&a, CONFIG_LABEL).unwrap();
        let off = usize::try_from(off).unwrap();
        assert!(
            before[..off] == after[..off],
            "only the config partition changes"
        );
    }

    #[test]
    fn entry_states() {
        assert_eq!(entry_state("slot-a.conf").unwrap().tries_left, None);
        assert_eq!(entry_state("slot-b+3.conf").unwrap().tries_left, Some(3));
        let e = entry_state("slot-b+0-3.conf").unwrap();
        assert_eq!((e.slot, e.tries_left), ('b', Some(0)));
        assert!(entry_state("other.conf").is_none());
        assert!(entry_state("slot-a-x.conf").is_none());
    }

    /// A 64 MiB-ESP disk at `dir/a.img` with slot A's loader entry, the default.
    fn disk_with_slot_a(dir: &Path) -> std::path::PathBuf {
        let a = dir.join("a.img");
        let mut sp = spec();
        sp.esp_files.push((
            "loader/entries/slot-a.conf".into(),
            b"title A\noptions console=ttyS0 dwcp.slot=a\n".to_vec(),
        ));
        sp.esp_files.retain(|(p, _)| p != "loader/loader.conf");
        sp.esp_files.push((
            "loader/loader.conf".into(),
            b"timeout 0\ndefault slot-a*\n".to_vec(),
        ));
        write_disk(&sp, &a).unwrap();
        a
    }

    #[test]
    fn install_slot_adds_an_entry_and_makes_it_default() {
        let dir = tempfile::tempdir().unwrap();
        let a = disk_with_slot_a(dir.path());
        assert_eq!(default_slot(&a).unwrap(), Some('a'));
        assert_eq!(entry_options(&a, "slot-a.conf").unwrap(), "console=ttyS0");
        install_slot(&a, 'b', b"kernel-b", b"initrd-b", "console=ttyS0", 3).unwrap();
        assert_eq!(
            loader_entries(&a).unwrap(),
            vec!["slot-a.conf".to_owned(), "slot-b+3.conf".to_owned()]
        );
        assert_eq!(default_slot(&a).unwrap(), Some('b'));
        assert_eq!(entry_options(&a, "slot-b+3.conf").unwrap(), "console=ttyS0");
    }

    #[test]
    fn a_slot_the_esp_cannot_hold_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let a = disk_with_slot_a(dir.path());
        install_slot(&a, 'b', b"kernel-b", b"initrd-b", "console=ttyS0", 3).unwrap();
        let before = std::fs::read(&a).unwrap();
        // 64 MiB of ESP cannot take a 70 MiB initramfs.
        let big = vec![7u8; 70 << 20];
        let e = install_slot(&a, 'b', b"kernel-b2", &big, "console=ttyS0", 3).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(
                e,
                DiskError::EspFull {
                    slot: 'B',
                    need_mib: 71,
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("nothing was written"), "{text}");
        assert!(std::fs::read(&a).unwrap() == before, "the disk changed");
        // Replacing a slot's files counts the room they free: a slot that fits still goes in.
        let fits = vec![7u8; 40 << 20];
        install_slot(&a, 'b', b"kernel-b3", &fits, "console=ttyS0", 3).unwrap();
        install_slot(&a, 'b', b"kernel-b4", &fits, "console=ttyS0", 3).unwrap();
    }

    #[test]
    fn guid_byte_order() {
        let g = guid("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(g[..4], [0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(g[8..], [0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b]);
    }
}
