//! A reproducible initramfs: a newc cpio archive, gzip-compressed, with sorted entries,
//! mtime 0, owner root and inode numbers assigned in order — the same inputs always give
//! the same bytes.

use std::collections::BTreeMap;
use std::io::{Read as _, Write};

use cpio::newc;

/// What one archive entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A character device (major, minor).
    CharDev(u32, u32),
    /// A symbolic link to a target.
    Symlink(String),
}

/// One entry: kind and permission bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (e.g. 0o755).
    pub perm: u32,
}

/// An initramfs being assembled. Paths are relative, without a leading `/`.
#[derive(Clone, Debug, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

fn clean(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn parents(&mut self, path: &str) {
        let mut p = path;
        while let Some((parent, _)) = p.rsplit_once('/') {
            self.entries.entry(parent.to_owned()).or_insert(Entry {
                kind: EntryKind::Dir,
                perm: 0o755,
            });
            p = parent;
        }
    }

    /// Adds an entry (and any missing parent directories).
    pub fn add(&mut self, path: &str, kind: EntryKind, perm: u32) {
        let path = clean(path);
        self.parents(&path);
        self.entries.insert(path, Entry { kind, perm });
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str) {
        self.add(path, EntryKind::Dir, 0o755);
    }

    /// Adds a file.
    pub fn file(&mut self, path: &str, data: Vec<u8>, perm: u32) {
        self.add(path, EntryKind::File(data), perm);
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// The uncompressed newc archive.
    pub fn to_cpio(&self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let (ftype, data): (u32, &[u8]) = match &entry.kind {
                EntryKind::Dir => (0o040_000, &[]),
                EntryKind::File(d) => (0o100_000, d),
                EntryKind::CharDev(..) => (0o020_000, &[]),
                EntryKind::Symlink(t) => (0o120_000, t.as_bytes()),
            };
            let mut b = newc::Builder::new(path)
                .ino(ino)
                .mode(ftype | entry.perm)
                .uid(0)
                .gid(0)
                .nlink(if matches!(entry.kind, EntryKind::Dir) {
                    2
                } else {
                    1
                })
                .mtime(0);
            if let EntryKind::CharDev(major, minor) = entry.kind {
                b = b.rdev_major(major).rdev_minor(minor);
            }
            let size = u32::try_from(data.len())
                .map_err(|_| std::io::Error::other(format!("{path}: larger than 4 GiB")))?;
            let mut w = b.write(&mut out, size);
            w.write_all(data)?;
            w.finish()?;
        }
        newc::trailer(&mut out)?;
        Ok(out)
    }

    /// The gzip-compressed archive (gzip header mtime 0, no file name).
    pub fn to_gzip(&self) -> std::io::Result<Vec<u8>> {
        let cpio = self.to_cpio()?;
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(3)
            .write(Vec::new(), flate2::Compression::new(6));
        gz.write_all(&cpio)?;
        gz.finish()
    }
}

/// Reads a gzip-compressed newc archive back: path → (mode, contents). For tests and
/// `dwcp image inspect`.
pub fn read_gzip(data: &[u8]) -> std::io::Result<BTreeMap<String, (u32, Vec<u8>)>> {
    let mut cpio = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut cpio)?;
    let mut out = BTreeMap::new();
    let mut rest: &[u8] = &cpio;
    loop {
        let mut reader = newc::Reader::new(rest)?;
        if reader.entry().is_trailer() {
            break;
        }
        let name = reader.entry().name().to_owned();
        let mode = reader.entry().mode();
        let mut contents = Vec::new();
        reader.read_to_end(&mut contents)?;
        out.insert(name, (mode, contents));
        rest = reader.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_parents() {
        let mut i = Initramfs::new();
        i.file("/usr/bin/x", b"hello".to_vec(), 0o755);
        i.add("dev/console", EntryKind::CharDev(5, 1), 0o600);
        let gz = i.to_gzip().unwrap();
        let back = read_gzip(&gz).unwrap();
        assert_eq!(back["usr/bin/x"], (0o100_755, b"hello".to_vec()));
        assert_eq!(back["usr"].0, 0o040_755);
        assert_eq!(back["usr/bin"].0, 0o040_755);
        assert_eq!(back["dev/console"].0, 0o020_600);
    }

    #[test]
    fn same_inputs_same_bytes_whatever_the_order() {
        let mut a = Initramfs::new();
        a.file("b", vec![1], 0o644);
        a.file("a/c", vec![2], 0o644);
        let mut b = Initramfs::new();
        b.file("a/c", vec![2], 0o644);
        b.file("b", vec![1], 0o644);
        assert_eq!(a.to_gzip().unwrap(), b.to_gzip().unwrap());
    }
}
