//! The `af_packet` backend: a TPACKET_V3 RX ring and TX ring mmap'ed from one AF_PACKET
//! socket per worker and port. Receiving reads frames straight out of the ring; sending
//! copies each frame into a TX slot and one `send()` per burst hands them all to the kernel.
//! Optionally joins a fanout group (hash of the flow), so each worker gets whole flows.
//!
//! All `unsafe` of the data plane's kernel I/O lives here, each block with its `SAFETY`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::PacketPort;

const TPACKET_V3: libc::c_int = 2;
/// RX: blocks of 4 MiB, 8 of them.
const RX_BLOCK_SIZE: u32 = 1 << 22;
const RX_BLOCK_NR: u32 = 8;
/// Frame size hint for the RX ring (V3 packs variable-size frames into blocks).
const RX_FRAME_SIZE: u32 = 1 << 11;
/// Retire a partly filled RX block after this many milliseconds.
const RX_RETIRE_MS: u32 = 1;
/// TX: fixed slots large enough for a jumbo frame.
const TX_FRAME_SIZE: u32 = 1 << 14;
const TX_FRAME_NR: u32 = 512;
const TX_BLOCK_SIZE: u32 = TX_FRAME_SIZE * 16;
/// Where frame data starts in a TX slot: `TPACKET3_HDRLEN - sizeof(sockaddr_ll)`.
const TX_DATA_OFFSET: usize = 48;

/// An AF_PACKET port.
pub struct AfPacket {
    fd: OwnedFd,
    ring: NonNull<u8>,
    ring_len: usize,
    rx_block: u32,
    /// Frames left in the RX block being read, and where the next one is.
    rx_left: u32,
    rx_next: usize,
    tx_frame: u32,
    tx_pending: u32,
    mac: [u8; 6],
    /// Frames the TX ring had no room for.
    pub tx_full: u64,
}

// SAFETY: the ring mapping is owned by this value alone (no aliasing handle is given out),
// so moving it to another thread moves sole access with it.
unsafe impl Send for AfPacket {}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<T>())
        .map_err(|_| io::Error::other("option too large"))?;
    // SAFETY: `value` points to a live `T` of `len` bytes for the duration of the call; the
    // kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn read_mac(ifname: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
    let mut mac = [0u8; 6];
    for (i, part) in text.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).map_err(|_| io::Error::other("bad MAC in sysfs"))?;
    }
    Ok(mac)
}

impl AfPacket {
    /// Opens `ifname`; with `fanout`, joins that fanout group (hash mode).
    pub fn open(ifname: &str, fanout: Option<u16>) -> io::Result<Self> {
        let c_name =
            CString::new(ifname).map_err(|_| io::Error::other("interface name has a NUL"))?;
        // SAFETY: `c_name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::other(format!(
                "no network interface named `{ifname}`"
            )));
        }
        let proto = u16::try_from(libc::ETH_P_ALL).unwrap_or(3).to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &TPACKET_V3)?;
        let one: libc::c_int = 1;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)?;
        // Bypassing the qdisc is an optimisation; older kernels refuse it harmlessly.
        let _ = setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one);
        let rx = libc::tpacket_req3 {
            tp_block_size: RX_BLOCK_SIZE,
            tp_block_nr: RX_BLOCK_NR,
            tp_frame_size: RX_FRAME_SIZE,
            tp_frame_nr: RX_BLOCK_SIZE / RX_FRAME_SIZE * RX_BLOCK_NR,
            tp_retire_blk_tov: RX_RETIRE_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &rx)?;
        let tx = libc::tpacket_req3 {
            tp_block_size: TX_BLOCK_SIZE,
            tp_block_nr: TX_FRAME_NR * TX_FRAME_SIZE / TX_BLOCK_SIZE,
            tp_frame_size: TX_FRAME_SIZE,
            tp_frame_nr: TX_FRAME_NR,
            tp_retire_blk_tov: 0,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_TX_RING, &tx)?;
        let rx_len = (RX_BLOCK_SIZE * RX_BLOCK_NR) as usize;
        let ring_len = rx_len + (TX_FRAME_SIZE * TX_FRAME_NR) as usize;
        // SAFETY: maps the socket's rings (RX then TX, as the kernel lays them out) into a
        // fresh region; the result is checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        // SAFETY: zeroed `sockaddr_ll` is valid; the fields set below are plain integers.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
        sll.sll_protocol = proto;
        sll.sll_ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::other("ifindex out of range"))?;
        let port = Self {
            fd,
            ring,
            ring_len,
            rx_block: 0,
            rx_left: 0,
            rx_next: 0,
            tx_frame: 0,
            tx_pending: 0,
            mac: read_mac(ifname)?,
            tx_full: 0,
        };
        let sll_len =
            libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(20);
        // SAFETY: `sll` is a valid sockaddr_ll of `sll_len` bytes.
        let rc = unsafe {
            libc::bind(
                port.fd.as_raw_fd(),
                std::ptr::from_ref(&sll).cast(),
                sll_len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(group) = fanout {
            let arg: u32 = u32::from(group) | (libc::PACKET_FANOUT_HASH << 16);
            setsockopt(&port.fd, libc::SOL_PACKET, libc::PACKET_FANOUT, &arg)?;
        }
        Ok(port)
    }

    fn block(&self, i: u32) -> *mut libc::tpacket_block_desc {
        // SAFETY (of the arithmetic): `i < RX_BLOCK_NR`, so the offset stays inside the RX
        // part of the mapping.
        self.ring
            .as_ptr()
            .wrapping_add((i * RX_BLOCK_SIZE) as usize)
            .cast()
    }

    fn block_status(&self, i: u32) -> &AtomicU32 {
        let bd = self.block(i);
        // SAFETY: `block_status` is the first u32 of the block header, 4-byte aligned inside
        // the live mapping; the kernel and we hand the block back and forth through it, so it
        // is accessed atomically.
        unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*bd).hdr.bh1.block_status)) }
    }
}

impl PacketPort for AfPacket {
    fn rx_burst(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            if self.rx_left == 0 {
                let status = self.block_status(self.rx_block);
                if status.load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                    break;
                }
                let bd = self.block(self.rx_block);
                // SAFETY: the block is ours (TP_STATUS_USER) until we set TP_STATUS_KERNEL;
                // its header fields are plain integers inside the mapping.
                let (num, first) =
                    unsafe { ((*bd).hdr.bh1.num_pkts, (*bd).hdr.bh1.offset_to_first_pkt) };
                if num == 0 {
                    status.store(libc::TP_STATUS_KERNEL, Ordering::Release);
                    self.rx_block = (self.rx_block + 1) % RX_BLOCK_NR;
                    continue;
                }
                self.rx_left = num;
                self.rx_next = (self.rx_block * RX_BLOCK_SIZE) as usize + first as usize;
            }
            let hdr_ptr = self
                .ring
                .as_ptr()
                .wrapping_add(self.rx_next)
                .cast::<libc::tpacket3_hdr>();
            // SAFETY: the kernel wrote a tpacket3_hdr at this offset inside our block, and
            // `tp_mac + tp_snaplen` bytes of frame after it, all within the block.
            let (next, mac_off, snap) = unsafe {
                (
                    (*hdr_ptr).tp_next_offset,
                    (*hdr_ptr).tp_mac,
                    (*hdr_ptr).tp_snaplen,
                )
            };
            let start = self.rx_next + usize::from(mac_off);
            let end = start + snap as usize;
            let block_end = ((self.rx_block + 1) * RX_BLOCK_SIZE) as usize;
            if end <= block_end {
                // SAFETY: `start..end` lies inside the block we own (checked above).
                let frame = unsafe {
                    std::slice::from_raw_parts(self.ring.as_ptr().add(start), end - start)
                };
                f(frame);
                n += 1;
            }
            self.rx_left -= 1;
            self.rx_next += next as usize;
            if self.rx_left == 0 || next == 0 {
                self.rx_left = 0;
                self.block_status(self.rx_block)
                    .store(libc::TP_STATUS_KERNEL, Ordering::Release);
                self.rx_block = (self.rx_block + 1) % RX_BLOCK_NR;
            }
        }
        n
    }

    fn tx(&mut self, frame: &[u8]) -> bool {
        if frame.len() + TX_DATA_OFFSET > TX_FRAME_SIZE as usize {
            self.tx_full += 1;
            return false;
        }
        let rx_len = (RX_BLOCK_SIZE * RX_BLOCK_NR) as usize;
        let slot = rx_len + (self.tx_frame * TX_FRAME_SIZE) as usize;
        let hdr_ptr = self
            .ring
            .as_ptr()
            .wrapping_add(slot)
            .cast::<libc::tpacket3_hdr>();
        // SAFETY: `tp_status` of a TX slot inside the mapping, shared with the kernel, so
        // accessed atomically; 4-byte aligned (slots are 16 KiB aligned).
        let status = unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*hdr_ptr).tp_status)) };
        if status.load(Ordering::Acquire) != libc::TP_STATUS_AVAILABLE {
            self.tx_full += 1;
            return false;
        }
        let len = u32::try_from(frame.len()).unwrap_or(0);
        // SAFETY: the slot is ours (TP_STATUS_AVAILABLE) and `TX_DATA_OFFSET + len` fits in
        // it (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                frame.as_ptr(),
                self.ring.as_ptr().add(slot + TX_DATA_OFFSET),
                frame.len(),
            );
            (*hdr_ptr).tp_len = len;
            (*hdr_ptr).tp_snaplen = len;
        }
        status.store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.tx_frame = (self.tx_frame + 1) % TX_FRAME_NR;
        self.tx_pending += 1;
        true
    }

    fn flush(&mut self) {
        if self.tx_pending == 0 {
            return;
        }
        self.tx_pending = 0;
        // SAFETY: send(2) with no buffer asks the kernel to transmit the TX ring's pending
        // slots; MSG_DONTWAIT keeps it from blocking the worker.
        unsafe { libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

impl Drop for AfPacket {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mmap returned; no slice into it outlives `self`.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.ring_len) };
    }
}
