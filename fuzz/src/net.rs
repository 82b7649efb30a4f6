//! Two gateways, A and B, joined by a WAN wire, each with one host on its LAN that answers
//! ARP: what the `gateway` target drives with the fuzzer's frames. Frames are handed to a
//! gateway in bursts (as a worker polls them) and everything the gateways send is carried on
//! until the network is at rest, so the fuzzer's frames meet real handshakes and sessions.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Duration;

use dwcp_dataplane::gateway::{Dest, FRAME_MAX, Gateway, GatewayConfig, PortAddr, Side, TxBatch};
use dwcp_dataplane::proto::tunnel::{Params, PeerSpec, Tunnel};
use dwcp_kernels::cpu::CpuEngine;

/// Each gateway's LAN host.
pub const HOST: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 1, 0, 2), Ipv4Addr::new(10, 2, 0, 2)];
/// Each host's MAC.
pub const HOST_MAC: [[u8; 6]; 2] = [[2, 0, 0, 0, 0xa, 2], [2, 0, 0, 0, 0xb, 2]];
/// Each gateway's LAN MAC.
pub const LAN_MAC: [[u8; 6]; 2] = [[2, 0, 0, 0, 0xa, 1], [2, 0, 0, 0, 0xb, 1]];
/// Each gateway's WAN MAC.
pub const WAN_MAC: [[u8; 6]; 2] = [[2, 0, 0, 0, 0xa, 0xf], [2, 0, 0, 0, 0xb, 0xf]];
/// Each gateway's WAN address.
pub const WAN_IP: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(198, 51, 100, 2),
];
/// The gateways' UDP port.
pub const PORT: u16 = 51900;
/// Frames a gateway takes per burst.
const BURST: usize = 32;
/// Rounds (a burst each way on each gateway) after which a network that has not come to
/// rest is a bug: frames that beget frames without end.
const SETTLE: usize = 2000;

/// The pair and their hosts.
pub struct Net {
    gw: [Gateway; 2],
    /// Frames waiting for each gateway: `[gateway][0 = LAN, 1 = WAN]`.
    queue: [[VecDeque<Vec<u8>>; 2]; 2],
    tx: TxBatch,
    now: Duration,
    /// WAN frames the gateways sent (the first 256), for the fuzzer to replay and mutate.
    pub wan_seen: Vec<Vec<u8>>,
    /// Frames each host received (other than ARP).
    pub delivered: [usize; 2],
}

fn secret(seed: u8) -> ([u8; 32], [u8; 32]) {
    let private = [seed; 32];
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(private));
    (private, public.to_bytes())
}

fn gateway(me: usize, private: [u8; 32], peer_public: [u8; 32]) -> Gateway {
    let other = 1 - me;
    let tunnel = Tunnel::new(
        0,
        private,
        Params::default(),
        Duration::from_secs(1_000_000),
        vec![PeerSpec {
            public: peer_public,
            psk: [7; 32],
            endpoint: Some(std::net::SocketAddrV4::new(WAN_IP[other], PORT)),
            compress: true,
        }],
    );
    let lan_net = if me == 0 {
        "10.1.0.1/24"
    } else {
        "10.2.0.1/24"
    };
    let wan_net = format!("{}/30", WAN_IP[me]);
    let allowed = if me == 0 {
        "10.2.0.0/16"
    } else {
        "10.1.0.0/16"
    };
    let cfg = GatewayConfig {
        lan: PortAddr {
            mac: LAN_MAC[me],
            net: lan_net.parse().expect("LAN network"),
            gateway: None,
            mtu: 1500,
        },
        wan: PortAddr {
            mac: WAN_MAC[me],
            net: wan_net.parse().expect("WAN network"),
            gateway: None,
            mtu: 1500,
        },
        udp_port: PORT,
        udp_ports: PORT..PORT + 1,
        allowed: vec![vec![allowed.parse().expect("allowed prefix")]],
    };
    Gateway::new(cfg, tunnel, Box::new(CpuEngine))
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Lan => 0,
        Side::Wan => 1,
    }
}

impl Net {
    /// A fresh pair with fixed keys, no session yet.
    pub fn new() -> Self {
        let (a, a_pub) = secret(1);
        let (b, b_pub) = secret(2);
        Self {
            gw: [gateway(0, a, b_pub), gateway(1, b, a_pub)],
            queue: Default::default(),
            // As a worker has: three bursts of output buffers.
            tx: TxBatch::new(3 * BURST),
            now: Duration::from_secs(1),
            wan_seen: Vec::new(),
            delivered: [0; 2],
        }
    }

    /// Queues a frame for gateway `to` (0 = A, 1 = B) on port `side`.
    pub fn send(&mut self, to: usize, side: Side, frame: Vec<u8>) {
        self.queue[to][side_index(side)].push_back(frame);
    }

    /// Lets time pass and runs the gateways' timers.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        for g in 0..2 {
            self.gw[g].tick(&mut self.tx, self.now);
            self.send_all(g);
        }
    }

    /// Runs the gateways' poll loops until no frame is waiting.
    pub fn settle(&mut self) {
        for _ in 0..SETTLE {
            for g in 0..2 {
                self.poll(g);
            }
            if self.queue.iter().flatten().all(VecDeque::is_empty) {
                return;
            }
        }
        panic!("the network did not come to rest in {SETTLE} rounds");
    }

    /// One turn of gateway `g`'s worker loop: a LAN burst, a WAN burst, the timers, then what
    /// they made is sent (as `dataplane::worker` does).
    fn poll(&mut self, g: usize) {
        for side in [Side::Lan, Side::Wan] {
            for _ in 0..BURST {
                let Some(frame) = self.queue[g][side_index(side)].pop_front() else {
                    break;
                };
                match side {
                    Side::Lan => self.gw[g].from_lan(&frame, &mut self.tx, self.now),
                    Side::Wan => self.gw[g].from_wan(&frame, &mut self.tx, self.now),
                }
            }
            self.gw[g].finish_burst(&mut self.tx, self.now);
        }
        // Timers run every round: a packet for a peer with no session is staged until the
        // tick sends the handshake.
        self.gw[g].tick(&mut self.tx, self.now);
        self.send_all(g);
    }

    /// Drains gateway `g`'s output and carries it: WAN frames to the other gateway, ARP
    /// requests for a host answered by it, the rest to the host.
    fn send_all(&mut self, g: usize) {
        let mut out = Vec::new();
        self.gw[g].drain(&mut self.tx, self.now, |dest, buf, len| {
            assert!((14..=FRAME_MAX).contains(&len), "a frame of {len} bytes");
            let Dest::Port(side) = dest else {
                panic!("a frame for an RDMA queue pair, with no RDMA peer: {dest:?}");
            };
            out.push((side, buf.bytes()[..len].to_vec()));
        });
        for (side, f) in out {
            match side {
                Side::Wan => {
                    if self.wan_seen.len() < 256 {
                        self.wan_seen.push(f.clone());
                    }
                    self.send(1 - g, Side::Wan, f);
                }
                Side::Lan => match arp_request_for(&f, HOST[g]) {
                    Some((mac, ip)) => {
                        let reply = arp(2, HOST_MAC[g], HOST[g], mac, ip);
                        self.send(g, Side::Lan, eth(mac, HOST_MAC[g], 0x0806, &reply));
                    }
                    None => self.delivered[g] += 1,
                },
            }
        }
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

/// The sender's MAC and address when `f` is an ARP request for `target`.
fn arp_request_for(f: &[u8], target: Ipv4Addr) -> Option<([u8; 6], Ipv4Addr)> {
    let p = f.get(14..42)?;
    if f[12..14] != [0x08, 0x06] || p[6..8] != [0, 1] || p[24..28] != target.octets() {
        return None;
    }
    let mac = p[8..14].try_into().ok()?;
    let ip: [u8; 4] = p[14..18].try_into().ok()?;
    Some((mac, Ipv4Addr::from(ip)))
}

/// An Ethernet/IPv4 ARP packet.
pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa.octets());
    p.extend_from_slice(&tha);
    p.extend_from_slice(&tpa.octets());
    p
}

/// An Ethernet frame.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

/// An IPv4 packet (no options) around `payload`, its header checksum right.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, df: bool, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX);
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1, if df { 0x40 } else { 0 }, 0, ttl, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A UDP datagram (checksum 0: none) around `payload`.
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
    let mut d = Vec::with_capacity(8 + payload.len());
    d.extend_from_slice(&src_port.to_be_bytes());
    d.extend_from_slice(&dst_port.to_be_bytes());
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    d
}
