//! Frames into a pair of gateways with a live session: from their hosts, raw on either port,
//! DWCP datagrams from the peer's address, and the WAN frames the gateways really sent,
//! replayed and mutated, with time passing between them. No frame may panic a gateway, make
//! it send a frame outside 14..=FRAME_MAX bytes, or start frames that beget frames without
//! end.
//!
//! Input: a list of actions, each a byte whose value picks it, then its arguments.
#![no_main]

use std::time::Duration;

use dwcp_dataplane::gateway::Side;
use dwcp_fuzz::net::{self, HOST, HOST_MAC, LAN_MAC, Net, PORT, WAN_IP, WAN_MAC};
use libfuzzer_sys::fuzz_target;

/// Reads the input front to back; past its end every read is 0 or empty.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// A length below `max`, then that many bytes.
    fn bytes(&mut self, max: u16) -> &'a [u8] {
        let n = usize::from(self.u16() % max).min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b
    }
}

/// Sets an IPv4 header's checksum (at `ip`, its length from IHL) where the header is there.
fn fix_ip_checksum(frame: &mut [u8], ip: usize) {
    let Some(&vihl) = frame.get(ip) else { return };
    let end = ip + usize::from(vihl & 0xf) * 4;
    if end < ip + 20 || end > frame.len() {
        return;
    }
    frame[ip + 10..ip + 12].fill(0);
    let sum = net::checksum(&frame[ip..end]);
    frame[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
}

fuzz_target!(|input: &[u8]| {
    let mut n = Net::new();
    // A host at each site pings the other: a handshake, then a session both ways.
    for g in 0..2 {
        let echo = [8, 0, 0xf7, 0xfe, 0, 1, 0, 0];
        let ip = net::ipv4(HOST[g], HOST[1 - g], 1, 64, true, &echo);
        n.send(g, Side::Lan, net::eth(LAN_MAC[g], HOST_MAC[g], 0x0800, &ip));
        n.settle();
    }
    // Else the fuzzer would be trying a pair with no session.
    assert_eq!(n.delivered, [1, 1], "the pings did not cross the tunnel");
    let mut c = Cursor(input);
    while !c.0.is_empty() {
        let op = c.byte();
        let g = usize::from(op >> 7);
        match op % 8 {
            0 => {
                let (proto, ttl, df) = (c.byte(), c.byte(), c.byte() & 1 == 1);
                let ip = net::ipv4(HOST[g], HOST[1 - g], proto, ttl, df, c.bytes(9300));
                n.send(g, Side::Lan, net::eth(LAN_MAC[g], HOST_MAC[g], 0x0800, &ip));
            }
            1 => n.send(g, Side::Lan, c.bytes(9400).to_vec()),
            2 => n.send(g, Side::Wan, c.bytes(9400).to_vec()),
            3 => {
                let mut f = net::eth(LAN_MAC[g], HOST_MAC[g], 0x0800, c.bytes(9300));
                fix_ip_checksum(&mut f, 14);
                n.send(g, Side::Lan, f);
            }
            4 => {
                let d = net::udp(PORT, PORT, c.bytes(9300));
                let ip = net::ipv4(WAN_IP[1 - g], WAN_IP[g], 17, 64, true, &d);
                n.send(
                    g,
                    Side::Wan,
                    net::eth(WAN_MAC[g], WAN_MAC[1 - g], 0x0800, &ip),
                );
            }
            5 => {
                if n.wan_seen.is_empty() {
                    continue;
                }
                let mut f = n.wan_seen[usize::from(c.byte()) % n.wan_seen.len()].clone();
                for _ in 0..c.byte() % 8 {
                    let at = usize::from(c.u16()) % f.len();
                    f[at] ^= c.byte();
                }
                if c.byte() & 1 == 1 {
                    fix_ip_checksum(&mut f, 14);
                }
                let to = usize::from(f[..6] == WAN_MAC[1]);
                n.send(to, Side::Wan, f);
            }
            6 => n.advance(Duration::from_millis(u64::from(c.byte()) * 100)),
            _ => n.settle(),
        }
    }
    n.settle();
});
