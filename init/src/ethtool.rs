//! The one ethtool setting init makes on `af_packet` ports: generic receive offload off.
//! GRO merges consecutive TCP segments before packet sockets see them, so the data plane would
//! receive super-frames larger than any MTU; with it off, it sees the frames on the wire.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_SGRO: u32 = 0x0000_002c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns GRO off on an interface.
#[allow(unsafe_code)]
pub fn disable_gro(ifname: &str) -> io::Result<()> {
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!("bad interface name `{ifname}`")));
    }
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: 0,
    };
    // SAFETY: an all-zero ifreq is valid; the name (shorter than IFNAMSIZ, so NUL-terminated
    // by the zeroes) and the data pointer are set below.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    ifr.ifr_ifru.ifru_data = std::ptr::from_mut(&mut value).cast();
    // SAFETY: SIOCETHTOOL reads `ifr` and the EthtoolValue it points to, both alive for the
    // call; the kernel writes nothing back for ETHTOOL_SGRO.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut ifr) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
