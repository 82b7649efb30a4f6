//! The outer headers the gateway writes around a DWCP message (IPv4 and UDP), and the IPv4
//! header checksum.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::wire::{IpProtocol, Ipv4Packet};

use super::{IP_LEN, UDP_LEN};

pub(super) fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in header.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

/// Writes a 20-byte IPv4 header (DF set, no options) for `payload_len` bytes of payload.
pub(super) fn write_ipv4(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    payload_len: usize,
    ident: u16,
    ttl: u8,
) {
    let total = u16::try_from(IP_LEN + payload_len).unwrap_or(u16::MAX);
    let mut p = Ipv4Packet::new_unchecked(&mut buf[..IP_LEN]);
    p.set_version(4);
    p.set_header_len(u8::try_from(IP_LEN).unwrap_or(20));
    p.set_dscp(0);
    p.set_ecn(0);
    p.set_total_len(total);
    p.set_ident(ident);
    p.clear_flags();
    p.set_dont_frag(true);
    p.set_frag_offset(0);
    p.set_hop_limit(ttl);
    p.set_next_header(proto);
    p.set_src_addr(src);
    p.set_dst_addr(dst);
    p.fill_checksum();
}

/// Sets the lengths (and the IPv4 checksum) of IPv4 and UDP headers written by [`write_udp`]
/// at the start of `buf` for a payload now `payload_len` bytes long.
pub(super) fn shrink_udp(buf: &mut [u8], payload_len: usize) {
    let udp_len = u16::try_from(UDP_LEN + payload_len).unwrap_or(u16::MAX);
    buf[IP_LEN + 4..IP_LEN + 6].copy_from_slice(&udp_len.to_be_bytes());
    let mut p = Ipv4Packet::new_unchecked(&mut buf[..IP_LEN]);
    p.set_total_len(u16::try_from(IP_LEN + UDP_LEN + payload_len).unwrap_or(u16::MAX));
    p.fill_checksum();
}

/// Writes IPv4 and UDP headers before a `payload_len`-byte payload already in place.
/// The UDP checksum is left zero (allowed for IPv4; the AEAD tag covers the payload).
pub(super) fn write_udp(
    buf: &mut [u8],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload_len: usize,
    ident: u16,
) {
    write_ipv4(
        buf,
        *src.ip(),
        *dst.ip(),
        IpProtocol::Udp,
        UDP_LEN + payload_len,
        ident,
        64,
    );
    let udp = &mut buf[IP_LEN..IP_LEN + UDP_LEN];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    let len = u16::try_from(UDP_LEN + payload_len).unwrap_or(u16::MAX);
    udp[4..6].copy_from_slice(&len.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
}
