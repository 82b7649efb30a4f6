//! One worker's RDMA link: its device context, a shared receive queue fed from memory
//! registered once at start-up (hugepages when there are some), and one reliable-connected
//! queue pair per RDMA peer with a ring of registered send buffers. DWCP messages leave as
//! SENDs and arrive as receive completions, which the worker polls: no interrupts, no system
//! calls on the steady path. The queue pairs connect through the records of [`super`].

use std::time::{Duration, Instant};

use rdma_sys::verbs::{
    Completion, Context, MemoryRegion, POLL_MAX, QueuePair, VerbsError, WC_RECV, WC_RETRY_EXC_ERR,
    WC_RNR_RETRY_EXC_ERR, WC_SUCCESS, WC_WR_FLUSH_ERR,
};

use super::{
    Decision, InlinePolicy, OFFER_EVERY, PeerCounters, QpRecord, QpState, RECORD_ACCEPT,
    RECORD_LEN, RECORD_OFFER, RecvAccount, decide,
};
use crate::proto::tunnel::{MAX_INNER, OVERHEAD};

/// Largest DWCP message, and the room each buffer has (rounded up to a cache line).
const SLOT: usize = (MAX_INNER + OVERHEAD).next_multiple_of(64);
/// [`SLOT`] as verbs take lengths.
const SLOT_U32: u32 = 9280;
const _: () = assert!(SLOT_U32 as usize == SLOT);
/// Receive buffers on the shared receive queue.
pub const RECV_SLOTS: usize = 512;
/// Send buffers (and outstanding sends) per queue pair.
pub const SEND_SLOTS: usize = 128;
/// Inline bytes asked of the device per queue pair (it may give less).
const INLINE_ASK: u32 = 512;
/// `wr_id` bit marking a send (its peer in bits 32..48, its ring position below).
const SEND_BIT: u64 = 1 << 63;

/// The local end of a peer's RDMA: its device, port and GID index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The RDMA device, e.g. `rxe0`.
    pub device: String,
    /// Its port, from 1.
    pub port: u8,
    /// This node's GID index on that port.
    pub gid_index: u8,
}

/// Why a worker's RDMA link could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The device could not be opened or set up.
    #[error("RDMA device {device} port {port} GID index {gid_index}: {source}")]
    Device {
        /// Device.
        device: String,
        /// Port.
        port: u8,
        /// GID index.
        gid_index: u8,
        /// The verbs call that failed.
        #[source]
        source: VerbsError,
    },
    /// Buffer memory could not be mapped.
    #[error("RDMA buffers: {0}")]
    Memory(#[source] std::io::Error),
}

struct PeerLink {
    qp: QueuePair,
    psn: u32,
    state: QpState,
    broken: bool,
    last_offer: Option<Duration>,
    /// Send ring: sends posted (`head`) and completed (`tail`), as running counts.
    head: u64,
    tail: u64,
    counters: PeerCounters,
}

/// One worker's RDMA link (field order is drop order: queue pairs and registrations go
/// before the context they belong to).
pub struct Link {
    peers: Vec<Option<PeerLink>>,
    recv_mr: MemoryRegion,
    send_mr: MemoryRegion,
    ctx: Context,
    recv_mem: &'static mut [u8],
    send_mem: &'static mut [u8],
    recv: RecvAccount,
    worker: u8,
    gid: [u8; 16],
    mtu: u8,
    inline: InlinePolicy,
    completions: [Completion; POLL_MAX],
    /// Where the buffers live.
    pub backing: crate::io::pool::Backing,
}

fn random_psn() -> u32 {
    let mut b = [0u8; 4];
    // A failed random source leaves a fixed PSN: still correct, only guessable.
    let _ = getrandom::fill(&mut b);
    u32::from_be_bytes(b) & 0x00ff_ffff
}

impl Link {
    /// Opens `endpoint`'s device for worker `worker`, with a queue pair for each of the
    /// tunnel's peers marked `true` in `rdma_peers` (by peer index).
    pub fn open(endpoint: &Endpoint, worker: u8, rdma_peers: &[bool]) -> Result<Self, LinkError> {
        let dev = |source| LinkError::Device {
            device: endpoint.device.clone(),
            port: endpoint.port,
            gid_index: endpoint.gid_index,
            source,
        };
        let n_peers = rdma_peers.iter().filter(|&&r| r).count().max(1);
        let cqe = u32::try_from(RECV_SLOTS + SEND_SLOTS * n_peers).unwrap_or(u32::MAX);
        let recv_wr = u32::try_from(RECV_SLOTS).unwrap_or(u32::MAX);
        let mut ctx = Context::open(
            &endpoint.device,
            endpoint.port,
            endpoint.gid_index,
            cqe,
            recv_wr,
        )
        .map_err(dev)?;
        let (recv_mem, backing) =
            crate::io::pool::region(RECV_SLOTS * SLOT).map_err(LinkError::Memory)?;
        let (send_mem, _) = crate::io::pool::region(SEND_SLOTS * SLOT * rdma_peers.len().max(1))
            .map_err(LinkError::Memory)?;
        // SAFETY: both regions are mapped for the life of the process (never unmapped) and
        // used only through this link.
        let recv_mr =
            unsafe { ctx.register(recv_mem.as_mut_ptr(), recv_mem.len()) }.map_err(dev)?;
        // SAFETY: as above.
        let send_mr =
            unsafe { ctx.register(send_mem.as_mut_ptr(), send_mem.len()) }.map_err(dev)?;
        let mut peers = Vec::with_capacity(rdma_peers.len());
        for &rdma in rdma_peers {
            peers.push(if rdma {
                Some(Self::new_peer(&mut ctx).map_err(dev)?)
            } else {
                None
            });
        }
        let max_inline = peers
            .iter()
            .flatten()
            .map(|p| p.qp.max_inline())
            .min()
            .unwrap_or(0);
        let mut link = Self {
            peers,
            recv_mr,
            send_mr,
            gid: ctx.gid(),
            mtu: ctx.mtu(),
            ctx,
            recv_mem,
            send_mem,
            recv: RecvAccount::new(RECV_SLOTS),
            worker,
            inline: InlinePolicy::new(max_inline),
            completions: [Completion::default(); POLL_MAX],
            backing,
        };
        for i in 0..RECV_SLOTS {
            link.repost(i).map_err(dev)?;
        }
        link.recv.filled();
        Ok(link)
    }

    fn new_peer(ctx: &mut Context) -> Result<PeerLink, VerbsError> {
        let qp = ctx.queue_pair(u32::try_from(SEND_SLOTS).unwrap_or(128), INLINE_ASK)?;
        Ok(PeerLink {
            qp,
            psn: random_psn(),
            state: QpState::Free,
            broken: false,
            last_offer: None,
            head: 0,
            tail: 0,
            counters: PeerCounters::default(),
        })
    }

    fn repost(&mut self, i: usize) -> Result<(), VerbsError> {
        let buf = &mut self.recv_mem[i * SLOT..(i + 1) * SLOT];
        // SAFETY: the buffer lies in `recv_mr`, and the accounting below keeps it out of
        // every other use until its completion is polled.
        unsafe {
            self.ctx
                .post_recv(i as u64, buf.as_mut_ptr(), SLOT_U32, self.recv_mr.lkey())
        }?;
        self.recv.posted(i);
        Ok(())
    }

    /// Whether data to `peer` can go by RDMA now.
    pub fn connected(&self, peer: usize) -> bool {
        self.peers
            .get(peer)
            .and_then(Option::as_ref)
            .is_some_and(|p| matches!(p.state, QpState::Connected { .. }) && !p.broken)
    }

    /// The peers with a queue pair on this link.
    pub fn rdma_peers(&self) -> impl Iterator<Item = usize> + '_ {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|_| i))
    }

    /// Sends one DWCP message to `peer` (inline when small enough); `false` when it could not
    /// be posted (counted).
    pub fn send(&mut self, peer: usize, msg: &[u8]) -> bool {
        let connected = self.connected(peer);
        let Some(p) = self.peers.get_mut(peer).and_then(Option::as_mut) else {
            return false;
        };
        let Ok(len) = u32::try_from(msg.len()) else {
            return false;
        };
        if !connected || p.head - p.tail >= SEND_SLOTS as u64 || msg.len() > SLOT {
            p.counters.post_failed += 1;
            return false;
        }
        let (mut inline, probe) = self.inline.choose(len);
        inline &= len <= p.qp.max_inline();
        let t0 = probe.then(Instant::now);
        let ring = usize::try_from(p.head % SEND_SLOTS as u64).unwrap_or(0);
        let at = (peer * SEND_SLOTS + ring) * SLOT;
        let addr = if inline {
            msg.as_ptr()
        } else {
            let slot = &mut self.send_mem[at..at + msg.len()];
            slot.copy_from_slice(msg);
            slot.as_ptr()
        };
        let wr_id = SEND_BIT | ((peer as u64) << 32) | (p.head & 0xffff_ffff);
        // SAFETY: inline, the bytes are copied during the call; otherwise they are in ring
        // slot `ring` of `send_mr`, which is not written again until this send completes
        // (`head - tail` stays below the ring's size).
        let posted = unsafe { p.qp.send(wr_id, addr, len, self.send_mr.lkey(), inline) };
        if let Some(t0) = t0 {
            let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.inline.record(inline, ns);
        }
        if posted.is_err() {
            p.counters.post_failed += 1;
            return false;
        }
        p.head += 1;
        p.counters.sends += 1;
        p.counters.send_bytes += u64::from(len);
        p.counters.inline_sends += u64::from(inline);
        true
    }

    /// Polls the completion queue once, for up to `max` completions (the room the worker's
    /// batch has): each received message goes to `f` with its peer,
    /// then its buffer is posted again; sends free their ring slots; errors are counted and
    /// mark the queue pair broken ([`Link::repair`]). Returns the messages received.
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(usize, &[u8])) -> usize {
        let n = self
            .ctx
            .poll(&mut self.completions[..max.min(POLL_MAX)])
            .unwrap_or(0);
        let mut received = 0;
        for k in 0..n {
            let wc = &self.completions[k].clone();
            if wc.wr_id & SEND_BIT != 0 {
                self.send_completed(wc);
                continue;
            }
            let i = usize::try_from(wc.wr_id).unwrap_or(usize::MAX);
            if !self.recv.completed(i) {
                continue;
            }
            let peer = self
                .peers
                .iter()
                .position(|p| p.as_ref().is_some_and(|p| p.qp.qpn() == wc.qp_num));
            if wc.status == WC_SUCCESS && wc.opcode == WC_RECV {
                let len = (wc.byte_len as usize).min(SLOT);
                if let Some(peer) = peer {
                    if let Some(p) = self.peers[peer].as_mut() {
                        p.counters.receives += 1;
                        p.counters.receive_bytes += u64::from(wc.byte_len);
                    }
                    f(peer, &self.recv_mem[i * SLOT..i * SLOT + len]);
                    received += 1;
                }
            } else if let Some(p) = peer.and_then(|peer| self.peers[peer].as_mut()) {
                count_error(&mut p.counters, wc.status);
            }
            // A buffer that cannot be posted again stays out, counted in the low-water mark.
            let _ = self.repost(i);
        }
        received
    }

    fn send_completed(&mut self, wc: &Completion) {
        let peer = usize::from(u16::try_from((wc.wr_id >> 32) & 0xffff).unwrap_or(u16::MAX));
        let Some(p) = self.peers.get_mut(peer).and_then(Option::as_mut) else {
            return;
        };
        if wc.qp_num != p.qp.qpn() {
            return; // A queue pair torn down since.
        }
        p.tail = (p.tail + 1).min(p.head);
        if wc.status != WC_SUCCESS {
            count_error(&mut p.counters, wc.status);
            p.broken = true;
        }
    }

    /// Replaces every broken queue pair with a fresh, free one (counted as a reconnect);
    /// returns the peers repaired, whose tunnels should handshake again soon.
    pub fn repair(&mut self) -> heapless::Vec<usize, 16> {
        let mut repaired = heapless::Vec::new();
        for peer in 0..self.peers.len() {
            if self.peers[peer].as_ref().is_some_and(|p| p.broken) && self.renew(peer).is_ok() {
                let _ = repaired.push(peer);
            }
        }
        repaired
    }

    fn renew(&mut self, peer: usize) -> Result<(), VerbsError> {
        let fresh = Self::new_peer(&mut self.ctx)?;
        if let Some(slot) = self.peers.get_mut(peer) {
            let counters = slot.as_ref().map(|p| p.counters).unwrap_or_default();
            // The old queue pair is destroyed here, its outstanding sends with it.
            *slot = Some(PeerLink { counters, ..fresh });
            if let Some(p) = slot.as_mut() {
                p.counters.reconnects += 1;
                p.counters.connected = 0;
            }
        }
        Ok(())
    }

    /// Offers for the free queue pairs whose peers have a session (`has_session`) and were
    /// not offered within [`OFFER_EVERY`].
    pub fn offers_due(
        &mut self,
        now: Duration,
        has_session: impl Fn(usize) -> bool,
    ) -> heapless::Vec<(usize, [u8; RECORD_LEN]), 16> {
        let mut out = heapless::Vec::new();
        for peer in 0..self.peers.len() {
            let record = self.record(peer, RECORD_OFFER, 0);
            let Some(p) = self.peers[peer].as_mut() else {
                continue;
            };
            let due = p
                .last_offer
                .is_none_or(|t| now.saturating_sub(t) >= OFFER_EVERY);
            if p.state == QpState::Free && !p.broken && due && has_session(peer) {
                p.last_offer = Some(now);
                if let Some(r) = record {
                    let _ = out.push((peer, r));
                }
            }
        }
        out
    }

    fn record(&self, peer: usize, kind: u8, answers: u32) -> Option<[u8; RECORD_LEN]> {
        let p = self.peers.get(peer)?.as_ref()?;
        Some(
            QpRecord {
                kind,
                worker: self.worker,
                mtu: self.mtu,
                qpn: p.qp.qpn(),
                psn: p.psn,
                gid: self.gid,
                answers,
            }
            .encode(),
        )
    }

    /// An authenticated control record from `peer`: connects, reconnects or ignores as
    /// [`decide`] says; returns the accept to send back, if any.
    pub fn on_record(&mut self, peer: usize, bytes: &[u8]) -> Option<[u8; RECORD_LEN]> {
        let p = self.peers.get_mut(peer)?.as_mut()?;
        let Ok(r) = QpRecord::decode(bytes) else {
            p.counters.records_refused += 1;
            return None;
        };
        let reply = match decide(p.state, p.qp.qpn(), &r) {
            Decision::Ignore => {
                p.counters.records_refused += u64::from(r.kind == RECORD_OFFER);
                return None;
            }
            Decision::AcceptAgain => true,
            Decision::Connect { reply } => {
                self.connect(peer, &r).ok()?;
                reply
            }
            Decision::Reconnect { reply } => {
                self.renew(peer).ok()?;
                self.connect(peer, &r).ok()?;
                reply
            }
        };
        if reply {
            self.record(peer, RECORD_ACCEPT, r.qpn)
        } else {
            None
        }
    }

    fn connect(&mut self, peer: usize, r: &QpRecord) -> Result<(), VerbsError> {
        let mtu = self.mtu.min(r.mtu);
        let Some(p) = self.peers.get_mut(peer).and_then(Option::as_mut) else {
            return Ok(());
        };
        let done = self
            .ctx
            .connect(&mut p.qp, r.qpn, r.psn, &r.gid, p.psn, mtu);
        match done {
            Ok(()) => {
                p.state = QpState::Connected {
                    worker: r.worker,
                    qpn: r.qpn,
                };
                p.counters.connects += 1;
                p.counters.connected = 1;
                Ok(())
            }
            Err(e) => {
                p.broken = true;
                p.counters.errors_other += 1;
                Err(e)
            }
        }
    }

    /// Each RDMA peer's counters and queue-pair state name (a system call per peer: for the
    /// publishing interval, not per packet).
    pub fn peer_counters(&self) -> impl Iterator<Item = (usize, PeerCounters, i32)> + '_ {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p.counters, p.qp.state())))
    }

    /// The inline threshold now, in bytes.
    pub fn inline_threshold(&self) -> u32 {
        self.inline.threshold()
    }

    /// Fewest receive buffers posted since start, and how many there are.
    pub fn receive_low_water(&self) -> (usize, usize) {
        (self.recv.low_water, RECV_SLOTS)
    }
}

fn count_error(c: &mut PeerCounters, status: u32) {
    match status {
        WC_RETRY_EXC_ERR => c.errors_retry += 1,
        WC_RNR_RETRY_EXC_ERR => c.errors_rnr += 1,
        WC_WR_FLUSH_ERR => c.errors_flushed += 1,
        _ => c.errors_other += 1,
    }
}
