//! The L3 gateway one worker runs between its LAN port and its WAN port: ARP (answers for
//! its own addresses, resolves next hops, a neighbour table with expiry), ICMP echo for its
//! own addresses, cryptokey routing into and out of the tunnel, ICMP "fragmentation needed"
//! for inner packets too big for the tunnel, TCP MSS clamping on SYNs. IPv4 only.
//!
//! Frames come in as byte slices and go out into a caller-owned [`TxBatch`]; nothing is
//! allocated per packet. Malformed frames are dropped and counted, never panicked on.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use dwcp_kernels::Engine;
use ipnet::Ipv4Net;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol,
    Ipv4Packet, TcpPacket, UdpPacket,
};

use crate::proto::tunnel::{Action, DeferredSeal, MAX_INNER, OVERHEAD, Sealed, Tunnel};

mod frames;
mod headers;

pub use frames::{Dest, TxBatch};
use headers::{ip_checksum, shrink_udp, write_ipv4, write_udp};

/// Ethernet header.
pub const ETH_LEN: usize = 14;
/// IPv4 header without options.
pub const IP_LEN: usize = 20;
/// UDP header.
pub const UDP_LEN: usize = 8;
/// Bytes the outer headers add: Ethernet, IPv4, UDP.
pub const OUTER_HEADERS: usize = ETH_LEN + IP_LEN + UDP_LEN;
/// Largest frame a gateway emits.
pub const FRAME_MAX: usize = OUTER_HEADERS + MAX_INNER + OVERHEAD + 64;
/// Neighbour entries per port.
const NEIGHBOURS: usize = 64;
/// How long a learned neighbour stays valid.
const NEIGHBOUR_TTL: Duration = Duration::from_secs(300);
/// Frames parked while their next hop is resolved.
const PARKED_MAX: usize = 16;

/// Which port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Faces the site's hosts.
    Lan,
    /// Faces the WAN and the peers.
    Wan,
}

/// One port's addressing.
#[derive(Clone, Copy, Debug)]
pub struct PortAddr {
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its address and network.
    pub net: Ipv4Net,
    /// Next hop for destinations off its network.
    pub gateway: Option<Ipv4Addr>,
    /// Its IP MTU.
    pub mtu: u16,
}

/// What a gateway is configured with.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// LAN port.
    pub lan: PortAddr,
    /// WAN port.
    pub wan: PortAddr,
    /// This worker's UDP port (its handshakes and data go out from it).
    pub udp_port: u16,
    /// All workers' UDP ports: `base..base + workers`.
    pub udp_ports: std::ops::Range<u16>,
    /// Each peer's allowed inner prefixes (index = peer index of the tunnel).
    pub allowed: Vec<Vec<Ipv4Net>>,
}

impl GatewayConfig {
    /// Largest inner IP packet the tunnel carries without fragmenting the outer packet.
    pub fn tunnel_mtu(&self) -> u16 {
        let overhead = u16::try_from(IP_LEN + UDP_LEN + OVERHEAD).unwrap_or(u16::MAX);
        self.wan.mtu.saturating_sub(overhead)
    }
}

/// Gateway counters (the tunnel has its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayCounters {
    /// Frames received on the LAN port.
    pub lan_rx_packets: u64,
    /// Bytes received on the LAN port.
    pub lan_rx_bytes: u64,
    /// Frames sent on the LAN port.
    pub lan_tx_packets: u64,
    /// Bytes sent on the LAN port.
    pub lan_tx_bytes: u64,
    /// Frames received on the WAN port.
    pub wan_rx_packets: u64,
    /// Bytes received on the WAN port.
    pub wan_rx_bytes: u64,
    /// Frames sent on the WAN port.
    pub wan_tx_packets: u64,
    /// Bytes sent on the WAN port.
    pub wan_tx_bytes: u64,
    /// Drops: frames that do not parse.
    pub malformed: u64,
    /// Drops: inner destination behind no peer.
    pub no_route: u64,
    /// Drops: inner packet larger than the tunnel MTU (ICMP sent when DF was set).
    pub too_big: u64,
    /// Drops: TTL ran out.
    pub ttl_exceeded: u64,
    /// Drops: inner source not in the sending peer's prefixes.
    pub source_not_allowed: u64,
    /// Drops: next hop did not answer ARP (or too many frames waiting for it).
    pub unresolved: u64,
    /// Drops: not for this gateway (other protocols, other addresses).
    pub not_for_us: u64,
    /// ICMP errors sent (fragmentation needed).
    pub icmp_errors: u64,
    /// SYNs whose MSS was lowered.
    pub mss_clamped: u64,
    /// Drops: data for an RDMA peer whose queue pair is not connected (yet, or any more).
    pub rdma_not_connected: u64,
    /// Drops: a message from an RDMA queue pair for a session another worker owns.
    pub rdma_other_worker: u64,
    /// Drops: control records this gateway could not keep (too many at once, or too long).
    pub control_dropped: u64,
}

/// How a peer's data messages leave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PeerPath {
    /// In UDP out of the WAN port.
    #[default]
    Udp,
    /// By RDMA, and the worker's queue pair to the peer is connected.
    RdmaUp,
    /// By RDMA, but the queue pair is not connected: data waits for it (dropped, counted).
    RdmaDown,
}

/// Longest control record a gateway keeps.
pub const CONTROL_MAX: usize = 64;
/// Control records kept between two [`Gateway::take_controls`].
const CONTROLS: usize = 8;

/// An authenticated control record from a peer, for the worker.
#[derive(Clone, Copy, Debug)]
pub struct ControlRecord {
    /// The peer it came from.
    pub peer: usize,
    /// Its length.
    pub len: usize,
    /// Its bytes (the first `len`).
    pub bytes: [u8; CONTROL_MAX],
}

#[derive(Clone, Copy)]
struct Neighbour {
    ip: Ipv4Addr,
    mac: [u8; 6],
    expires: Duration,
}

struct Parked {
    side: Side,
    next_hop: Ipv4Addr,
    since: Duration,
    len: usize,
    frame: Box<[u8; FRAME_MAX]>,
}

/// One worker's gateway.
pub struct Gateway {
    cfg: GatewayConfig,
    /// The worker's tunnel.
    pub tunnel: Tunnel,
    engine: Box<dyn Engine>,
    lan_neigh: heapless::Vec<Neighbour, NEIGHBOURS>,
    wan_neigh: heapless::Vec<Neighbour, NEIGHBOURS>,
    parked: Vec<Parked>,
    spare: Vec<Box<[u8; FRAME_MAX]>>,
    scratch: Box<[u8; FRAME_MAX]>,
    ident: u16,
    /// Per peer: UDP or RDMA (set by the worker as its queue pairs come and go).
    paths: Vec<PeerPath>,
    /// Control records received since the worker last took them.
    controls: heapless::Vec<ControlRecord, CONTROLS>,
    /// Counters.
    pub counters: GatewayCounters,
}

impl Gateway {
    /// The offload engine.
    pub fn engine(&self) -> &dyn Engine {
        &*self.engine
    }

    /// The offload engine, to seal a batch's deferred messages.
    pub fn engine_mut(&mut self) -> &mut dyn Engine {
        &mut *self.engine
    }

    /// A gateway around a worker's tunnel and engine.
    pub fn new(cfg: GatewayConfig, tunnel: Tunnel, engine: Box<dyn Engine>) -> Self {
        Self {
            cfg,
            tunnel,
            engine,
            lan_neigh: heapless::Vec::new(),
            wan_neigh: heapless::Vec::new(),
            parked: Vec::with_capacity(PARKED_MAX),
            spare: (0..PARKED_MAX)
                .map(|_| Box::new([0u8; FRAME_MAX]))
                .collect(),
            scratch: Box::new([0u8; FRAME_MAX]),
            ident: 1,
            paths: Vec::new(),
            controls: heapless::Vec::new(),
            counters: GatewayCounters::default(),
        }
    }

    /// Sets how data messages to `peer` leave (peers not set go by UDP).
    pub fn set_path(&mut self, peer: usize, path: PeerPath) {
        if self.paths.len() <= peer {
            self.paths.resize(peer + 1, PeerPath::Udp);
        }
        self.paths[peer] = path;
    }

    fn path(&self, peer: usize) -> PeerPath {
        self.paths.get(peer).copied().unwrap_or_default()
    }

    /// The control records received since the last call, oldest first.
    pub fn take_controls(&mut self) -> heapless::Vec<ControlRecord, CONTROLS> {
        std::mem::take(&mut self.controls)
    }

    /// Sends a control record to `peer` on its current session, by UDP (control records
    /// never need the RDMA queue pair they may be setting up).
    pub fn send_control(&mut self, tx: &mut TxBatch, peer: usize, record: &[u8], now: Duration) {
        let Some(buf) = tx.next_buf() else { return };
        let action = self.tunnel.send_control(
            &mut *self.engine,
            peer,
            record,
            &mut buf[OUTER_HEADERS..],
            now,
        );
        self.after_tunnel(tx, action, None, now);
    }

    /// A DWCP message that arrived on the worker's RDMA queue pair: as a UDP datagram from
    /// the WAN, but with no outer headers and no endpoint to learn.
    pub fn from_rdma(&mut self, message: &[u8], tx: &mut TxBatch, now: Duration) {
        if let Some(owner) = wan_owner_of_message(message)
            && owner != self.tunnel.worker()
        {
            self.counters.rdma_other_worker += 1;
            return;
        }
        let slot = tx.len();
        let Some(buf) = tx.buf_at(slot) else { return };
        match self
            .tunnel
            .receive_deferred(message, None, &mut buf[OUTER_HEADERS..], now)
        {
            (_, Some(d)) => {
                tx.commit(Side::Lan, 0);
                tx.burst.push_open(slot, d);
            }
            (action, None) => self.after_tunnel(tx, action, None, now),
        }
    }

    /// Keeps an authenticated control record (in TX slot `slot` at `OUTER_HEADERS`) for the
    /// worker.
    fn keep_control(&mut self, tx: &mut TxBatch, slot: usize, peer: usize, len: usize) {
        let Some(buf) = tx.buf_at(slot) else { return };
        let mut bytes = [0u8; CONTROL_MAX];
        let Some(src) = buf
            .get(OUTER_HEADERS..OUTER_HEADERS + len)
            .filter(|_| len <= CONTROL_MAX)
        else {
            self.counters.control_dropped += 1;
            return;
        };
        bytes[..len].copy_from_slice(src);
        if self
            .controls
            .push(ControlRecord { peer, len, bytes })
            .is_err()
        {
            self.counters.control_dropped += 1;
        }
    }

    /// Replaces the peers' allowed prefixes (config reload; index = tunnel peer index).
    pub fn set_allowed(&mut self, allowed: Vec<Vec<Ipv4Net>>) {
        self.cfg.allowed = allowed;
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    fn port(&self, side: Side) -> &PortAddr {
        match side {
            Side::Lan => &self.cfg.lan,
            Side::Wan => &self.cfg.wan,
        }
    }

    fn neighbours(&mut self, side: Side) -> &mut heapless::Vec<Neighbour, NEIGHBOURS> {
        match side {
            Side::Lan => &mut self.lan_neigh,
            Side::Wan => &mut self.wan_neigh,
        }
    }

    fn lookup(&self, side: Side, ip: Ipv4Addr, now: Duration) -> Option<[u8; 6]> {
        let table = match side {
            Side::Lan => &self.lan_neigh,
            Side::Wan => &self.wan_neigh,
        };
        table
            .iter()
            .find(|n| n.ip == ip && n.expires > now)
            .map(|n| n.mac)
    }

    fn learn(&mut self, side: Side, ip: Ipv4Addr, mac: [u8; 6], now: Duration) {
        let expires = now + NEIGHBOUR_TTL;
        let table = self.neighbours(side);
        if let Some(n) = table.iter_mut().find(|n| n.ip == ip) {
            n.mac = mac;
            n.expires = expires;
        } else {
            if table.is_full() {
                // Replace the entry closest to expiry.
                if let Some(i) = table
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, n)| n.expires)
                    .map(|(i, _)| i)
                {
                    table.swap_remove(i);
                }
            }
            let _ = table.push(Neighbour { ip, mac, expires });
        }
    }

    /// Number of valid neighbour entries on a port.
    pub fn neighbour_count(&self, side: Side, now: Duration) -> usize {
        let table = match side {
            Side::Lan => &self.lan_neigh,
            Side::Wan => &self.wan_neigh,
        };
        table.iter().filter(|n| n.expires > now).count()
    }

    fn next_hop(&self, side: Side, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let port = self.port(side);
        if port.net.contains(&dst) {
            Some(dst)
        } else {
            port.gateway
        }
    }

    /// Sends the finished frame in the next TX buffer, whose Ethernet destination is still to
    /// be filled in.
    fn send_routed(
        &mut self,
        tx: &mut TxBatch,
        side: Side,
        dst: Ipv4Addr,
        len: usize,
        now: Duration,
    ) {
        self.send_routed_at(tx, tx.len(), side, dst, len, now);
    }

    /// As [`Gateway::send_routed`] for the frame in TX slot `slot`.
    fn send_routed_at(
        &mut self,
        tx: &mut TxBatch,
        slot: usize,
        side: Side,
        dst: Ipv4Addr,
        len: usize,
        now: Duration,
    ) {
        let Some(hop) = self.next_hop(side, dst) else {
            self.counters.no_route += 1;
            return;
        };
        let src_mac = self.port(side).mac;
        let known = self.lookup(side, hop, now);
        let Some(buf) = tx.buf_at(slot) else { return };
        buf[6..12].copy_from_slice(&src_mac);
        match known {
            Some(mac) => {
                buf[..6].copy_from_slice(&mac);
                self.count_tx(side, len);
                tx.place(slot, side, len);
            }
            None => {
                // Park the frame and ask for the next hop.
                match self.spare.pop() {
                    Some(mut frame) => {
                        frame[..len].copy_from_slice(&buf[..len]);
                        self.parked.push(Parked {
                            side,
                            next_hop: hop,
                            since: now,
                            len,
                            frame,
                        });
                        self.arp_request(tx, side, hop);
                    }
                    None => self.counters.unresolved += 1,
                }
            }
        }
    }

    fn count_tx(&mut self, side: Side, len: usize) {
        match side {
            Side::Lan => {
                self.counters.lan_tx_packets += 1;
                self.counters.lan_tx_bytes += len as u64;
            }
            Side::Wan => {
                self.counters.wan_tx_packets += 1;
                self.counters.wan_tx_bytes += len as u64;
            }
        }
    }

    fn arp_request(&mut self, tx: &mut TxBatch, side: Side, target: Ipv4Addr) {
        let port = *self.port(side);
        let Some(buf) = tx.next_buf() else { return };
        let len = ETH_LEN + 28;
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..len]);
        eth.set_dst_addr(EthernetAddress::BROADCAST);
        eth.set_src_addr(EthernetAddress(port.mac));
        eth.set_ethertype(EthernetProtocol::Arp);
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(port.mac),
            source_protocol_addr: port.net.addr(),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
        self.count_tx(side, len);
        tx.commit(side, len);
    }

    fn handle_arp(&mut self, tx: &mut TxBatch, side: Side, payload: &[u8], now: Duration) {
        let Ok(pkt) = ArpPacket::new_checked(payload) else {
            self.counters.malformed += 1;
            return;
        };
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpRepr::parse(&pkt)
        else {
            self.counters.malformed += 1;
            return;
        };
        let port = *self.port(side);
        if target_protocol_addr != port.net.addr() {
            self.counters.not_for_us += 1;
            return;
        }
        self.learn(side, source_protocol_addr, source_hardware_addr.0, now);
        if operation == ArpOperation::Request {
            let Some(buf) = tx.next_buf() else { return };
            let len = ETH_LEN + 28;
            let mut eth = EthernetFrame::new_unchecked(&mut buf[..len]);
            eth.set_dst_addr(source_hardware_addr);
            eth.set_src_addr(EthernetAddress(port.mac));
            eth.set_ethertype(EthernetProtocol::Arp);
            let reply = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: EthernetAddress(port.mac),
                source_protocol_addr: port.net.addr(),
                target_hardware_addr: source_hardware_addr,
                target_protocol_addr: source_protocol_addr,
            };
            reply.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
            self.count_tx(side, len);
            tx.commit(side, len);
        }
        self.release_parked(tx, now);
    }

    fn release_parked(&mut self, tx: &mut TxBatch, now: Duration) {
        let mut i = 0;
        while i < self.parked.len() {
            let p = &self.parked[i];
            let (side, hop) = (p.side, p.next_hop);
            if let Some(mac) = self.lookup(side, hop, now) {
                let parked = self.parked.swap_remove(i);
                if let Some(buf) = tx.next_buf() {
                    buf[..parked.len].copy_from_slice(&parked.frame[..parked.len]);
                    buf[..6].copy_from_slice(&mac);
                    self.count_tx(side, parked.len);
                    tx.commit(side, parked.len);
                }
                self.spare.push(parked.frame);
            } else {
                i += 1;
            }
        }
    }

    /// Answers an ICMP echo request to one of our addresses; `ip` is the whole IP packet.
    fn echo_reply(&mut self, tx: &mut TxBatch, side: Side, ip: &[u8], now: Duration) {
        let Ok(pkt) = Ipv4Packet::new_checked(ip) else {
            return;
        };
        let hl = usize::from(pkt.header_len());
        let total = usize::from(pkt.total_len());
        let (src, dst) = (pkt.src_addr(), pkt.dst_addr());
        let icmp = &ip[hl..total];
        if icmp.len() < 8 || icmp[0] != 8 || icmp[1] != 0 {
            self.counters.not_for_us += 1;
            return;
        }
        let Some(buf) = tx.next_buf() else { return };
        let len = ETH_LEN + IP_LEN + icmp.len();
        write_ipv4(
            &mut buf[ETH_LEN..],
            dst,
            src,
            IpProtocol::Icmp,
            icmp.len(),
            self.ident,
            64,
        );
        self.ident = self.ident.wrapping_add(1);
        let body = &mut buf[ETH_LEN + IP_LEN..len];
        body.copy_from_slice(icmp);
        body[0] = 0; // echo reply
        body[2..4].copy_from_slice(&[0, 0]);
        let sum = ip_checksum(body);
        body[2..4].copy_from_slice(&sum.to_be_bytes());
        buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        self.send_routed(tx, side, src, len, now);
    }

    /// ICMP "fragmentation needed" back to the sender of a too-big packet.
    fn frag_needed(&mut self, tx: &mut TxBatch, ip: &[u8], now: Duration) {
        let Ok(pkt) = Ipv4Packet::new_checked(ip) else {
            return;
        };
        let src = pkt.src_addr();
        let quoted = ip.len().min(usize::from(pkt.header_len()) + 8);
        let icmp_len = 8 + quoted;
        let mtu = self.cfg.tunnel_mtu();
        let lan_ip = self.cfg.lan.net.addr();
        let Some(buf) = tx.next_buf() else { return };
        let len = ETH_LEN + IP_LEN + icmp_len;
        write_ipv4(
            &mut buf[ETH_LEN..],
            lan_ip,
            src,
            IpProtocol::Icmp,
            icmp_len,
            self.ident,
            64,
        );
        self.ident = self.ident.wrapping_add(1);
        let body = &mut buf[ETH_LEN + IP_LEN..len];
        body[..8].copy_from_slice(&[3, 4, 0, 0, 0, 0, 0, 0]);
        body[6..8].copy_from_slice(&mtu.to_be_bytes());
        body[8..].copy_from_slice(&ip[..quoted]);
        let sum = ip_checksum(body);
        body[2..4].copy_from_slice(&sum.to_be_bytes());
        buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        self.counters.icmp_errors += 1;
        self.send_routed(tx, Side::Lan, src, len, now);
    }

    /// A frame from the LAN port.
    pub fn from_lan(&mut self, frame: &[u8], tx: &mut TxBatch, now: Duration) {
        self.counters.lan_rx_packets += 1;
        self.counters.lan_rx_bytes += frame.len() as u64;
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.counters.malformed += 1;
            return;
        };
        let dst = eth.dst_addr();
        if dst != EthernetAddress(self.cfg.lan.mac) && !dst.is_broadcast() {
            self.counters.not_for_us += 1;
            return;
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.handle_arp(tx, Side::Lan, eth.payload(), now),
            EthernetProtocol::Ipv4 => self.lan_ipv4(eth.payload(), tx, now),
            _ => self.counters.not_for_us += 1,
        }
    }

    fn lan_ipv4(&mut self, ip: &[u8], tx: &mut TxBatch, now: Duration) {
        let Ok(pkt) = Ipv4Packet::new_checked(ip) else {
            self.counters.malformed += 1;
            return;
        };
        if !pkt.verify_checksum() {
            self.counters.malformed += 1;
            return;
        }
        let total = usize::from(pkt.total_len());
        let ip = &ip[..total];
        let dst = pkt.dst_addr();
        if dst == self.cfg.lan.net.addr() {
            if pkt.next_header() == IpProtocol::Icmp {
                self.echo_reply(tx, Side::Lan, ip, now);
            } else {
                self.counters.not_for_us += 1;
            }
            return;
        }
        let Some(peer) = self.route(dst) else {
            self.counters.no_route += 1;
            return;
        };
        if pkt.hop_limit() <= 1 {
            self.counters.ttl_exceeded += 1;
            return;
        }
        if total > usize::from(self.cfg.tunnel_mtu()) {
            self.counters.too_big += 1;
            if pkt.dont_frag() {
                self.frag_needed(tx, ip, now);
            }
            return;
        }
        // Forward: copy into scratch to decrement TTL and clamp MSS, then encapsulate
        // straight into the outgoing frame.
        self.scratch[..total].copy_from_slice(ip);
        let inner_len = total;
        {
            let mut p = Ipv4Packet::new_unchecked(&mut self.scratch[..inner_len]);
            let ttl = p.hop_limit();
            p.set_hop_limit(ttl - 1);
            p.fill_checksum();
        }
        if self.clamp_mss(inner_len) {
            self.counters.mss_clamped += 1;
        }
        self.encapsulate_to(tx, peer, inner_len, now);
    }

    /// Encapsulates `scratch[..inner_len]` for `peer` into a new WAN frame; its seal is
    /// deferred to the burst's batch when the frame leaves with the batch.
    fn encapsulate_to(&mut self, tx: &mut TxBatch, peer: usize, inner_len: usize, now: Duration) {
        let Some(buf) = tx.next_buf() else { return };
        let (action, deferred) = self.tunnel.encapsulate_deferred(
            peer,
            &self.scratch[..inner_len],
            &mut buf[OUTER_HEADERS..],
            now,
        );
        self.after_tunnel_deferred(tx, action, deferred, now);
    }

    /// As [`Gateway::after_tunnel`] for a message whose seal was deferred: when the frame is
    /// committed to the batch, its seal joins the batch's; when it would be parked (next hop
    /// unresolved) or anything else, it is sealed now, so no unsealed message is ever kept
    /// anywhere but in the batch.
    fn after_tunnel_deferred(
        &mut self,
        tx: &mut TxBatch,
        action: Action,
        deferred: Option<DeferredSeal>,
        now: Duration,
    ) {
        let Some(d) = deferred else {
            self.after_tunnel(tx, action, None, now);
            return;
        };
        let Action::Send { peer, .. } = action else {
            return;
        };
        let resolved = self.path(peer) != PeerPath::Udp
            || self
                .tunnel
                .endpoint(peer)
                .and_then(|dst| self.next_hop(Side::Wan, *dst.ip()))
                .and_then(|hop| self.lookup(Side::Wan, hop, now))
                .is_some();
        if !resolved {
            // Compressed and sealed alone, now: it will wait outside the batch.
            let Some(buf) = tx.next_buf() else { return };
            match self
                .tunnel
                .seal_alone(&mut *self.engine, d, &mut buf[OUTER_HEADERS..])
            {
                Some(len) => self.after_tunnel(tx, Action::Send { peer, len }, None, now),
                None => self.counters.too_big += 1,
            }
            return;
        }
        let slot = tx.len();
        self.after_tunnel(tx, action, None, now);
        if tx.len() == slot + 1 {
            tx.burst.push_seal(slot, d);
        }
    }

    /// Turns a tunnel action whose output is in the next TX buffer (at `OUTER_HEADERS`) into
    /// a frame.
    fn after_tunnel(
        &mut self,
        tx: &mut TxBatch,
        action: Action,
        reply_port: Option<u16>,
        now: Duration,
    ) {
        match action {
            Action::Send { peer, len } if self.path(peer) != PeerPath::Udp => {
                if !self.rdma_message(tx, peer, len) {
                    // A handshake or control record: by UDP like any peer's.
                    self.send_udp(tx, peer, len, reply_port, now);
                }
            }
            Action::Send { peer, len } => self.send_udp(tx, peer, len, reply_port, now),
            Action::Established { peer } => {
                let mut guard = 0;
                while guard < crate::proto::tunnel::STAGED_MAX {
                    guard += 1;
                    let Some(buf) = tx.next_buf() else { return };
                    let Some(a) = self.tunnel.flush_staged(
                        &mut *self.engine,
                        peer,
                        &mut buf[OUTER_HEADERS..],
                        now,
                    ) else {
                        break;
                    };
                    self.after_tunnel(tx, a, None, now);
                }
            }
            Action::None
            | Action::Staged
            | Action::Dropped(_)
            | Action::Deliver { .. }
            | Action::Control { .. } => {}
        }
    }

    fn route(&self, dst: Ipv4Addr) -> Option<usize> {
        let mut best: Option<(u8, usize)> = None;
        for (peer, prefixes) in self.cfg.allowed.iter().enumerate() {
            for p in prefixes {
                if p.contains(&dst) && best.is_none_or(|(len, _)| p.prefix_len() > len) {
                    best = Some((p.prefix_len(), peer));
                }
            }
        }
        best.map(|(_, peer)| peer)
    }

    /// Lowers the MSS option of a TCP SYN in `scratch[..len]` to fit the tunnel; returns
    /// whether it changed anything.
    fn clamp_mss(&mut self, len: usize) -> bool {
        let max_mss = self
            .cfg
            .tunnel_mtu()
            .saturating_sub(u16::try_from(IP_LEN + 20).unwrap_or(40));
        let (src, dst, hl) = {
            let Ok(ip) = Ipv4Packet::new_checked(&self.scratch[..len]) else {
                return false;
            };
            if ip.next_header() != IpProtocol::Tcp {
                return false;
            }
            (ip.src_addr(), ip.dst_addr(), usize::from(ip.header_len()))
        };
        let seg = &mut self.scratch[hl..len];
        let Ok(mut tcp) = TcpPacket::new_checked(&mut *seg) else {
            return false;
        };
        if !tcp.syn() {
            return false;
        }
        let mut changed = false;
        {
            let opts = tcp.options_mut();
            let mut i = 0;
            while i < opts.len() {
                match opts[i] {
                    0 => break,
                    1 => i += 1,
                    kind => {
                        let Some(&olen) = opts.get(i + 1) else { break };
                        let olen = usize::from(olen);
                        if olen < 2 || i + olen > opts.len() {
                            break;
                        }
                        if kind == 2 && olen == 4 {
                            let mss = u16::from_be_bytes([opts[i + 2], opts[i + 3]]);
                            if mss > max_mss {
                                opts[i + 2..i + 4].copy_from_slice(&max_mss.to_be_bytes());
                                changed = true;
                            }
                        }
                        i += olen;
                    }
                }
            }
        }
        if changed {
            tcp.fill_checksum(&src.into(), &dst.into());
        }
        changed
    }

    /// Sends the message in the next TX buffer (at `OUTER_HEADERS`, `len` bytes) to the
    /// peer's endpoint in UDP.
    fn send_udp(
        &mut self,
        tx: &mut TxBatch,
        peer: usize,
        len: usize,
        reply_port: Option<u16>,
        now: Duration,
    ) {
        let Some(dst) = self.tunnel.endpoint(peer) else {
            self.counters.no_route += 1;
            return;
        };
        let src_port = reply_port.unwrap_or(self.cfg.udp_port);
        let wan_ip = self.cfg.wan.net.addr();
        let ident = self.ident;
        self.ident = self.ident.wrapping_add(1);
        let Some(buf) = tx.next_buf() else { return };
        write_udp(
            &mut buf[ETH_LEN..],
            SocketAddrV4::new(wan_ip, src_port),
            dst,
            len,
            ident,
        );
        buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        self.send_routed(tx, Side::Wan, *dst.ip(), OUTER_HEADERS + len, now);
    }

    /// For an RDMA peer: commits the data message in the next TX buffer (at
    /// `OUTER_HEADERS`, `len` bytes) for the worker's queue pair, or drops it (counted) while
    /// the queue pair is down. `false`: not a data message (a handshake, a control record),
    /// which goes by UDP.
    fn rdma_message(&mut self, tx: &mut TxBatch, peer: usize, len: usize) -> bool {
        let Some(buf) = tx.next_buf() else {
            return true;
        };
        let data = buf[OUTER_HEADERS] == crate::proto::wire::TYPE_DATA
            && buf[OUTER_HEADERS + 1] & crate::proto::wire::FLAG_CONTROL == 0;
        if !data {
            return false;
        }
        match (self.path(peer), u8::try_from(peer)) {
            // Counted by the RDMA link (sends, bytes), not as the WAN port's.
            (PeerPath::RdmaUp, Ok(p)) => tx.commit_rdma(p, OUTER_HEADERS + len),
            _ => self.counters.rdma_not_connected += 1,
        }
        true
    }

    /// A frame from the WAN port.
    pub fn from_wan(&mut self, frame: &[u8], tx: &mut TxBatch, now: Duration) {
        self.counters.wan_rx_packets += 1;
        self.counters.wan_rx_bytes += frame.len() as u64;
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.counters.malformed += 1;
            return;
        };
        let dst = eth.dst_addr();
        if dst != EthernetAddress(self.cfg.wan.mac) && !dst.is_broadcast() {
            self.counters.not_for_us += 1;
            return;
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.handle_arp(tx, Side::Wan, eth.payload(), now),
            EthernetProtocol::Ipv4 => self.wan_ipv4(eth.payload(), tx, now),
            _ => self.counters.not_for_us += 1,
        }
    }

    fn wan_ipv4(&mut self, ip: &[u8], tx: &mut TxBatch, now: Duration) {
        let Ok(pkt) = Ipv4Packet::new_checked(ip) else {
            self.counters.malformed += 1;
            return;
        };
        let total = usize::from(pkt.total_len());
        if pkt.dst_addr() != self.cfg.wan.net.addr()
            || !pkt.verify_checksum()
            || pkt.more_frags()
            || pkt.frag_offset() != 0
        {
            self.counters.not_for_us += 1;
            return;
        }
        let ip = &ip[..total];
        let hl = usize::from(pkt.header_len());
        match pkt.next_header() {
            IpProtocol::Icmp => self.echo_reply(tx, Side::Wan, ip, now),
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(&ip[hl..]) else {
                    self.counters.malformed += 1;
                    return;
                };
                let port = udp.dst_port();
                if !self.cfg.udp_ports.contains(&port) {
                    self.counters.not_for_us += 1;
                    return;
                }
                let from = SocketAddrV4::new(pkt.src_addr(), udp.src_port());
                let datagram = udp.payload();
                let slot = tx.len();
                let Some(buf) = tx.buf_at(slot) else { return };
                // Handshake answers are written at the outer-header offset of the next TX
                // frame; a data message's body is copied there and the slot reserved: the
                // burst's messages are opened together (`finish_burst`) and each inner packet
                // is moved to the LAN in its own slot.
                match self.tunnel.receive_deferred(
                    datagram,
                    Some(from),
                    &mut buf[OUTER_HEADERS..],
                    now,
                ) {
                    (_, Some(d)) => {
                        tx.commit(Side::Lan, 0);
                        tx.burst.push_open(slot, d);
                    }
                    (action, None) => self.after_tunnel(tx, action, Some(port), now),
                }
            }
            _ => self.counters.not_for_us += 1,
        }
    }

    /// Finishes the burst so far through the tunnel, one call each way: the received DWCP
    /// messages are opened, accepted and decompressed ([`Tunnel::open_burst`]) and each inner
    /// packet goes to the LAN in its reserved slot (so the order holds); then the outgoing
    /// messages are compressed and sealed ([`Tunnel::seal_burst`]) and each frame's outer
    /// headers take the message's final length. Returns the messages the engine refused to
    /// seal (not sent). [`Gateway::drain`] runs it before frames leave.
    pub fn finish_burst(&mut self, tx: &mut TxBatch, now: Duration) -> usize {
        if tx.burst.opens_pending() > 0 {
            self.tunnel.open_burst(
                &mut *self.engine,
                &mut tx.burst,
                &mut tx.bufs,
                OUTER_HEADERS,
                now,
            );
            for i in 0..tx.burst.delivered().len() {
                let d = tx.burst.delivered()[i];
                if d.control {
                    self.keep_control(tx, d.slot, d.peer, d.len);
                } else {
                    self.deliver(tx, d.slot, d.peer, d.len, now);
                }
            }
        }
        if tx.burst.seals_pending() == 0 {
            return 0;
        }
        let refused = self.tunnel.seal_burst(
            &mut *self.engine,
            &mut tx.burst,
            &mut tx.bufs,
            OUTER_HEADERS,
        );
        for i in 0..tx.burst.sealed().len() {
            let sealed = tx.burst.sealed()[i];
            self.outer_headers_for(tx, sealed);
        }
        refused
    }

    /// A sealed message's frame takes its final length: a refused message's frame is emptied
    /// (never sent); one that compression shrank has its IPv4 and UDP lengths shrunk with it.
    fn outer_headers_for(&mut self, tx: &mut TxBatch, sealed: Sealed) {
        let Some(l) = tx.lens.get_mut(sealed.slot) else {
            return;
        };
        let Some(len) = sealed.len else {
            l.1 = 0;
            return;
        };
        let saved = l.1.saturating_sub(OUTER_HEADERS + len);
        if saved == 0 {
            return;
        }
        l.1 -= saved;
        if tx.is_rdma(sealed.slot) {
            return; // No outer headers, and not counted as the WAN port's.
        }
        if let Some(frame) = tx.bufs.get_mut(sealed.slot) {
            shrink_udp(&mut frame.bytes_mut()[ETH_LEN..], len);
        }
        self.counters.wan_tx_bytes = self.counters.wan_tx_bytes.saturating_sub(saved as u64);
    }

    /// Finishes the burst ([`Gateway::finish_burst`]), then hands each frame to `f` and
    /// forgets them ([`TxBatch::drain`]). Returns the messages refused by the engine.
    pub fn drain(
        &mut self,
        tx: &mut TxBatch,
        now: Duration,
        f: impl FnMut(Dest, &mut crate::io::Buffer, usize),
    ) -> usize {
        self.finish_burst(tx, now) + tx.drain(f)
    }

    /// An inner packet is in TX slot `slot` at `OUTER_HEADERS`: check it and send it on the
    /// LAN from that slot.
    fn deliver(&mut self, tx: &mut TxBatch, slot: usize, peer: usize, len: usize, now: Duration) {
        let Some(buf) = tx.buf_at(slot) else { return };
        let (src, dst, ttl) = {
            let Ok(p) = Ipv4Packet::new_checked(&buf[OUTER_HEADERS..OUTER_HEADERS + len]) else {
                self.counters.malformed += 1;
                return;
            };
            if usize::from(p.total_len()) != len {
                self.counters.malformed += 1;
                return;
            }
            (p.src_addr(), p.dst_addr(), p.hop_limit())
        };
        if !self
            .cfg
            .allowed
            .get(peer)
            .is_some_and(|a| a.iter().any(|n| n.contains(&src)))
        {
            self.counters.source_not_allowed += 1;
            return;
        }
        if ttl <= 1 {
            self.counters.ttl_exceeded += 1;
            return;
        }
        // Move the packet to sit right after an Ethernet header.
        buf.copy_within(OUTER_HEADERS..OUTER_HEADERS + len, ETH_LEN);
        {
            let mut p = Ipv4Packet::new_unchecked(&mut buf[ETH_LEN..ETH_LEN + len]);
            p.set_hop_limit(ttl - 1);
            p.fill_checksum();
        }
        buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        self.send_routed_at(tx, slot, Side::Lan, dst, ETH_LEN + len, now);
    }

    /// Timers: the tunnel's handshakes and keepalives, parked frames that waited too long.
    pub fn tick(&mut self, tx: &mut TxBatch, now: Duration) {
        for _ in 0..64 {
            let Some(buf) = tx.next_buf() else { return };
            let action = self
                .tunnel
                .tick(&mut *self.engine, &mut buf[OUTER_HEADERS..], now);
            if action == Action::None {
                break;
            }
            self.after_tunnel(tx, action, None, now);
        }
        let before = self.parked.len();
        let mut i = 0;
        while i < self.parked.len() {
            if now.saturating_sub(self.parked[i].since) > Duration::from_secs(3) {
                let p = self.parked.swap_remove(i);
                self.spare.push(p.frame);
            } else {
                i += 1;
            }
        }
        self.counters.unresolved += (before - self.parked.len()) as u64;
    }
}

/// The worker that owns the session a WAN frame is for (from the receiver index of a DWCP
/// data message or handshake response), or `None` for anything else.
pub fn wan_owner(frame: &[u8]) -> Option<u8> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(ETH_LEN..)?;
    if ip.first()? >> 4 != 4 || *ip.get(9)? != 17 {
        return None;
    }
    let hl = usize::from(ip[0] & 0x0f) * 4;
    wan_owner_of_message(ip.get(hl + UDP_LEN..)?)
}

/// EtherType (IEEE's, for local experiments) of the header a worker puts before a DWCP
/// message from its RDMA queue pair when it hands the message to the worker owning its
/// session ([`rdma_handoff_header`]); such frames only ever travel between workers.
const RDMA_HANDOFF: u16 = 0x88b5;

/// The 14-byte header before a handed-over RDMA message: no addresses, [`RDMA_HANDOFF`].
pub fn rdma_handoff_header() -> [u8; ETH_LEN] {
    let mut h = [0u8; ETH_LEN];
    h[12..14].copy_from_slice(&RDMA_HANDOFF.to_be_bytes());
    h
}

/// The DWCP message in a frame another worker handed over from its RDMA queue pair, or
/// `None` for any other frame.
pub fn rdma_handoff_message(frame: &[u8]) -> Option<&[u8]> {
    (frame.get(..12)? == [0u8; 12] && frame.get(12..14)? == RDMA_HANDOFF.to_be_bytes())
        .then(|| &frame[ETH_LEN..])
}

/// The worker that owns the session a DWCP message is for (data messages and handshake
/// responses), or `None` for anything else.
pub fn wan_owner_of_message(msg: &[u8]) -> Option<u8> {
    let index_at = match *msg.first()? {
        crate::proto::wire::TYPE_DATA => 4,
        crate::proto::wire::TYPE_RESPONSE => 8,
        _ => return None,
    };
    msg.get(index_at).copied()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use dwcp_kernels::cpu::CpuEngine;

    use super::*;
    use crate::proto::tunnel::{Params, PeerSpec};

    const HOST_A_MAC: [u8; 6] = [2, 0, 0, 0, 0xa, 2];
    const HOST_B_MAC: [u8; 6] = [2, 0, 0, 0, 0xb, 2];
    const GW_A_LAN: [u8; 6] = [2, 0, 0, 0, 0xa, 1];
    const GW_A_WAN: [u8; 6] = [2, 0, 0, 0, 0xa, 0xf];
    const GW_B_LAN: [u8; 6] = [2, 0, 0, 0, 0xb, 1];
    const GW_B_WAN: [u8; 6] = [2, 0, 0, 0, 0xb, 0xf];
    const HOST_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
    const HOST_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);

    fn keypair() -> ([u8; 32], [u8; 32]) {
        let p = dwcp_provisioning::types::PrivateKey::generate().unwrap();
        (*p.expose_secret(), p.public_key().0)
    }

    fn gateways() -> (Gateway, Gateway) {
        let (ap, apub) = keypair();
        let (bp, bpub) = keypair();
        let port = |mac, net: &str, gateway: Option<Ipv4Addr>| PortAddr {
            mac,
            net: net.parse().unwrap(),
            gateway,
            mtu: 1500,
        };
        let mk = |private, peer_public, endpoint: &str, lan, wan, allowed: &str| {
            let tunnel = Tunnel::new(
                0,
                private,
                Params::default(),
                Duration::from_secs(1_000_000),
                vec![PeerSpec {
                    public: peer_public,
                    psk: [0; 32],
                    endpoint: Some(endpoint.parse().unwrap()),
                    compress: true,
                }],
            );
            let cfg = GatewayConfig {
                lan,
                wan,
                udp_port: 51900,
                udp_ports: 51900..51901,
                allowed: vec![vec![allowed.parse().unwrap()]],
            };
            Gateway::new(cfg, tunnel, Box::new(CpuEngine))
        };
        let a = mk(
            ap,
            bpub,
            "198.51.100.2:51900",
            port(GW_A_LAN, "10.1.0.1/24", None),
            port(GW_A_WAN, "198.51.100.1/30", None),
            "10.2.0.0/16",
        );
        let b = mk(
            bp,
            apub,
            "198.51.100.1:51900",
            port(GW_B_LAN, "10.2.0.1/24", None),
            port(GW_B_WAN, "198.51.100.2/30", None),
            "10.1.0.0/16",
        );
        (a, b)
    }

    fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, payload: &[u8], df: bool) -> Vec<u8> {
        let mut b = vec![0u8; IP_LEN + payload.len()];
        write_ipv4(&mut b, src, dst, proto, payload.len(), 7, 64);
        if !df {
            let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
            p.set_dont_frag(false);
            p.fill_checksum();
        }
        b[IP_LEN..].copy_from_slice(payload);
        b
    }

    fn icmp_echo(seq: u16, data: &[u8]) -> Vec<u8> {
        let mut m = vec![8, 0, 0, 0, 0, 1];
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(data);
        let sum = ip_checksum(&m);
        m[2..4].copy_from_slice(&sum.to_be_bytes());
        m
    }

    fn arp_request(src_mac: [u8; 6], src: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(src_mac),
            source_protocol_addr: src,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        }
        .emit(&mut ArpPacket::new_unchecked(&mut p[..]));
        eth([0xff; 6], src_mac, 0x0806, &p)
    }

    /// Two gateways, a WAN wire between them, and two hosts that answer ARP.
    struct Net {
        a: Gateway,
        b: Gateway,
        now: Duration,
        to_host_a: Vec<Vec<u8>>,
        to_host_b: Vec<Vec<u8>>,
        wan_seen: Vec<Vec<u8>>,
    }

    impl Net {
        fn new() -> Self {
            let (a, b) = gateways();
            Self {
                a,
                b,
                now: Duration::ZERO,
                to_host_a: Vec::new(),
                to_host_b: Vec::new(),
                wan_seen: Vec::new(),
            }
        }

        /// Feeds a frame into a gateway port and runs everything that follows to rest.
        fn inject(&mut self, into_a: bool, side: Side, frame: Vec<u8>) {
            let mut queue: VecDeque<(bool, Side, Vec<u8>)> =
                VecDeque::from([(into_a, side, frame)]);
            let mut tx = TxBatch::new(64);
            for _ in 0..1000 {
                // Timers run between frames so handshakes start.
                for on_a in [true, false] {
                    let g = if on_a { &mut self.a } else { &mut self.b };
                    g.tick(&mut tx, self.now);
                    self.route_out(on_a, &mut tx, &mut queue);
                }
                let Some((on_a, side, frame)) = queue.pop_front() else {
                    return;
                };
                let g = if on_a { &mut self.a } else { &mut self.b };
                match side {
                    Side::Lan => g.from_lan(&frame, &mut tx, self.now),
                    Side::Wan => g.from_wan(&frame, &mut tx, self.now),
                }
                self.route_out(on_a, &mut tx, &mut queue);
            }
            panic!("network did not settle");
        }

        fn route_out(
            &mut self,
            from_a: bool,
            tx: &mut TxBatch,
            queue: &mut VecDeque<(bool, Side, Vec<u8>)>,
        ) {
            let g = if from_a { &mut self.a } else { &mut self.b };
            assert_eq!(
                g.finish_burst(tx, self.now),
                0,
                "a deferred seal was refused"
            );
            for (side, f) in tx.frames() {
                let f = f.to_vec();
                match side {
                    Side::Wan => {
                        self.wan_seen.push(f.clone());
                        queue.push_back((!from_a, Side::Wan, f));
                    }
                    Side::Lan => {
                        // The host on that LAN answers ARP for itself, and receives the rest.
                        let (host_mac, host_ip) = if from_a {
                            (HOST_A_MAC, HOST_A)
                        } else {
                            (HOST_B_MAC, HOST_B)
                        };
                        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
                        if eth.ethertype() == EthernetProtocol::Arp {
                            let arp =
                                ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap())
                                    .unwrap();
                            let ArpRepr::EthernetIpv4 {
                                operation,
                                source_hardware_addr,
                                source_protocol_addr,
                                target_protocol_addr,
                                ..
                            } = arp
                            else {
                                continue;
                            };
                            if operation == ArpOperation::Request && target_protocol_addr == host_ip
                            {
                                let mut p = vec![0u8; 28];
                                ArpRepr::EthernetIpv4 {
                                    operation: ArpOperation::Reply,
                                    source_hardware_addr: EthernetAddress(host_mac),
                                    source_protocol_addr: host_ip,
                                    target_hardware_addr: source_hardware_addr,
                                    target_protocol_addr: source_protocol_addr,
                                }
                                .emit(&mut ArpPacket::new_unchecked(&mut p[..]));
                                queue.push_back((
                                    from_a,
                                    Side::Lan,
                                    eth_frame(source_hardware_addr.0, host_mac, 0x0806, &p),
                                ));
                                continue;
                            }
                        }
                        if from_a {
                            self.to_host_a.push(f)
                        } else {
                            self.to_host_b.push(f)
                        }
                    }
                }
            }
            tx.clear();
        }
    }

    fn eth_frame(dst: [u8; 6], src: [u8; 6], t: u16, p: &[u8]) -> Vec<u8> {
        eth(dst, src, t, p)
    }

    fn ip_of(frame: &[u8]) -> Ipv4Packet<&[u8]> {
        Ipv4Packet::new_checked(&frame[ETH_LEN..]).unwrap()
    }

    #[test]
    fn answers_arp_and_ping_for_its_own_address() {
        let mut n = Net::new();
        n.inject(
            true,
            Side::Lan,
            arp_request(HOST_A_MAC, HOST_A, Ipv4Addr::new(10, 1, 0, 1)),
        );
        let reply = n.to_host_a.pop().expect("ARP reply");
        let arp = ArpRepr::parse(&ArpPacket::new_checked(&reply[ETH_LEN..]).unwrap()).unwrap();
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            ..
        } = arp
        else {
            panic!()
        };
        assert_eq!(
            (operation, source_hardware_addr.0),
            (ArpOperation::Reply, GW_A_LAN)
        );
        let ping = ipv4(
            HOST_A,
            Ipv4Addr::new(10, 1, 0, 1),
            IpProtocol::Icmp,
            &icmp_echo(1, b"hello"),
            true,
        );
        n.inject(true, Side::Lan, eth(GW_A_LAN, HOST_A_MAC, 0x0800, &ping));
        let pong = n.to_host_a.pop().expect("echo reply");
        assert_eq!(&pong[..6], &HOST_A_MAC);
        let ip = ip_of(&pong);
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (Ipv4Addr::new(10, 1, 0, 1), HOST_A)
        );
        assert_eq!(ip.payload()[0], 0, "echo reply type");
        assert_eq!(&ip.payload()[8..], b"hello");
        assert_eq!(ip_checksum(ip.payload()), 0, "ICMP checksum");
    }

    /// An RDMA peer's data messages leave for its queue pair (no outer headers, not by UDP),
    /// the other gateway takes them from its queue pair as from the WAN, and while the queue
    /// pair is down they are dropped and counted; control records still go by UDP.
    #[test]
    fn a_handed_over_rdma_message_is_told_from_a_wire_frame() {
        let msg = [4u8, 0, 0, 0, 1, 2, 3, 4];
        let frame = [&rdma_handoff_header()[..], &msg].concat();
        assert_eq!(rdma_handoff_message(&frame), Some(&msg[..]));
        assert_eq!(wan_owner_of_message(&msg), Some(1));
        // Frames from a port have addresses: never taken for one.
        let wire = eth(GW_A_WAN, GW_B_WAN, 0x88b5, &msg);
        assert_eq!(rdma_handoff_message(&wire), None);
        assert_eq!(rdma_handoff_message(&frame[..13]), None);
    }

    #[test]
    fn an_rdma_peer_s_data_goes_to_its_queue_pair_and_waits_while_it_is_down() {
        let mut n = Net::new();
        let pkt = |i: u8| {
            let p = ipv4(HOST_A, HOST_B, IpProtocol::Udp, &[i; 300], true);
            eth(GW_A_LAN, HOST_A_MAC, 0x0800, &p)
        };
        // A session first (over UDP, as the handshake always goes).
        n.inject(true, Side::Lan, pkt(0));
        assert_eq!(n.to_host_b.len(), 1);
        let wan_before = n.a.counters.wan_tx_packets;
        n.a.set_path(0, PeerPath::RdmaUp);
        let mut tx = TxBatch::new(64);
        n.a.from_lan(&pkt(1), &mut tx, n.now);
        let mut rdma = Vec::new();
        let mut ports = 0;
        n.a.drain(&mut tx, n.now, |dest, buf, len| match dest {
            Dest::Rdma(peer) => rdma.push((peer, buf.bytes()[OUTER_HEADERS..len].to_vec())),
            Dest::Port(_) => ports += 1,
        });
        assert_eq!((rdma.len(), ports), (1, 0));
        assert_eq!(rdma[0].0, 0);
        assert_eq!(rdma[0].1[0], crate::proto::wire::TYPE_DATA);
        assert_eq!(
            n.a.counters.wan_tx_packets, wan_before,
            "not the WAN port's"
        );
        // B takes it from its queue pair: delivered to site B's host.
        let mut rx = TxBatch::new(64);
        n.b.from_rdma(&rdma[0].1, &mut rx, n.now);
        let mut lan = Vec::new();
        n.b.drain(&mut rx, n.now, |dest, buf, len| {
            if dest == Dest::Port(Side::Lan) {
                lan.push(buf.bytes()[..len].to_vec());
            }
        });
        assert_eq!(lan.len(), 1);
        assert_eq!(ip_of(&lan[0]).payload(), &[1u8; 300][..]);
        // Queue pair down: the packet is dropped and counted, and nothing leaves.
        n.a.set_path(0, PeerPath::RdmaDown);
        n.a.from_lan(&pkt(2), &mut tx, n.now);
        let mut out = 0;
        n.a.drain(&mut tx, n.now, |_, _, _| out += 1);
        assert_eq!(out, 0);
        assert_eq!(n.a.counters.rdma_not_connected, 1);
        // A control record still goes by UDP, to the peer's endpoint.
        n.a.send_control(&mut tx, 0, &[7u8; 32], n.now);
        let mut udp = 0;
        n.a.drain(&mut tx, n.now, |dest, _, _| {
            assert_eq!(dest, Dest::Port(Side::Wan));
            udp += 1;
        });
        assert_eq!(udp, 1);
    }

    #[test]
    fn carries_packets_between_sites_through_the_tunnel() {
        let mut n = Net::new();
        let marker = b"SECRET-MARKER-0123456789".repeat(10);
        for i in 0..20u16 {
            let pkt = ipv4(
                HOST_A,
                HOST_B,
                IpProtocol::Udp,
                &[&i.to_be_bytes()[..], &marker].concat(),
                true,
            );
            n.inject(true, Side::Lan, eth(GW_A_LAN, HOST_A_MAC, 0x0800, &pkt));
        }
        assert_eq!(n.to_host_b.len(), 20, "all packets delivered");
        for (i, f) in n.to_host_b.iter().enumerate() {
            assert_eq!(&f[..6], &HOST_B_MAC);
            assert_eq!(&f[6..12], &GW_B_LAN);
            let ip = ip_of(f);
            assert!(ip.verify_checksum());
            assert_eq!(
                (ip.src_addr(), ip.dst_addr(), ip.hop_limit()),
                (HOST_A, HOST_B, 62)
            );
            assert_eq!(&ip.payload()[..2], &u16::try_from(i).unwrap().to_be_bytes());
        }
        // Nothing on the WAN shows the inner payload.
        let needle = b"SECRET-MARKER";
        assert!(
            n.wan_seen
                .iter()
                .all(|f| !f.windows(needle.len()).any(|w| w == needle))
        );
        assert!(
            n.wan_seen.iter().any(|f| f.len() > 100),
            "data went over the WAN"
        );
        // And back.
        let back = ipv4(HOST_B, HOST_A, IpProtocol::Udp, b"reply", true);
        n.inject(false, Side::Lan, eth(GW_B_LAN, HOST_B_MAC, 0x0800, &back));
        assert_eq!(n.to_host_a.len(), 1);
        assert_eq!(
            n.a.tunnel.counters.handshakes_completed + n.b.tunnel.counters.handshakes_completed,
            2
        );
        // With the WAN neighbour forgotten, the next message's seal cannot wait for the batch:
        // it is sealed before its frame is parked for ARP, and still arrives.
        n.a.wan_neigh.clear();
        n.wan_seen.clear();
        let late = ipv4(
            HOST_A,
            HOST_B,
            IpProtocol::Udp,
            &[&[9u8, 9][..], &marker].concat(),
            true,
        );
        let compressed = n.a.tunnel.counters.compressed;
        n.inject(true, Side::Lan, eth(GW_A_LAN, HOST_A_MAC, 0x0800, &late));
        assert_eq!(n.to_host_b.len(), 21, "the parked packet was delivered");
        assert_eq!(
            n.a.tunnel.counters.compressed,
            compressed + 1,
            "and compressed before it was sealed and parked"
        );
        let got = ip_of(n.to_host_b.last().unwrap());
        assert_eq!(got.payload(), &late[IP_LEN..]);
        assert!(
            n.wan_seen.iter().any(|f| {
                EthernetFrame::new_checked(&f[..])
                    .is_ok_and(|e| e.ethertype() == EthernetProtocol::Arp)
            }),
            "the WAN neighbour was asked again"
        );
        assert!(
            n.wan_seen
                .iter()
                .all(|f| !f.windows(needle.len()).any(|w| w == needle)),
            "a parked message went out unsealed"
        );
    }

    /// Bursts of incompressible payloads make the gateway stop compressing them for a while
    /// (counted), every packet still arrives, and a compressible burst after the back-off is
    /// compressed again.
    #[test]
    fn incompressible_bursts_back_compression_off_and_compressible_ones_bring_it_back() {
        let mut n = Net::new();
        let first = ipv4(HOST_A, HOST_B, IpProtocol::Udp, b"warm-up", true);
        n.inject(true, Side::Lan, eth(GW_A_LAN, HOST_A_MAC, 0x0800, &first));
        assert_eq!(n.to_host_b.len(), 1, "session up, host B's MAC known");
        let mut rng = dwcp_kernels::samples::Rng(11);
        let mut burst = |n: &mut Net, random: bool| {
            let mut tx = TxBatch::new(32);
            for i in 0..16u8 {
                let mut body = vec![i; 1000];
                if random {
                    rng.fill(&mut body);
                }
                // One flow: UDP 5000 → 9 (the gates go by flow).
                body[..8].copy_from_slice(&[0x13, 0x88, 0, 9, 0x03, 0xe8, 0, 0]);
                let pkt = ipv4(HOST_A, HOST_B, IpProtocol::Udp, &body, true);
                n.a.from_lan(&eth(GW_A_LAN, HOST_A_MAC, 0x0800, &pkt), &mut tx, n.now);
            }
            assert_eq!(n.a.finish_burst(&mut tx, n.now), 0);
            let wire: Vec<Vec<u8>> = tx.frames().map(|(_, f)| f.to_vec()).collect();
            tx.clear();
            for f in wire {
                n.inject(false, Side::Wan, f);
            }
        };
        let c0 = n.a.tunnel.counters;
        burst(&mut n, true);
        let c = n.a.tunnel.counters;
        assert_eq!(
            c.compress_no_gain - c0.compress_no_gain,
            16,
            "all tried in vain"
        );
        burst(&mut n, true);
        let c = n.a.tunnel.counters;
        assert_eq!(c.compress_skipped - c0.compress_skipped, 16, "none tried");
        assert_eq!(c.compress_no_gain - c0.compress_no_gain, 16);
        // Compressible again: the first burst after the back-off is tried, and shrinks.
        burst(&mut n, false);
        let c = n.a.tunnel.counters;
        assert_eq!(c.compressed - c0.compressed, 16);
        assert_eq!(n.to_host_b.len(), 1 + 3 * 16, "every packet delivered");
    }

    /// A WAN burst is opened in one batch: each inner packet keeps its place, a replay within
    /// the burst, a tampered message and one whose session is gone are each dropped and
    /// counted, and the rest are delivered.
    #[test]
    fn a_wan_burst_is_opened_together_in_order_with_drops_counted() {
        let mut n = Net::new();
        let first = ipv4(HOST_A, HOST_B, IpProtocol::Udp, b"warm-up", true);
        n.inject(true, Side::Lan, eth(GW_A_LAN, HOST_A_MAC, 0x0800, &first));
        assert_eq!(n.to_host_b.len(), 1, "session up, host B's MAC known");
        // Eight messages from A, compressed in one batch and sealed in another.
        let mut tx = TxBatch::new(32);
        let (compressed, wan_bytes) = (n.a.tunnel.counters.compressed, n.a.counters.wan_tx_bytes);
        for i in 0..8u8 {
            let pkt = ipv4(HOST_A, HOST_B, IpProtocol::Udp, &[i; 100], true);
            n.a.from_lan(&eth(GW_A_LAN, HOST_A_MAC, 0x0800, &pkt), &mut tx, n.now);
        }
        assert_eq!(n.a.finish_burst(&mut tx, n.now), 0);
        let mut wire: Vec<Vec<u8>> = tx.frames().map(|(_, f)| f.to_vec()).collect();
        tx.clear();
        assert_eq!(wire.len(), 8);
        assert_eq!(n.a.tunnel.counters.compressed - compressed, 8);
        let sent: usize = wire.iter().map(Vec::len).sum();
        assert_eq!(n.a.counters.wan_tx_bytes - wan_bytes, sent as u64);
        for f in &wire {
            // The outer headers follow the shorter, compressed message.
            let ip = ip_of(f);
            assert!(ip.verify_checksum());
            assert_eq!(usize::from(ip.total_len()), f.len() - ETH_LEN);
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!(usize::from(udp.len()), ip.payload().len());
            assert!(
                f.len() < OUTER_HEADERS + OVERHEAD + IP_LEN + 100,
                "{}",
                f.len()
            );
            assert_eq!(
                f[OUTER_HEADERS + 1] & crate::proto::wire::FLAG_LZ4,
                crate::proto::wire::FLAG_LZ4
            );
        }
        // Message 2 again (a replay inside the burst), message 5 tampered.
        let replay = wire[2].clone();
        wire.insert(4, replay);
        let last = wire[6].len() - 1;
        wire[6][last] ^= 1;
        let before = n.b.tunnel.counters;
        let mut rx = TxBatch::new(32);
        for f in &wire {
            n.b.from_wan(f, &mut rx, n.now);
        }
        assert!(
            rx.frames().next().is_none(),
            "nothing leaves before the open"
        );
        assert_eq!(n.b.finish_burst(&mut rx, n.now), 0);
        let got: Vec<u8> = rx
            .frames()
            .map(|(side, f)| {
                assert_eq!(side, Side::Lan);
                assert_eq!(&f[..6], &HOST_B_MAC);
                let ip = ip_of(f);
                assert!(ip.verify_checksum());
                assert_eq!(ip.payload().len(), 100);
                ip.payload()[0]
            })
            .collect();
        assert_eq!(
            got,
            [0, 1, 2, 3, 4, 6, 7],
            "in order, the tampered one missing"
        );
        let after = n.b.tunnel.counters;
        assert_eq!(after.replayed - before.replayed, 1);
        assert_eq!(after.auth_failed - before.auth_failed, 1);
        assert_eq!(after.rx_packets - before.rx_packets, 7);
        // The same messages again: all replays now, none delivered.
        rx.clear();
        for f in &wire {
            n.b.from_wan(f, &mut rx, n.now);
        }
        n.b.finish_burst(&mut rx, n.now);
        assert_eq!(rx.frames().count(), 0);
        assert_eq!(n.b.tunnel.counters.replayed - after.replayed, 8);
    }

    /// An authentic message whose LZ4 payload does not decompress (a broken sender) is
    /// dropped and counted as malformed; the rest of its burst is delivered.
    #[test]
    fn an_undecodable_payload_is_dropped_from_its_burst_and_counted() {
        let mut n = Net::new();
        let first = ipv4(HOST_A, HOST_B, IpProtocol::Udp, b"warm-up", true);
        n.inject(true, Side::Lan, eth(GW_A_LAN, HOST_A_MAC, 0x0800, &first));
        let mut tx = TxBatch::new(32);
        for i in 0..4u8 {
            let pkt = ipv4(HOST_A, HOST_B, IpProtocol::Udp, &[i; 100], true);
            n.a.from_lan(&eth(GW_A_LAN, HOST_A_MAC, 0x0800, &pkt), &mut tx, n.now);
        }
        // Break message 1 before it is sealed: flag says LZ4, payload is not an LZ4 block.
        let (slot, d) = tx.burst.seal_mut(1);
        d.compress = false;
        let msg = &mut tx.bufs[*slot].bytes_mut()[OUTER_HEADERS..];
        msg[1] |= crate::proto::wire::FLAG_LZ4;
        msg[crate::proto::wire::DATA_HEADER_LEN..crate::proto::wire::DATA_HEADER_LEN + d.len]
            .fill(0xf0);
        assert_eq!(n.a.finish_burst(&mut tx, n.now), 0);
        let wire: Vec<Vec<u8>> = tx.frames().map(|(_, f)| f.to_vec()).collect();
        let before = n.b.tunnel.counters;
        let mut rx = TxBatch::new(32);
        for f in &wire {
            n.b.from_wan(f, &mut rx, n.now);
        }
        n.b.finish_burst(&mut rx, n.now);
        let got: Vec<u8> = rx.frames().map(|(_, f)| ip_of(f).payload()[0]).collect();
        assert_eq!(got, [0, 2, 3]);
        let after = n.b.tunnel.counters;
        assert_eq!(after.malformed - before.malformed, 1);
        assert_eq!(after.auth_failed, before.auth_failed, "it was authentic");
    }

    #[test]
    fn too_big_with_df_gets_fragmentation_needed() {
        let mut n = Net::new();
        let big = ipv4(HOST_A, HOST_B, IpProtocol::Udp, &vec![0u8; 1480], true);
        n.inject(true, Side::Lan, eth(GW_A_LAN, HOST_A_MAC, 0x0800, &big));
        let icmp = n.to_host_a.pop().expect("ICMP error");
        let ip = ip_of(&icmp);
        let m = ip.payload();
        assert_eq!(
            (m[0], m[1]),
            (3, 4),
            "destination unreachable, fragmentation needed"
        );
        assert_eq!(u16::from_be_bytes([m[6], m[7]]), 1500 - 60, "next-hop MTU");
        assert_eq!(ip_checksum(m), 0);
        assert_eq!(n.a.counters.too_big, 1);
        assert!(n.to_host_b.is_empty());
    }

    #[test]
    fn syn_mss_is_clamped() {
        let mut n = Net::new();
        let mut tcp = vec![0u8; 24];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[12] = 6 << 4; // data offset 6 words
        tcp[13] = 0x02; // SYN
        tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
        tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
        {
            let mut t = TcpPacket::new_unchecked(&mut tcp[..]);
            t.fill_checksum(&HOST_A.into(), &HOST_B.into());
        }
        let pkt = ipv4(HOST_A, HOST_B, IpProtocol::Tcp, &tcp, true);
        n.inject(true, Side::Lan, eth(GW_A_LAN, HOST_A_MAC, 0x0800, &pkt));
        let f = n.to_host_b.pop().expect("SYN delivered");
        let ip = ip_of(&f);
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(&t.options()[..4], &[2, 4, 0x05, 0x78], "MSS 1400");
        assert!(t.verify_checksum(&HOST_A.into(), &HOST_B.into()));
        assert_eq!(n.a.counters.mss_clamped, 1);
    }

    #[test]
    fn no_route_and_spoofed_source_are_dropped() {
        let mut n = Net::new();
        let pkt = ipv4(
            HOST_A,
            Ipv4Addr::new(192, 168, 9, 9),
            IpProtocol::Udp,
            b"x",
            true,
        );
        n.inject(true, Side::Lan, eth(GW_A_LAN, HOST_A_MAC, 0x0800, &pkt));
        assert_eq!(n.a.counters.no_route, 1);
        // A packet whose source is not site A's prefix (A routes by destination and carries
        // it): B's cryptokey check drops it.
        let spoofed = ipv4(
            Ipv4Addr::new(10, 9, 9, 9),
            HOST_B,
            IpProtocol::Udp,
            b"x",
            true,
        );
        n.inject(
            true,
            Side::Lan,
            eth(GW_A_LAN, [2, 0, 0, 0, 9, 9], 0x0800, &spoofed),
        );
        assert_eq!(n.b.counters.source_not_allowed, 1);
        assert!(n.to_host_b.is_empty());
    }

    #[test]
    fn a_frame_with_no_free_tx_buffer_is_counted() {
        let (mut a, _) = gateways();
        let mut tx = TxBatch::new(1);
        let ask = arp_request(HOST_A_MAC, HOST_A, Ipv4Addr::new(10, 1, 0, 1));
        a.from_lan(&ask, &mut tx, Duration::ZERO);
        a.from_lan(&ask, &mut tx, Duration::ZERO);
        assert_eq!(tx.frames().count(), 1, "one reply fits");
        assert_eq!(tx.no_room(), 1, "the other is counted");
    }

    #[test]
    fn garbage_frames_are_counted_not_fatal() {
        let (mut a, _) = gateways();
        let mut tx = TxBatch::new(8);
        for len in 0..120 {
            let f: Vec<u8> = (0..len)
                .map(|i| u8::try_from((i * 37 + len) % 256).unwrap())
                .collect();
            a.from_lan(&f, &mut tx, Duration::ZERO);
            a.from_wan(&f, &mut tx, Duration::ZERO);
            tx.clear();
        }
        let c = a.counters;
        assert_eq!(c.lan_rx_packets, 120);
        assert!(c.malformed + c.not_for_us >= 200, "{c:?}");
    }
}
