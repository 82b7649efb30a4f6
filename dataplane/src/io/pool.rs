//! Packet buffer memory for the workers: one region mapped at start-up, from 1 GiB
//! hugepages when the kernel has them free, else 2 MiB hugepages, else regular pages (said
//! at start-up, since it costs TLB misses). The region lives as long as the process and is
//! cut into fixed-size buffers.

use std::io;

use crate::io::Buffer;

/// Where the buffers live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// 1 GiB hugepages.
    Huge1G,
    /// 2 MiB hugepages.
    Huge2M,
    /// Regular 4 KiB pages.
    Regular,
}

impl std::fmt::Display for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backing::Huge1G => "1 GiB hugepages",
            Backing::Huge2M => "2 MiB hugepages",
            Backing::Regular => "regular pages (no free hugepages; slower)",
        })
    }
}

const MAP_HUGE_SHIFT: i32 = 26;

fn map(len: usize, extra: i32) -> Option<&'static mut [u8]> {
    // SAFETY: an anonymous private mapping of `len` bytes; checked for MAP_FAILED. It is
    // never unmapped, so the `'static` slice over it stays valid, and it aliases nothing.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | extra,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(std::slice::from_raw_parts_mut(p.cast::<u8>(), len))
    }
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Maps room for `count` buffers of `size` bytes (rounded up to 64) and cuts it up.
pub fn buffers(count: usize, size: usize) -> io::Result<(Vec<Buffer>, Backing)> {
    let size = round_up(size, 64);
    let len = count
        .checked_mul(size)
        .ok_or_else(|| io::Error::other("buffer pool too large"))?;
    let (region, backing) = region(len)?;
    let bufs = region[..count * size]
        .chunks_exact_mut(size)
        .map(Buffer::Pool)
        .collect();
    Ok((bufs, backing))
}

/// Maps `len` bytes (at least one page) for the life of the process, from the largest
/// hugepages free; the RDMA link registers its buffers in one.
pub fn region(len: usize) -> io::Result<(&'static mut [u8], Backing)> {
    let len = len.max(1);
    let attempts = [
        (
            Backing::Huge1G,
            round_up(len, 1 << 30),
            libc::MAP_HUGETLB | (30 << MAP_HUGE_SHIFT),
        ),
        (
            Backing::Huge2M,
            round_up(len, 1 << 21),
            libc::MAP_HUGETLB | (21 << MAP_HUGE_SHIFT),
        ),
        (Backing::Regular, round_up(len, 4096), 0),
    ];
    for (backing, mapped, flags) in attempts {
        if let Some(region) = map(mapped, flags) {
            return Ok((&mut region[..len], backing));
        }
    }
    Err(io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_separate_writable_buffers() {
        let (mut bufs, backing) = buffers(10, 9400).unwrap();
        assert_eq!(bufs.len(), 10);
        assert!(bufs.iter().all(|b| b.bytes().len() == 9408));
        for (i, b) in bufs.iter_mut().enumerate() {
            b.bytes_mut().fill(u8::try_from(i).unwrap());
        }
        assert!(
            bufs.iter()
                .enumerate()
                .all(|(i, b)| b.bytes().iter().all(|&x| usize::from(x) == i))
        );
        eprintln!("test pool backed by {backing}");
    }
}
