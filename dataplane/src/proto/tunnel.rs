//! One worker's DWCP/1 state: its peers, sessions, handshakes and timers (docs/protocol.md).
//!
//! Owns no I/O and no clock: datagrams and the time come in, datagrams and inner packets go
//! out through the caller's buffer. Crypto and compression go through the batch
//! [`Engine`], a burst at a time ([`burst`]: [`Tunnel::seal_burst`] and
//! [`Tunnel::open_burst`]). On the data path nothing is allocated; handshakes (control path)
//! may allocate.

pub mod burst;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddrV4;
use std::time::Duration;

use dwcp_kernels::{AeadKey, DecompressJob, Engine, OpenJob, SealJob, TAG_LEN};

use crate::proto::anti_replay::ReplayWindow;
use crate::proto::handshake::{self, Pending, SessionKeys, TIMESTAMP_LEN};
use crate::proto::wire::{
    self, DATA_HEADER_LEN, DataHeader, FLAG_CONTROL, FLAG_LZ4, Init, Response,
};

pub use burst::{Burst, Delivered, Sealed};

/// Largest inner packet (the largest MTU the config allows).
pub const MAX_INNER: usize = 9216;
/// Bytes DWCP adds to an inner packet: header and tag.
pub const OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;
/// Packets staged per peer while its first handshake runs.
pub const STAGED_MAX: usize = 32;
/// Never send more than this many messages on one key (far below the 2^64 nonce space).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 16);

/// Protocol timers and limits.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Anti-replay window in messages.
    pub replay_window: u32,
    /// Start a new handshake when the sending session is this old.
    pub rekey_after: Duration,
    /// ... or has sent this many messages.
    pub rekey_after_messages: u64,
    /// A session is unusable this long after it was made (missed rekeys).
    pub reject_after: Duration,
    /// Send a keepalive after this much sending silence; `None`: never.
    pub keepalive: Option<Duration>,
    /// How long the replaced session still decrypts what was in flight.
    pub keep_previous: Duration,
    /// Resend an unanswered initiation after this long.
    pub handshake_retry: Duration,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            replay_window: 2048,
            rekey_after: Duration::from_secs(120),
            rekey_after_messages: 1 << 48,
            reject_after: Duration::from_secs(180),
            keepalive: Some(Duration::from_secs(10)),
            keep_previous: Duration::from_secs(10),
            handshake_retry: Duration::from_secs(5),
        }
    }
}

/// A configured peer.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    /// Its static public key.
    pub public: [u8; 32],
    /// Pre-shared key (all zeros when none is configured).
    pub psk: [u8; 32],
    /// Where to send, until the peer is heard from elsewhere.
    pub endpoint: Option<SocketAddrV4>,
    /// Compress payloads to this peer when that makes them smaller.
    pub compress: bool,
}

/// Why a datagram or packet was dropped (each has a counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not a DWCP/1 message.
    Malformed,
    /// Tag or handshake did not authenticate.
    AuthFailed,
    /// Counter already seen or older than the window.
    Replayed,
    /// Receiver index names no session.
    UnknownIndex,
    /// No session and the staging queue is full.
    NoSession,
    /// Inner packet larger than the tunnel carries.
    TooBig,
}

/// What the caller does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Send `out[..len]` to the peer's endpoint.
    Send {
        /// Peer index.
        peer: usize,
        /// Datagram length.
        len: usize,
    },
    /// `out[..len]` is an inner packet from the peer.
    Deliver {
        /// Peer index.
        peer: usize,
        /// Packet length.
        len: usize,
    },
    /// `out[..len]` is an authenticated control record from the peer (not an inner packet).
    Control {
        /// Peer index.
        peer: usize,
        /// Record length.
        len: usize,
    },
    /// A session with the peer was established: staged packets can go
    /// ([`Tunnel::flush_staged`]).
    Established {
        /// Peer index.
        peer: usize,
    },
    /// The packet waits for the peer's handshake.
    Staged,
    /// Dropped, and counted.
    Dropped(DropReason),
}

/// Per-worker counters; the control thread sums them for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Data messages sent (keepalives included).
    pub tx_messages: u64,
    /// Inner bytes sent.
    pub tx_inner_bytes: u64,
    /// Bytes on the wire sent (DWCP messages, handshakes included).
    pub tx_wire_bytes: u64,
    /// Inner packets delivered.
    pub rx_packets: u64,
    /// Inner bytes delivered.
    pub rx_inner_bytes: u64,
    /// Drops: malformed.
    pub malformed: u64,
    /// Drops: authentication failed.
    pub auth_failed: u64,
    /// Drops: replayed or too old.
    pub replayed: u64,
    /// Drops: unknown receiver index.
    pub unknown_index: u64,
    /// Drops: no session and no room to stage.
    pub no_session: u64,
    /// Drops: inner packet too big.
    pub too_big: u64,
    /// Initiations sent.
    pub handshakes_initiated: u64,
    /// Sessions established (both roles).
    pub handshakes_completed: u64,
    /// Sessions that replaced an existing one.
    pub rekeys: u64,
    /// Control records sent.
    pub control_sent: u64,
    /// Control records received (authenticated, in the replay window).
    pub control_received: u64,
    /// Keepalives sent.
    pub keepalives_sent: u64,
    /// Payloads sent compressed.
    pub compressed: u64,
    /// Bytes before compression, of the payloads sent compressed.
    pub compress_in: u64,
    /// Bytes after compression, of the payloads sent compressed.
    pub compress_out: u64,
    /// Payloads compressed in vain (not smaller), sent as they were.
    pub compress_no_gain: u64,
    /// Payloads sent without trying to compress them: their flow's recent payloads did not
    /// shrink ([`CompressGate`]).
    pub compress_skipped: u64,
    /// Longest initiation-to-response time seen, nanoseconds.
    pub handshake_rtt_ns_max: u64,
}

struct Session {
    send: std::sync::Arc<AeadKey>,
    recv: AeadKey,
    local: u32,
    remote: u32,
    send_counter: u64,
    replay: ReplayWindow,
    born: Duration,
}

impl Session {
    fn new(keys: &SessionKeys, local: u32, remote: u32, window: u32, now: Duration) -> Self {
        Self {
            send: std::sync::Arc::new(AeadKey::new(&keys.send)),
            recv: AeadKey::new(&keys.recv),
            local,
            remote,
            send_counter: 0,
            replay: ReplayWindow::new(window),
            born: now,
        }
    }
}

/// Retired sessions kept per peer (the oldest goes first when full).
const RETIRED_MAX: usize = 4;

/// Payloads in a row that must fail to shrink before compression backs off.
const GATE_MISSES: u32 = 16;
/// The longest back-off, payloads.
const GATE_GAP_MAX: u32 = 1024;
/// ... and in time: a slow peer is tried again at least this often.
const GATE_PAUSE_MAX: Duration = Duration::from_millis(100);

/// Compression gates per peer: a flow's gate is picked by a hash of its addresses, protocol
/// and ports ([`flow_gate`]), so one encrypted stream backs off without taking a compressible
/// stream to the same peer with it (flows sharing a bucket share a gate).
const FLOW_GATES: usize = 128;

/// The compression gate of an inner packet: a hash of its IPv4 addresses and protocol, and of
/// its ports when it is TCP, UDP or SCTP and not a fragment (every fragment of a datagram
/// shares one gate); gate 0 for anything that is not IPv4.
fn flow_gate(inner: &[u8]) -> usize {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let Some(addrs) = inner.get(12..20) else {
        return 0;
    };
    if inner[0] >> 4 != 4 {
        return 0;
    }
    let proto = inner[9];
    let fragment = u16::from_be_bytes([inner[6], inner[7]]) & 0x3fff != 0;
    let ihl = usize::from(inner[0] & 0x0f) * 4;
    let ports = match inner.get(ihl..ihl + 4) {
        Some(p) if !fragment && ihl >= 20 && matches!(proto, 6 | 17 | 132) => {
            u32::from_be_bytes([p[0], p[1], p[2], p[3]])
        }
        _ => 0,
    };
    let mut addr = [0u8; 8];
    addr.copy_from_slice(addrs);
    let x = u64::from_be_bytes(addr) ^ (u64::from(proto) << 32 | u64::from(ports)).rotate_left(29);
    let h = (x ^ (x >> 32)).wrapping_mul(GOLDEN);
    // The top byte is the best mixed.
    const { assert!(FLOW_GATES.is_power_of_two() && FLOW_GATES <= 256) };
    usize::from(h.to_be_bytes()[0]) % FLOW_GATES
}

/// Backs compression off for a flow whose payloads stop shrinking (encrypted or already
/// compressed data, where LZ4 costs as much as the seal and gains nothing): after
/// [`GATE_MISSES`] payloads in a row did not shrink, the next ones are sent without trying,
/// then compression is tried again; each miss after a back-off doubles it (up to
/// [`GATE_GAP_MAX`] payloads, and never longer than [`GATE_PAUSE_MAX`]) and any payload that
/// shrinks ends it. Results that come back while backing off (the rest of a burst decided
/// before) change nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CompressGate {
    misses: u32,
    gap: u32,
    skip: u32,
    /// When the pause began (when the payload that started it was sent).
    since: Duration,
    /// When the last payload was sent.
    last: Duration,
}

impl CompressGate {
    /// Whether to try compressing the next payload, sent at `now`.
    fn admit(&mut self, now: Duration) -> bool {
        self.last = now;
        if self.skip == 0 {
            return true;
        }
        if now.saturating_sub(self.since) >= GATE_PAUSE_MAX {
            // Paused long enough: try this one.
            self.skip = 0;
            return true;
        }
        self.skip -= 1;
        false
    }

    /// A tried payload shrank or did not.
    fn record(&mut self, shrunk: bool) {
        if shrunk {
            *self = Self {
                last: self.last,
                ..Self::default()
            };
            return;
        }
        if self.skip > 0 {
            return;
        }
        self.misses = self.misses.saturating_add(1);
        if self.misses >= GATE_MISSES {
            self.gap = self.gap.saturating_mul(2).clamp(GATE_MISSES, GATE_GAP_MAX);
            self.skip = self.gap;
            self.since = self.last;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Retired(usize),
    Next,
}

struct Peer {
    spec: PeerSpec,
    endpoint: Option<SocketAddrV4>,
    current: Option<Session>,
    /// Replaced sessions that still decrypt what was in flight, each until its deadline.
    retired: Vec<(Session, Duration)>,
    /// Made as responder, used for sending once the initiator's first data arrives on it.
    next: Option<Session>,
    pending: Option<(Pending, u32, Duration)>,
    last_timestamp: [u8; TIMESTAMP_LEN],
    /// Start a handshake at the next tick even though the session is not due for a rekey
    /// (its RDMA queue pair broke: the peer may have restarted).
    handshake_soon: bool,
    last_sent: Duration,
    staged: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    /// Compression gates, by [`flow_gate`].
    gates: [CompressGate; FLOW_GATES],
    /// What went to and came from this peer.
    stats: PeerStats,
}

/// One peer's traffic and sessions, as one worker's tunnel saw them ([`Tunnel::peer_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Inner packets sent to the peer (keepalives not counted).
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Inner packets received from the peer and delivered.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Sessions established with it (either side initiating).
    pub handshakes: u64,
    /// Of them, ones that replaced a session.
    pub rekeys: u64,
    /// Wall-clock time of the last session established, nanoseconds since the Unix epoch
    /// (0: none yet).
    pub last_handshake_unix_ns: u64,
    /// 1 when a session can carry data now.
    pub session_up: u64,
    /// The peer's current endpoint, IPv4 as a number and port (0: none known).
    pub endpoint_ip: u64,
    /// See `endpoint_ip`.
    pub endpoint_port: u64,
}

impl Peer {
    /// A peer with no session yet; its staging buffers are allocated now.
    fn new(spec: PeerSpec) -> Self {
        Self {
            endpoint: spec.endpoint,
            spec,
            current: None,
            retired: Vec::with_capacity(RETIRED_MAX),
            next: None,
            pending: None,
            last_timestamp: [0; TIMESTAMP_LEN],
            handshake_soon: false,
            stats: PeerStats::default(),
            last_sent: Duration::ZERO,
            staged: VecDeque::with_capacity(STAGED_MAX),
            spare: (0..STAGED_MAX)
                .map(|_| Vec::with_capacity(MAX_INNER))
                .collect(),
            gates: [CompressGate::default(); FLOW_GATES],
        }
    }

    fn slot(&self, slot: Slot) -> Option<&Session> {
        match slot {
            Slot::Current => self.current.as_ref(),
            Slot::Retired(i) => self.retired.get(i).map(|(s, _)| s),
            Slot::Next => self.next.as_ref(),
        }
    }
    fn slot_mut(&mut self, slot: Slot) -> Option<&mut Session> {
        match slot {
            Slot::Current => self.current.as_mut(),
            Slot::Retired(i) => self.retired.get_mut(i).map(|(s, _)| s),
            Slot::Next => self.next.as_mut(),
        }
    }
    fn find(&self, index: u32) -> Option<Slot> {
        if self.current.as_ref().is_some_and(|s| s.local == index) {
            return Some(Slot::Current);
        }
        if self.next.as_ref().is_some_and(|s| s.local == index) {
            return Some(Slot::Next);
        }
        self.retired
            .iter()
            .position(|(s, _)| s.local == index)
            .map(Slot::Retired)
    }
}

/// What sealing a deferred message needs (see [`Tunnel::encapsulate_deferred`]): the session's
/// send key, the nonce, and the plaintext payload length. The message's first
/// [`DATA_HEADER_LEN`] bytes are the AAD; the payload follows, with room for the tag after it.
/// The caller only hands it back to the tunnel ([`Burst::push_seal`], [`Tunnel::seal_alone`]).
#[derive(Clone, Debug)]
pub struct DeferredSeal {
    /// The peer it goes to.
    peer: usize,
    /// Its flow's compression gate at that peer.
    gate: usize,
    /// The session's send key.
    key: std::sync::Arc<AeadKey>,
    /// The nonce (from the message counter).
    nonce: [u8; dwcp_kernels::NONCE_LEN],
    /// Plaintext payload length.
    pub(crate) len: usize,
    /// The peer wants payloads compressed and this one has not been tried yet: the payload is
    /// the inner packet as is, and the header says uncompressed. Compress it in a batch and
    /// apply the result with [`DeferredSeal::apply_compressed`] before sealing; sealed
    /// without that, it is a valid uncompressed message.
    pub(crate) compress: bool,
}

impl DeferredSeal {
    /// Applies the result of compressing this message's payload (`compressed`: the LZ4 block,
    /// when it came out smaller) to the message at the start of `msg`: the payload is replaced
    /// and the header says LZ4. Returns the bytes saved (0 when not smaller).
    fn apply_compressed(&mut self, msg: &mut [u8], compressed: Option<&[u8]>) -> usize {
        self.compress = false;
        let Some(c) = compressed.filter(|c| c.len() < self.len) else {
            return 0;
        };
        msg[DATA_HEADER_LEN..DATA_HEADER_LEN + c.len()].copy_from_slice(c);
        msg[1] |= FLAG_LZ4;
        let saved = self.len - c.len();
        self.len = c.len();
        saved
    }
}

impl DeferredSeal {
    /// The seal job for this message, which starts (with its header, the AAD) at the start
    /// of `msg`.
    fn job<'a>(&'a self, msg: &'a mut [u8]) -> SealJob<'a> {
        let (aad, body) = msg.split_at_mut(DATA_HEADER_LEN);
        SealJob {
            key: &self.key,
            nonce: self.nonce,
            aad,
            buf: body,
            len: self.len,
            ok: false,
        }
    }
}

/// A received data message whose opening is deferred (see [`Tunnel::receive_deferred`]): its
/// body (ciphertext and tag) waits in the caller's buffer until [`Tunnel::open_burst`] opens
/// it there, in one engine batch with the rest of the burst, accepts it (replay window,
/// endpoint, session confirmation) and decompresses it. The caller only hands it back
/// ([`Burst::push_open`]).
#[derive(Clone, Debug)]
pub struct DeferredOpen {
    /// The message header as received (the AAD).
    aad: [u8; DATA_HEADER_LEN],
    header: DataHeader,
    /// The peer whose session the receiver index named.
    peer: usize,
    from: Option<SocketAddrV4>,
    /// Ciphertext plus tag length.
    body_len: usize,
}

/// A deferred data message that authenticated and was accepted ([`Tunnel::accept_open`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Accepted {
    /// The peer it came from.
    pub peer: usize,
    /// Its plaintext payload length.
    pub len: usize,
    /// The payload is an LZ4 block (decompress it, then call [`Tunnel::delivered`]).
    pub compressed: bool,
    /// The payload is a control record, not an inner packet.
    pub control: bool,
}

/// One worker's tunnel state.
pub struct Tunnel {
    worker: u8,
    private: [u8; 32],
    params: Params,
    /// Wall-clock time at `now == 0`, for handshake timestamps.
    wall_at_zero: Duration,
    peers: Vec<Peer>,
    by_index: HashMap<u32, usize>,
    /// Compression scratch space.
    scratch: Box<[u8; MAX_INNER + 64]>,
    /// Counters.
    pub counters: Counters,
}

impl Tunnel {
    /// A worker's tunnel. `worker` goes into the top byte of its session indices, so any
    /// worker can tell which worker owns a session from a datagram's receiver index.
    pub fn new(
        worker: u8,
        private: [u8; 32],
        params: Params,
        wall_at_zero: Duration,
        peers: Vec<PeerSpec>,
    ) -> Self {
        let peers = peers.into_iter().map(Peer::new).collect();
        Self {
            worker,
            private,
            params,
            wall_at_zero,
            peers,
            by_index: HashMap::new(),
            scratch: Box::new([0; MAX_INNER + 64]),
            counters: Counters::default(),
        }
    }

    /// Each peer's traffic and sessions as this worker saw them, by peer index; whether a
    /// session is up and the endpoint are read now (`now`: this tunnel's clock).
    pub fn peer_stats(&self, now: Duration) -> impl Iterator<Item = (usize, PeerStats)> + '_ {
        let reject_after = self.params.reject_after;
        self.peers.iter().enumerate().map(move |(i, p)| {
            let usable = |s: &Session| {
                now.saturating_sub(s.born) < reject_after && s.send_counter < REJECT_AFTER_MESSAGES
            };
            let mut st = p.stats;
            st.session_up = u64::from(
                p.current.as_ref().is_some_and(usable) || p.next.as_ref().is_some_and(usable),
            );
            if let Some(e) = p.endpoint {
                st.endpoint_ip = u64::from(u32::from(*e.ip()));
                st.endpoint_port = u64::from(e.port());
            }
            (i, st)
        })
    }

    /// The worker this tunnel belongs to.
    pub fn worker(&self) -> u8 {
        self.worker
    }

    /// The worker that owns a session index (its top byte).
    pub fn owner_of(index: u32) -> u8 {
        index.to_be_bytes()[0]
    }

    /// Where to send to a peer: the configured endpoint, or where it was last heard from.
    pub fn endpoint(&self, peer: usize) -> Option<SocketAddrV4> {
        self.peers.get(peer).and_then(|p| p.endpoint)
    }

    /// Replaces the peer list (config reload). A peer whose public key and pre-shared key
    /// are unchanged keeps its sessions and learned endpoint; removed peers' sessions are
    /// forgotten; new peers start without a session. Peer indices follow the new list.
    pub fn set_peers(&mut self, specs: Vec<PeerSpec>) {
        let mut old: Vec<Option<Peer>> = std::mem::take(&mut self.peers)
            .into_iter()
            .map(Some)
            .collect();
        let mut peers = Vec::with_capacity(specs.len());
        for spec in specs {
            let kept = old
                .iter_mut()
                .find(|p| {
                    p.as_ref()
                        .is_some_and(|p| p.spec.public == spec.public && p.spec.psk == spec.psk)
                })
                .and_then(Option::take);
            let peer = match kept {
                Some(mut p) => {
                    if spec.endpoint.is_some() && spec.endpoint != p.spec.endpoint {
                        p.endpoint = spec.endpoint;
                    }
                    p.spec = spec;
                    p
                }
                None => Peer::new(spec),
            };
            peers.push(peer);
        }
        self.peers = peers;
        // Rebuild the index table from the sessions that survived.
        self.by_index.clear();
        for (i, p) in self.peers.iter().enumerate() {
            let locals = p
                .current
                .iter()
                .chain(p.next.iter())
                .chain(p.retired.iter().map(|(s, _)| s))
                .map(|s| s.local)
                .chain(p.pending.iter().map(|(_, idx, _)| *idx));
            for l in locals {
                self.by_index.insert(l, i);
            }
        }
    }

    /// Number of configured peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Whether the peer has a session to send on.
    pub fn has_session(&self, peer: usize) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.current.is_some() || p.next.is_some())
    }

    fn new_index(&mut self, peer: usize) -> u32 {
        loop {
            let mut r = [0u8; 4];
            if getrandom::fill(&mut r).is_err() {
                // Without randomness, a counter still gives unique indices.
                r = u32::try_from(self.by_index.len())
                    .unwrap_or(0)
                    .to_be_bytes();
            }
            r[0] = self.worker;
            let index = u32::from_be_bytes(r);
            if let std::collections::hash_map::Entry::Vacant(e) = self.by_index.entry(index) {
                e.insert(peer);
                return index;
            }
        }
    }

    fn forget(&mut self, s: Option<Session>) {
        if let Some(s) = s {
            self.by_index.remove(&s.local);
        }
    }

    /// Keeps a replaced session decrypting until `keep_previous` from now.
    fn retire(&mut self, peer: usize, session: Option<Session>, now: Duration) {
        let Some(session) = session else { return };
        let until = now + self.params.keep_previous;
        let p = &mut self.peers[peer];
        let evicted = if p.retired.len() >= RETIRED_MAX {
            Some(p.retired.remove(0).0)
        } else {
            None
        };
        p.retired.push((session, until));
        self.forget(evicted);
    }

    /// Installs a new sending session for `peer`, keeping the old one for what is in flight.
    fn install(&mut self, peer: usize, session: Session, now: Duration) {
        let wall = self.wall_at_zero + now;
        let p = &mut self.peers[peer];
        p.handshake_soon = false;
        p.stats.handshakes += 1;
        p.stats.last_handshake_unix_ns = u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX);
        let old = p.current.replace(session);
        if old.is_some() {
            p.stats.rekeys += 1;
            self.counters.rekeys += 1;
        }
        self.retire(peer, old, now);
        self.counters.handshakes_completed += 1;
    }

    /// Encapsulates one inner packet for `peer` into `out` (at least `len + OVERHEAD` long),
    /// compressed and sealed now: [`Tunnel::encapsulate_deferred`], then
    /// [`Tunnel::seal_alone`]. A burst's packets go through [`Tunnel::seal_burst`] instead.
    pub fn encapsulate(
        &mut self,
        engine: &mut dyn Engine,
        peer: usize,
        inner: &[u8],
        out: &mut [u8],
        now: Duration,
    ) -> Action {
        let (action, deferred) = self.encapsulate_deferred(peer, inner, out, now);
        let Some(d) = deferred else { return action };
        match self.seal_alone(engine, d, out) {
            Some(len) => Action::Send { peer, len },
            None => {
                // Never sent: take it off the wire count again.
                self.counters.tx_messages -= 1;
                self.counters.tx_wire_bytes = self
                    .counters
                    .tx_wire_bytes
                    .saturating_sub((DATA_HEADER_LEN + inner.len() + TAG_LEN) as u64);
                self.drop_counted(DropReason::TooBig)
            }
        }
    }

    /// Writes the message for one inner packet to `peer` into `out`: the header (with the
    /// next counter of the sending session) and the payload as is, in plaintext; what its
    /// compression and seal need comes back, for [`Burst::push_seal`] (then
    /// [`Tunnel::seal_burst`] does the whole burst in one engine batch each) or
    /// [`Tunnel::seal_alone`]. `out` must not leave the process before it is sealed (the
    /// gateway's `TxBatch` enforces this). Without a usable session the packet is staged for
    /// the handshake (or dropped when the stage is full), with no token.
    pub fn encapsulate_deferred(
        &mut self,
        peer: usize,
        inner: &[u8],
        out: &mut [u8],
        now: Duration,
    ) -> (Action, Option<DeferredSeal>) {
        let action = |a: Action| (a, None);
        if inner.len() > MAX_INNER || out.len() < inner.len() + OVERHEAD {
            self.counters.too_big += 1;
            return action(Action::Dropped(DropReason::TooBig));
        }
        let Some(p) = self.peers.get_mut(peer) else {
            return action(Action::Dropped(DropReason::NoSession));
        };
        let usable = |s: &Session| {
            now.saturating_sub(s.born) < self.params.reject_after
                && s.send_counter < REJECT_AFTER_MESSAGES
        };
        let slot = if p.current.as_ref().is_some_and(usable) {
            Slot::Current
        } else if p.next.as_ref().is_some_and(usable) {
            Slot::Next
        } else {
            // Stage it for when the handshake (started by `tick`) completes.
            return action(match p.spare.pop() {
                Some(mut buf) => {
                    buf.clear();
                    buf.extend_from_slice(inner);
                    p.staged.push_back(buf);
                    Action::Staged
                }
                None => {
                    self.counters.no_session += 1;
                    Action::Dropped(DropReason::NoSession)
                }
            });
        };
        let gate = if p.spec.compress { flow_gate(inner) } else { 0 };
        let compress = p.spec.compress && !inner.is_empty() && {
            let admitted = p.gates[gate].admit(now);
            self.counters.compress_skipped += u64::from(!admitted);
            admitted
        };
        out[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(inner);
        let p = &mut self.peers[peer];
        let Some(s) = p.slot_mut(slot) else {
            return action(Action::Dropped(DropReason::NoSession));
        };
        let counter = s.send_counter;
        s.send_counter += 1;
        let header = DataHeader {
            flags: 0,
            receiver: s.remote,
            counter,
        };
        let Ok(hdr) = <&mut [u8; DATA_HEADER_LEN]>::try_from(&mut out[..DATA_HEADER_LEN]) else {
            return action(Action::Dropped(DropReason::TooBig));
        };
        header.emit(hdr);
        let deferred = DeferredSeal {
            peer,
            gate,
            key: std::sync::Arc::clone(&s.send),
            nonce: dwcp_kernels::nonce(counter),
            len: inner.len(),
            compress,
        };
        p.last_sent = now;
        if !inner.is_empty() {
            p.stats.tx_packets += 1;
            p.stats.tx_bytes += inner.len() as u64;
        }
        let len = DATA_HEADER_LEN + inner.len() + TAG_LEN;
        self.counters.tx_messages += 1;
        self.counters.tx_inner_bytes += inner.len() as u64;
        self.counters.tx_wire_bytes += len as u64;
        (Action::Send { peer, len }, Some(deferred))
    }

    /// Records how compressing a payload for `peer` in the flow of `gate` went: `before`
    /// bytes, `saved` fewer after (0: not smaller, sent as it was). Counts it, and tells the
    /// flow's [`CompressGate`].
    fn record_compression(&mut self, peer: usize, gate: usize, before: usize, saved: usize) {
        if let Some(g) = self.peers.get_mut(peer).and_then(|p| p.gates.get_mut(gate)) {
            g.record(saved > 0);
        }
        let c = &mut self.counters;
        if saved == 0 {
            c.compress_no_gain += 1;
            return;
        }
        c.compressed += 1;
        c.compress_in += before as u64;
        c.compress_out += (before - saved) as u64;
    }

    /// Records how compressing a deferred message's payload went (`before` bytes, `saved`
    /// fewer after: what [`DeferredSeal::apply_compressed`] returned): counts it, tells its
    /// flow's [`CompressGate`], and takes the saving off the wire bytes counted uncompressed
    /// when it was encapsulated.
    fn record_deferred_compression(&mut self, d: &DeferredSeal, before: usize, saved: usize) {
        self.record_compression(d.peer, d.gate, before, saved);
        let c = &mut self.counters;
        c.tx_wire_bytes = c.tx_wire_bytes.saturating_sub(saved as u64);
    }

    /// Writes an authenticated control record for `peer` into `out`, sealed now on the
    /// session it sends on (a message of type 4 with [`FLAG_CONTROL`]: same key, counter and
    /// replay window as data, so a record cannot be forged, altered or replayed). Without a
    /// usable session nothing is sent ([`Action::Dropped`] with `NoSession`, not staged).
    pub fn send_control(
        &mut self,
        engine: &mut dyn Engine,
        peer: usize,
        record: &[u8],
        out: &mut [u8],
        now: Duration,
    ) -> Action {
        let len = DATA_HEADER_LEN + record.len() + TAG_LEN;
        if record.is_empty() || out.len() < len || record.len() > MAX_INNER {
            return self.drop_counted(DropReason::TooBig);
        }
        let reject_after = self.params.reject_after;
        let Some(p) = self.peers.get_mut(peer) else {
            return self.drop_counted(DropReason::NoSession);
        };
        let usable = |s: &Session| {
            now.saturating_sub(s.born) < reject_after && s.send_counter < REJECT_AFTER_MESSAGES
        };
        let slot = if p.current.as_ref().is_some_and(usable) {
            Slot::Current
        } else if p.next.as_ref().is_some_and(usable) {
            Slot::Next
        } else {
            return self.drop_counted(DropReason::NoSession);
        };
        let Some(s) = p.slot_mut(slot) else {
            return self.drop_counted(DropReason::NoSession);
        };
        let counter = s.send_counter;
        s.send_counter += 1;
        let header = DataHeader {
            flags: FLAG_CONTROL,
            receiver: s.remote,
            counter,
        };
        let Ok(hdr) = <&mut [u8; DATA_HEADER_LEN]>::try_from(&mut out[..DATA_HEADER_LEN]) else {
            return self.drop_counted(DropReason::TooBig);
        };
        header.emit(hdr);
        out[DATA_HEADER_LEN..DATA_HEADER_LEN + record.len()].copy_from_slice(record);
        let d = DeferredSeal {
            peer,
            gate: 0,
            key: std::sync::Arc::clone(&s.send),
            nonce: dwcp_kernels::nonce(counter),
            len: record.len(),
            compress: false,
        };
        p.last_sent = now;
        match self.seal_alone(engine, d, out) {
            Some(len) => {
                self.counters.control_sent += 1;
                self.counters.tx_wire_bytes += len as u64;
                Action::Send { peer, len }
            }
            None => self.drop_counted(DropReason::TooBig),
        }
    }

    /// Sends the next packet staged for `peer`, if any and if a session exists.
    pub fn flush_staged(
        &mut self,
        engine: &mut dyn Engine,
        peer: usize,
        out: &mut [u8],
        now: Duration,
    ) -> Option<Action> {
        if !self.has_session(peer) {
            return None;
        }
        let buf = self.peers.get_mut(peer)?.staged.pop_front()?;
        let action = self.encapsulate(engine, peer, &buf, out, now);
        self.peers[peer].spare.push(buf);
        Some(action)
    }

    fn drop_counted(&mut self, reason: DropReason) -> Action {
        let c = &mut self.counters;
        match reason {
            DropReason::Malformed => c.malformed += 1,
            DropReason::AuthFailed => c.auth_failed += 1,
            DropReason::Replayed => c.replayed += 1,
            DropReason::UnknownIndex => c.unknown_index += 1,
            DropReason::NoSession => c.no_session += 1,
            DropReason::TooBig => c.too_big += 1,
        }
        Action::Dropped(reason)
    }

    /// Processes one received datagram from `from`. Handshake answers and inner packets go
    /// to `out` (at least `MAX_INNER + 64` long).
    pub fn receive(
        &mut self,
        engine: &mut dyn Engine,
        datagram: &[u8],
        from: Option<SocketAddrV4>,
        out: &mut [u8],
        now: Duration,
    ) -> Action {
        match self.receive_deferred(datagram, from, out, now) {
            (_, Some(d)) => {
                let ok = match self.open_job(&d, out) {
                    Some(job) => {
                        let mut job = [job];
                        engine.open(&mut job);
                        job[0].ok
                    }
                    None => false,
                };
                self.finish_open(engine, &d, ok, out, now)
            }
            (action, None) => action,
        }
    }

    /// As [`Tunnel::receive`], but a data message is not opened: its body (ciphertext and
    /// tag) is copied to the start of `out` and a [`DeferredOpen`] comes back, so the caller
    /// can open a whole burst in one engine batch, then call [`Tunnel::finish_open`] for each,
    /// in order. Anything else is handled at once (the second value is `None`).
    #[inline]
    pub fn receive_deferred(
        &mut self,
        datagram: &[u8],
        from: Option<SocketAddrV4>,
        out: &mut [u8],
        now: Duration,
    ) -> (Action, Option<DeferredOpen>) {
        match datagram.first() {
            Some(&wire::TYPE_DATA) => match self.begin_data(datagram, from, out) {
                Ok(d) => (Action::None, Some(d)),
                Err(reason) => (self.drop_counted(reason), None),
            },
            Some(&wire::TYPE_INIT) => (self.receive_init(datagram, from, out, now), None),
            Some(&wire::TYPE_RESPONSE) => (self.receive_response(datagram, from, now), None),
            _ => (self.drop_counted(DropReason::Malformed), None),
        }
    }

    fn receive_init(
        &mut self,
        datagram: &[u8],
        from: Option<SocketAddrV4>,
        out: &mut [u8],
        now: Duration,
    ) -> Action {
        let Ok(init) = Init::parse(datagram) else {
            return self.drop_counted(DropReason::Malformed);
        };
        let peers = &self.peers;
        let accepted = handshake::respond(&self.private, init.noise, |k| {
            peers
                .iter()
                .position(|p| &p.spec.public == k)
                .map(|i| (i, peers[i].spec.psk, peers[i].last_timestamp))
        });
        let acc = match accepted {
            Ok(a) => a,
            Err(_) => return self.drop_counted(DropReason::AuthFailed),
        };
        let local = self.new_index(acc.peer);
        let session = Session::new(
            &acc.keys,
            local,
            init.sender,
            self.params.replay_window,
            now,
        );
        let Ok(len) = Response::emit(local, init.sender, &acc.response, out) else {
            self.by_index.remove(&local);
            return self.drop_counted(DropReason::TooBig);
        };
        let p = &mut self.peers[acc.peer];
        p.last_timestamp = acc.timestamp;
        if from.is_some() {
            p.endpoint = from;
        }
        let replaced = p.next.replace(session);
        self.retire(acc.peer, replaced, now);
        self.counters.tx_wire_bytes += len as u64;
        Action::Send {
            peer: acc.peer,
            len,
        }
    }

    fn receive_response(
        &mut self,
        datagram: &[u8],
        from: Option<SocketAddrV4>,
        now: Duration,
    ) -> Action {
        let Ok(resp) = Response::parse(datagram) else {
            return self.drop_counted(DropReason::Malformed);
        };
        let Some(&peer) = self.by_index.get(&resp.receiver) else {
            return self.drop_counted(DropReason::UnknownIndex);
        };
        let p = &mut self.peers[peer];
        let Some((pending, index, sent_at)) = p.pending.take_if(|(_, i, _)| *i == resp.receiver)
        else {
            return self.drop_counted(DropReason::UnknownIndex);
        };
        match pending.finish(resp.noise) {
            Ok(keys) => {
                if from.is_some() {
                    p.endpoint = from;
                }
                let session =
                    Session::new(&keys, index, resp.sender, self.params.replay_window, now);
                let rtt = u64::try_from(now.saturating_sub(sent_at).as_nanos()).unwrap_or(u64::MAX);
                self.counters.handshake_rtt_ns_max = self.counters.handshake_rtt_ns_max.max(rtt);
                self.install(peer, session, now);
                Action::Established { peer }
            }
            Err(_) => {
                self.by_index.remove(&index);
                self.drop_counted(DropReason::AuthFailed)
            }
        }
    }

    /// Checks a data message against the session it names and its replay window (without
    /// accepting its counter yet) and copies its body to `out`.
    #[inline]
    fn begin_data(
        &mut self,
        datagram: &[u8],
        from: Option<SocketAddrV4>,
        out: &mut [u8],
    ) -> Result<DeferredOpen, DropReason> {
        let header = DataHeader::parse(datagram).map_err(|_| DropReason::Malformed)?;
        if datagram.len() < OVERHEAD || datagram.len() - DATA_HEADER_LEN > out.len() {
            return Err(DropReason::Malformed);
        }
        let (peer, s) = self
            .session_for(header.receiver)
            .ok_or(DropReason::UnknownIndex)?;
        s.replay
            .check(header.counter)
            .map_err(|_| DropReason::Replayed)?;
        let body = &datagram[DATA_HEADER_LEN..];
        out[..body.len()].copy_from_slice(body);
        let mut aad = [0u8; DATA_HEADER_LEN];
        aad.copy_from_slice(&datagram[..DATA_HEADER_LEN]);
        Ok(DeferredOpen {
            aad,
            header,
            peer,
            from,
            body_len: body.len(),
        })
    }

    /// The open job for a deferred message whose body is at the start of `buf`, with the key
    /// of the session it names now; `None` when that session has gone since (then
    /// [`Tunnel::finish_open`] drops the message as unknown).
    #[inline]
    fn open_job<'a>(&'a self, d: &'a DeferredOpen, buf: &'a mut [u8]) -> Option<OpenJob<'a>> {
        let p = self.peers.get(d.peer)?;
        let s = p.slot(p.find(d.header.receiver)?)?;
        Some(OpenJob {
            key: &s.recv,
            nonce: dwcp_kernels::nonce(d.header.counter),
            aad: &d.aad,
            buf,
            len: d.body_len,
            ok: false,
        })
    }

    /// The peer and session a receiver index names.
    #[inline]
    fn session_for(&self, receiver: u32) -> Option<(usize, &Session)> {
        let &peer = self.by_index.get(&receiver)?;
        let p = self.peers.get(peer)?;
        p.slot(p.find(receiver)?).map(|s| (peer, s))
    }

    /// Finishes a deferred data message after its open job ran (`ok`: the tag verified; its
    /// plaintext is at the start of `out`): [`Tunnel::accept_open`], then decompression when
    /// the payload is LZ4, then [`Tunnel::delivered`]. Returns [`Action::Deliver`] with the
    /// inner packet at the start of `out`, [`Action::None`] for a keepalive, or a counted drop.
    fn finish_open(
        &mut self,
        engine: &mut dyn Engine,
        d: &DeferredOpen,
        ok: bool,
        out: &mut [u8],
        now: Duration,
    ) -> Action {
        let a = match self.accept_open(d, ok, now) {
            Ok(a) => a,
            Err(action) => return action,
        };
        if a.control && !a.compressed {
            self.counters.control_received += 1;
            return Action::Control {
                peer: a.peer,
                len: a.len,
            };
        }
        if !a.compressed {
            return self.delivered(a.peer, a.len);
        }
        if a.len > self.scratch.len() {
            return self.undecodable();
        }
        // Decompress from a copy of the (smaller) compressed payload back into `out`.
        self.scratch[..a.len].copy_from_slice(&out[..a.len]);
        let cap = MAX_INNER.min(out.len());
        let mut job = [DecompressJob {
            src: &self.scratch[..a.len],
            dst: &mut out[..cap],
            out_len: None,
        }];
        engine.decompress(&mut job);
        match job[0].out_len {
            Some(n) => self.delivered(a.peer, n),
            None => self.undecodable(),
        }
    }

    /// Accepts a deferred data message after its open job ran (`ok`: the tag verified):
    /// checks its session is still there, takes its counter into the replay window, learns
    /// the sender's endpoint and confirms a responder session. Its plaintext payload (LZ4 when
    /// the answer says so) is then at the start of the caller's buffer. A drop is counted and
    /// returned as the error.
    fn accept_open(
        &mut self,
        d: &DeferredOpen,
        ok: bool,
        now: Duration,
    ) -> Result<Accepted, Action> {
        // The session may have gone since the message was checked (a reload, an expiry): then
        // it is dropped as unknown. Nothing between the open and here makes sessions, so a
        // session found here is the one whose key opened it.
        let peer = d.peer;
        let Some(p) = self.peers.get_mut(peer) else {
            return Err(self.drop_counted(DropReason::UnknownIndex));
        };
        let Some(slot) = p.find(d.header.receiver) else {
            return Err(self.drop_counted(DropReason::UnknownIndex));
        };
        let Some(s) = p.slot_mut(slot) else {
            return Err(self.drop_counted(DropReason::UnknownIndex));
        };
        if !ok {
            return Err(self.drop_counted(DropReason::AuthFailed));
        }
        if s.replay.accept(d.header.counter).is_err() {
            return Err(self.drop_counted(DropReason::Replayed));
        }
        if d.from.is_some() {
            p.endpoint = d.from;
        }
        // The initiator uses the session it made with us: it is confirmed; send on it from now
        // on — unless ours is at least as new (both sides initiated at once: each then sends
        // on the session it initiated and receives on the other's).
        let newer = p
            .next
            .as_ref()
            .is_some_and(|n| p.current.as_ref().is_none_or(|c| n.born > c.born));
        if slot == Slot::Next
            && newer
            && let Some(next) = p.next.take()
        {
            self.install(peer, next, now);
        }
        Ok(Accepted {
            peer,
            len: d.body_len - TAG_LEN,
            compressed: d.header.flags & FLAG_LZ4 != 0,
            control: d.header.flags & FLAG_CONTROL != 0,
        })
    }

    /// An accepted message's inner packet, `len` bytes after decompression, is ready: counts
    /// it and says to deliver it ([`Action::None`] for a keepalive).
    fn delivered(&mut self, peer: usize, len: usize) -> Action {
        if len == 0 {
            return Action::None; // keepalive
        }
        if let Some(p) = self.peers.get_mut(peer) {
            p.stats.rx_packets += 1;
            p.stats.rx_bytes += len as u64;
        }
        self.counters.rx_packets += 1;
        self.counters.rx_inner_bytes += len as u64;
        Action::Deliver { peer, len }
    }

    /// An accepted message's LZ4 payload did not decompress: authentic, so the sender is
    /// broken; counted as malformed.
    fn undecodable(&mut self) -> Action {
        self.drop_counted(DropReason::Malformed)
    }

    /// Runs the timers: handshakes (first, retry, rekey), keepalives, expiry. Returns one
    /// action; call again until it returns [`Action::None`].
    pub fn tick(&mut self, engine: &mut dyn Engine, out: &mut [u8], now: Duration) -> Action {
        for peer in 0..self.peers.len() {
            // Expire the previous session and sessions past their hard limit.
            while let Some(i) = self.peers[peer]
                .retired
                .iter()
                .position(|(_, until)| now >= *until)
            {
                let (s, _) = self.peers[peer].retired.remove(i);
                self.forget(Some(s));
            }
            let reject_after = self.params.reject_after;
            if self.peers[peer]
                .current
                .as_ref()
                .is_some_and(|s| now.saturating_sub(s.born) >= reject_after)
            {
                let s = self.peers[peer].current.take();
                self.forget(s);
            }
            let p = &self.peers[peer];
            let wants_session = !p.staged.is_empty() || p.current.is_some() || p.handshake_soon;
            let needs_rekey = p.handshake_soon
                || match &p.current {
                    None => p.next.is_none(),
                    Some(s) => {
                        now.saturating_sub(s.born) >= self.params.rekey_after
                            || s.send_counter >= self.params.rekey_after_messages
                    }
                };
            let pending_fresh = p
                .pending
                .as_ref()
                .is_some_and(|(_, _, at)| now.saturating_sub(*at) < self.params.handshake_retry);
            if wants_session && needs_rekey && !pending_fresh && p.endpoint.is_some() {
                return self.initiate(peer, out, now);
            }
            if let Some(ka) = self.params.keepalive
                && p.current.is_some()
                && now.saturating_sub(p.last_sent) >= ka
            {
                let action = self.encapsulate(engine, peer, &[], out, now);
                if matches!(action, Action::Send { .. }) {
                    self.counters.keepalives_sent += 1;
                    return action;
                }
            }
        }
        Action::None
    }

    /// Asks for a new handshake with `peer` at the next [`Tunnel::tick`], resent as any
    /// unanswered initiation is until a new session is in place (its RDMA queue pair broke: a
    /// peer that restarted forgot the session, and a new one carries new queue-pair details).
    /// The current session keeps working meanwhile.
    pub fn handshake_soon(&mut self, peer: usize) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.handshake_soon = true;
        }
    }

    fn initiate(&mut self, peer: usize, out: &mut [u8], now: Duration) -> Action {
        let wall = self.wall_at_zero + now;
        let spec = self.peers[peer].spec.clone();
        let Ok((pending, noise)) = handshake::initiate(
            &self.private,
            &spec.public,
            &spec.psk,
            handshake::timestamp(wall.as_nanos()),
        ) else {
            return Action::None;
        };
        if let Some((_, old, _)) = self.peers[peer].pending.take() {
            self.by_index.remove(&old);
        }
        let index = self.new_index(peer);
        let Ok(len) = Init::emit(index, &noise, out) else {
            self.by_index.remove(&index);
            return Action::None;
        };
        self.peers[peer].pending = Some((pending, index, now));
        self.counters.handshakes_initiated += 1;
        self.counters.tx_wire_bytes += len as u64;
        Action::Send { peer, len }
    }
}

#[cfg(test)]
mod tests {
    use dwcp_kernels::cpu::CpuEngine;

    use super::*;
    use crate::io::PacketPort;
    use crate::io::memory::{self, MemoryPort};

    fn keypair() -> ([u8; 32], [u8; 32]) {
        let p = dwcp_provisioning::types::PrivateKey::generate().unwrap();
        (*p.expose_secret(), p.public_key().0)
    }

    /// Two tunnels A and B wired back to back, with a clock.
    struct Link {
        a: Tunnel,
        b: Tunnel,
        now: Duration,
        engine: CpuEngine,
        /// The wire: a `memory` backend link (A's end, B's end).
        a_port: MemoryPort,
        b_port: MemoryPort,
        got_a: Vec<Vec<u8>>,
        got_b: Vec<Vec<u8>>,
        /// Control records received: (at B, bytes).
        controls: Vec<(bool, Vec<u8>)>,
    }

    impl Link {
        fn new(params: Params, compress: bool) -> Self {
            let (pa, pb) = memory::pair(1024, [2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
            let (ap, apub) = keypair();
            let (bp, bpub) = keypair();
            let psk = [9u8; 32];
            let ep: SocketAddrV4 = "192.0.2.1:51900".parse().unwrap();
            let spec = |public| PeerSpec {
                public,
                psk,
                endpoint: Some(ep),
                compress,
            };
            Self {
                a: Tunnel::new(
                    0,
                    ap,
                    params,
                    Duration::from_secs(1_000_000),
                    vec![spec(bpub)],
                ),
                b: Tunnel::new(
                    1,
                    bp,
                    params,
                    Duration::from_secs(1_000_000),
                    vec![spec(apub)],
                ),
                now: Duration::ZERO,
                engine: CpuEngine,
                a_port: pa,
                b_port: pb,
                got_a: Vec::new(),
                got_b: Vec::new(),
                controls: Vec::new(),
            }
        }

        fn handle(&mut self, to_b: bool, action: Action, out: &[u8]) {
            match action {
                Action::Send { len, .. } => self.put(!to_b, &out[..len]),
                Action::Deliver { len, .. } => {
                    if to_b {
                        self.got_b.push(out[..len].to_vec())
                    } else {
                        self.got_a.push(out[..len].to_vec())
                    }
                }
                Action::Established { peer } => {
                    let mut buf = vec![0u8; MAX_INNER + 64];
                    loop {
                        let t = if to_b { &mut self.b } else { &mut self.a };
                        let Some(a) = t.flush_staged(&mut self.engine, peer, &mut buf, self.now)
                        else {
                            break;
                        };
                        if let Action::Send { len, .. } = a {
                            self.put(!to_b, &buf[..len]);
                        }
                    }
                }
                Action::Control { len, .. } => self.controls.push((to_b, out[..len].to_vec())),
                Action::None | Action::Staged => {}
                Action::Dropped(r) => {
                    panic!("unexpected drop {r:?} at {}", if to_b { "B" } else { "A" })
                }
            }
        }

        /// `to_b`: the tunnel the action came from is B's side if true.
        fn send(&mut self, from_a: bool, inner: &[u8]) {
            let mut out = vec![0u8; MAX_INNER + 64];
            let t = if from_a { &mut self.a } else { &mut self.b };
            let action = t.encapsulate(&mut self.engine, 0, inner, &mut out, self.now);
            match action {
                Action::Send { len, .. } => self.put(from_a, &out[..len]),
                other => self.handle(!from_a, other, &out),
            }
        }

        /// Sends a datagram over the memory link (`to_b`: from A's end).
        fn put(&mut self, to_b: bool, bytes: &[u8]) {
            let port = if to_b {
                &mut self.a_port
            } else {
                &mut self.b_port
            };
            assert!(port.tx(bytes), "memory link full");
        }

        /// The next datagram, whichever side it is for.
        fn take(&mut self) -> Option<(bool, Vec<u8>)> {
            let mut got = None;
            if self
                .b_port
                .rx_burst(1, &mut |f| got = Some((true, f.to_vec())))
                == 0
            {
                self.a_port
                    .rx_burst(1, &mut |f| got = Some((false, f.to_vec())));
            }
            got
        }

        fn pump(&mut self) {
            let mut out = vec![0u8; MAX_INNER + 64];
            for _ in 0..10_000 {
                for side_a in [true, false] {
                    loop {
                        let t = if side_a { &mut self.a } else { &mut self.b };
                        let action = t.tick(&mut self.engine, &mut out, self.now);
                        if action == Action::None {
                            break;
                        }
                        if let Action::Send { len, .. } = action {
                            self.put(side_a, &out[..len]);
                        }
                    }
                }
                let Some((to_b, bytes)) = self.take() else {
                    return;
                };
                let t = if to_b { &mut self.b } else { &mut self.a };
                let action = t.receive(&mut self.engine, &bytes, None, &mut out, self.now);
                self.handle(to_b, action, &out);
            }
            panic!("link did not settle");
        }
    }

    fn packet(i: usize, size: usize) -> Vec<u8> {
        let mut p = format!("packet {i:08} ").into_bytes();
        p.resize(size, u8::try_from(i % 200).unwrap());
        p
    }

    #[test]
    fn first_packets_wait_for_the_handshake_then_flow() {
        let mut l = Link::new(Params::default(), false);
        for i in 0..5 {
            l.send(true, &packet(i, 100));
        }
        l.pump();
        assert_eq!(l.got_b, (0..5).map(|i| packet(i, 100)).collect::<Vec<_>>());
        assert_eq!(l.a.counters.handshakes_initiated, 1);
        assert_eq!(l.a.counters.handshakes_completed, 1);
        // B answers on the session A confirmed.
        l.send(false, &packet(99, 60));
        l.pump();
        assert_eq!(l.got_a, vec![packet(99, 60)]);
    }

    #[test]
    fn rekey_under_traffic_loses_nothing() {
        let params = Params {
            rekey_after_messages: 50,
            ..Params::default()
        };
        let mut l = Link::new(params, true);
        let mut sent_a = Vec::new();
        let mut sent_b = Vec::new();
        for i in 0..2000 {
            let p = packet(i, 40 + i % 1400);
            l.send(true, &p);
            sent_a.push(p);
            if i % 3 == 0 {
                let q = packet(100_000 + i, 64);
                l.send(false, &q);
                sent_b.push(q);
            }
            // Let a few datagrams stay in flight across handshakes.
            if i % 7 == 0 {
                l.pump();
            }
            l.now += Duration::from_millis(1);
        }
        l.pump();
        assert_eq!(l.got_b.len(), sent_a.len());
        assert!(l.got_b == sent_a, "A→B stream differs");
        assert!(l.got_a == sent_b, "B→A stream differs");
        let rekeys = l.a.counters.rekeys + l.b.counters.rekeys;
        assert!(rekeys >= 20, "only {rekeys} rekeys");
        for c in [l.a.counters, l.b.counters] {
            assert_eq!(
                (
                    c.auth_failed,
                    c.replayed,
                    c.unknown_index,
                    c.malformed,
                    c.no_session
                ),
                (0, 0, 0, 0, 0),
                "{c:?}"
            );
        }
        assert!(l.a.counters.compressed > 0);
    }

    #[test]
    fn the_compression_gate_backs_off_doubles_and_ends_on_a_hit() {
        let mut g = CompressGate::default();
        let tried = |g: &mut CompressGate, n: usize, shrink: bool| -> usize {
            (0..n)
                .filter(|_| {
                    let admitted = g.admit(Duration::ZERO);
                    if admitted {
                        g.record(shrink);
                    }
                    admitted
                })
                .count()
        };
        // 15 misses in a row: still trying; a hit forgets them.
        assert_eq!(tried(&mut g, 15, false), 15);
        assert_eq!(tried(&mut g, 1, true), 1);
        assert_eq!(g, CompressGate::default());
        // 16 misses: the next 16 are not tried, then one is; missing, 32 are skipped, …
        assert_eq!(tried(&mut g, 16, false), 16);
        assert_eq!(tried(&mut g, 16, false), 0);
        assert_eq!(tried(&mut g, 1 + 32, false), 1);
        assert_eq!(tried(&mut g, 1 + 64, false), 1);
        // … 128, 256, 512 (3 probes in the first 1 + 128 + 1 + 256 + 1 + 512 = 899), then
        // 1024 at most: one probe per 1,025 over the remaining 9,101.
        assert_eq!(tried(&mut g, 10_000, false), 3 + 9101_usize.div_ceil(1025));
        assert_eq!(g.gap, GATE_GAP_MAX);
        // Results decided before the back-off (a burst's) do not stretch it.
        let skip = g.skip;
        g.record(false);
        assert_eq!(g.skip, skip);
        // Slow traffic is tried again 100 ms after the payload that began the pause, however
        // many payloads are left to skip.
        assert!(g.skip > 2);
        assert!(!g.admit(Duration::from_millis(99)));
        assert!(g.admit(Duration::from_millis(100)));
        g.record(false);
        assert_eq!((g.gap, g.skip), (GATE_GAP_MAX, GATE_GAP_MAX));
        assert!(!g.admit(Duration::from_millis(150)));
        assert!(g.admit(Duration::from_millis(200)));
        // A probe that shrinks ends it.
        g.record(true);
        assert_eq!(
            g,
            CompressGate {
                last: Duration::from_millis(200),
                ..CompressGate::default()
            }
        );
        let t = Duration::from_millis(200);
        assert_eq!((0..10).filter(|_| g.admit(t)).count(), 10);
    }

    #[test]
    fn incompressible_payloads_stop_being_compressed_and_compressible_ones_resume() {
        let mut l = Link::new(Params::default(), true);
        l.send(true, &packet(0, 100));
        l.pump();
        let c0 = l.a.counters;
        let mut rng = dwcp_kernels::samples::Rng(7);
        for _ in 0..16 + 16 {
            let mut random = vec![0u8; 1400];
            rng.fill(&mut random);
            l.send(true, &udp(5000, &random));
        }
        let c = l.a.counters;
        assert_eq!(c.compress_no_gain - c0.compress_no_gain, 16);
        assert_eq!(c.compress_skipped - c0.compress_skipped, 16);
        // The next is tried again: compressible, it shrinks, and compression is back.
        for i in 0..4 {
            l.send(true, &udp(5000, &packet(i, 1400)));
        }
        let c = l.a.counters;
        assert_eq!(c.compressed - c0.compressed, 4);
        assert_eq!(c.compress_skipped - c0.compress_skipped, 16);
        l.pump();
        // Everything arrived, skipped or not.
        assert_eq!(l.got_b.len(), 1 + 32 + 4);
    }

    /// An IPv4/UDP packet 10.1.0.2:`port` → 10.2.0.2:9 carrying `body`.
    fn udp(port: u16, body: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 1, 0, 2, 10, 2, 0, 2,
        ];
        p.extend_from_slice(&port.to_be_bytes());
        p.extend_from_slice(&[0, 9, 0, 0, 0, 0]);
        p.extend_from_slice(body);
        let len = u16::try_from(p.len()).unwrap();
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p
    }

    #[test]
    fn flows_pick_their_gate_by_addresses_protocol_and_ports() {
        let a = udp(5000, b"one");
        assert_eq!(
            flow_gate(&a),
            flow_gate(&udp(5000, b"other body, same flow"))
        );
        // Ports spread flows over the gates.
        let gates: std::collections::BTreeSet<usize> =
            (0..64).map(|p| flow_gate(&udp(5000 + p, b""))).collect();
        assert!(gates.len() > 32, "64 flows fell on {} gates", gates.len());
        assert!(gates.iter().all(|&g| g < FLOW_GATES));
        // A fragment goes by addresses and protocol only, whatever its first bytes.
        let mut frag = a.clone();
        frag[6] = 0x20;
        let mut later = udp(6000, b"one");
        later[7] = 0x10;
        assert_eq!(flow_gate(&frag), flow_gate(&later));
        // Not IPv4, or too short for its addresses: gate 0; nothing read past the end.
        assert_eq!(flow_gate(&packet(3, 100)), 0);
        assert_eq!(flow_gate(&a[..19]), 0);
        assert_eq!(flow_gate(&[]), 0);
        let mut short = a[..22].to_vec();
        short[0] = 0x4f;
        assert!(flow_gate(&short) < FLOW_GATES);
    }

    /// The demo's mixed load (`dwcp_cli::demo::MIXED_STREAMS`: TCP from
    /// 10.1.0.2 ports 40001 and 40002 to 10.2.0.2 ports 5201 and 5202) is two flows with gates
    /// of their own, so its report shows one backing off and the other compressed.
    #[test]
    fn the_demo_mixed_streams_have_gates_of_their_own() {
        let tcp = |sport: u16, dport: u16| {
            let mut p = udp(sport, b"");
            p[9] = 6;
            p[22..24].copy_from_slice(&dport.to_be_bytes());
            p
        };
        assert_ne!(flow_gate(&tcp(40001, 5201)), flow_gate(&tcp(40002, 5202)));
    }

    /// One flow's incompressible payloads back off without a compressible flow beside it,
    /// interleaved one for one: the compressible one is compressed every time, the other
    /// stops being tried.
    #[test]
    fn an_incompressible_flow_backs_off_alone() {
        let (text, random) = (5001, 5002);
        assert_ne!(flow_gate(&udp(text, b"")), flow_gate(&udp(random, b"")));
        let mut l = Link::new(Params::default(), true);
        l.send(true, &packet(0, 100));
        l.pump();
        let c0 = l.a.counters;
        let mut rng = dwcp_kernels::samples::Rng(9);
        for i in 0..200 {
            let mut body = vec![0u8; 1000];
            rng.fill(&mut body);
            l.send(true, &udp(random, &body));
            l.send(true, &udp(text, &packet(i, 1000)));
        }
        let c = l.a.counters;
        assert_eq!(
            c.compressed - c0.compressed,
            200,
            "every text payload compressed"
        );
        let skipped = c.compress_skipped - c0.compress_skipped;
        assert!(skipped > 150, "only {skipped} random payloads not tried");
        assert_eq!(c.compress_no_gain - c0.compress_no_gain + skipped, 200);
        l.pump();
        assert_eq!(l.got_b.len(), 1 + 400);
    }

    fn established() -> (Link, Vec<u8>) {
        let mut l = Link::new(Params::default(), false);
        l.send(true, &packet(0, 100));
        l.pump();
        let mut out = vec![0u8; MAX_INNER + 64];
        let Action::Send { len, .. } =
            l.a.encapsulate(&mut l.engine, 0, &packet(1, 300), &mut out, l.now)
        else {
            panic!()
        };
        (l, out[..len].to_vec())
    }

    #[test]
    fn tampered_replayed_and_unknown_are_dropped_and_counted() {
        let (mut l, msg) = established();
        let mut out = vec![0u8; MAX_INNER + 64];
        let e = &mut l.engine;
        for (what, flip) in [
            ("reserved header byte", 2usize),
            ("receiver index", 5),
            ("counter", 12),
            ("ciphertext", 40),
            ("tag", msg.len() - 1),
        ] {
            let mut bad = msg.clone();
            bad[flip] ^= 0x40;
            let action = l.b.receive(e, &bad, None, &mut out, l.now);
            assert!(matches!(action, Action::Dropped(_)), "{what}: {action:?}");
        }
        assert_eq!(l.b.counters.malformed, 1);
        assert_eq!(l.b.counters.unknown_index, 1);
        assert_eq!(l.b.counters.auth_failed, 3);
        // The genuine message still gets through once, then is a replay.
        assert!(matches!(
            l.b.receive(e, &msg, None, &mut out, l.now),
            Action::Deliver { .. }
        ));
        assert_eq!(
            l.b.receive(e, &msg, None, &mut out, l.now),
            Action::Dropped(DropReason::Replayed)
        );
        assert_eq!(l.b.counters.replayed, 1);
        // Garbage and truncations never panic.
        for n in 0..msg.len() {
            let _ = l.b.receive(e, &msg[..n], None, &mut out, l.now);
        }
    }

    /// RDMA queue-pair details travel as control records on the session: the peer gets them
    /// as a control record (never as an inner packet); altered, replayed or sessionless ones
    /// are refused like any data message.
    #[test]
    fn control_records_are_authenticated_and_never_replayed() {
        let (mut l, _) = established();
        let mut out = vec![0u8; MAX_INNER + 64];
        let record = crate::rdma::QpRecord {
            kind: crate::rdma::RECORD_OFFER,
            worker: 0,
            mtu: 3,
            qpn: 0x11,
            psn: 0x2345,
            gid: [0xfe; 16],
            answers: 0,
        }
        .encode();
        let Action::Send { len, .. } = l.a.send_control(&mut l.engine, 0, &record, &mut out, l.now)
        else {
            panic!("no session to send on")
        };
        let msg = out[..len].to_vec();
        assert_eq!(msg[1], FLAG_CONTROL, "flags");
        let e = &mut l.engine;
        // Changing the QP number, or clearing the control flag (so that the record would be
        // taken for an inner packet), fails authentication.
        for (what, at, bit) in [("QP number", 16 + 7, 0x01), ("control flag", 1, 0x02)] {
            let mut bad = msg.clone();
            bad[at] ^= bit;
            let action = l.b.receive(e, &bad, None, &mut out, l.now);
            assert_eq!(action, Action::Dropped(DropReason::AuthFailed), "{what}");
        }
        let got = l.b.receive(e, &msg, None, &mut out, l.now);
        assert_eq!(
            got,
            Action::Control {
                peer: 0,
                len: record.len()
            }
        );
        assert_eq!(
            crate::rdma::QpRecord::decode(&out[..record.len()])
                .unwrap()
                .qpn,
            0x11
        );
        assert_eq!(
            l.b.receive(e, &msg, None, &mut out, l.now),
            Action::Dropped(DropReason::Replayed)
        );
        assert_eq!(l.b.counters.control_received, 1);
        assert_eq!(l.a.counters.control_sent, 1);
        assert_eq!(
            l.b.counters.rx_packets, 1,
            "only the first packet was delivered"
        );
        // No session with a peer: nothing is sent, nothing is staged.
        let mut fresh = Link::new(Params::default(), false);
        assert_eq!(
            fresh
                .a
                .send_control(&mut fresh.engine, 0, &record, &mut out, fresh.now),
            Action::Dropped(DropReason::NoSession)
        );
    }

    /// A deferred message whose session goes away before its open finishes (a reload that
    /// removed the peer) is dropped as unknown, not delivered on a stale key.
    #[test]
    fn a_burst_message_whose_frame_is_too_short_is_refused_alone() {
        let (mut l, _) = established();
        let mut frames = vec![
            vec![0u8; MAX_INNER + 64],
            vec![0u8; 8],
            vec![0u8; MAX_INNER + 64],
        ];
        let mut burst = Burst::with_capacity(3);
        for slot in [0, 2] {
            let (_, d) =
                l.a.encapsulate_deferred(0, &packet(slot, 200), &mut frames[slot], l.now);
            burst.push_seal(slot, d.expect("a session is up"));
        }
        // The middle message's token, its frame then cut to less than a header.
        let (_, d) =
            l.a.encapsulate_deferred(0, &packet(1, 200), &mut vec![0u8; 512], l.now);
        let mut queued = Burst::with_capacity(3);
        queued.push_seal(0, burst.seal_mut(0).1.clone());
        queued.push_seal(1, d.expect("a session is up"));
        queued.push_seal(2, burst.seal_mut(1).1.clone());
        assert_eq!(
            l.a.seal_burst(&mut l.engine, &mut queued, &mut frames, 0),
            1
        );
        let lens: Vec<Option<usize>> = queued.sealed().iter().map(|s| s.len).collect();
        assert_eq!(
            lens,
            [
                Some(DATA_HEADER_LEN + 200 + TAG_LEN),
                None,
                Some(DATA_HEADER_LEN + 200 + TAG_LEN)
            ]
        );
        // The messages around it were sealed right: B opens both.
        let mut out = vec![0u8; MAX_INNER + 64];
        for slot in [0, 2] {
            let msg = frames[slot][..DATA_HEADER_LEN + 200 + TAG_LEN].to_vec();
            let got = l.b.receive(&mut l.engine, &msg, None, &mut out, l.now);
            assert!(
                matches!(got, Action::Deliver { len: 200, .. }),
                "{slot}: {got:?}"
            );
        }
    }

    #[test]
    fn a_deferred_open_whose_session_went_away_is_dropped() {
        let (mut l, msg) = established();
        let mut out = vec![0u8; MAX_INNER + 64];
        let (action, d) = l.b.receive_deferred(&msg, None, &mut out, l.now);
        assert_eq!(action, Action::None);
        let d = d.expect("a data message is deferred");
        let mut job = [l.b.open_job(&d, &mut out).expect("its session is there")];
        l.engine.open(&mut job);
        assert!(job[0].ok, "it authenticates");
        l.b.set_peers(Vec::new());
        assert!(
            l.b.open_job(&d, &mut out).is_none(),
            "no key once the session is gone"
        );
        assert_eq!(
            l.b.finish_open(&mut l.engine, &d, true, &mut out, l.now),
            Action::Dropped(DropReason::UnknownIndex)
        );
        assert_eq!(l.b.counters.rx_packets, 1, "only the warm-up packet");
    }

    #[test]
    fn flipping_the_compression_flag_fails_authentication() {
        let (mut l, msg) = established();
        let mut out = vec![0u8; MAX_INNER + 64];
        let mut bad = msg.clone();
        bad[1] ^= FLAG_LZ4;
        assert_eq!(
            l.b.receive(&mut l.engine, &bad, None, &mut out, l.now),
            Action::Dropped(DropReason::AuthFailed)
        );
    }

    /// A broken RDMA queue pair asks for a handshake at once; a lost initiation is resent
    /// (a restarted peer may not be listening yet) until a new session is in place.
    #[test]
    fn a_handshake_asked_for_is_resent_until_a_session_is_made() {
        let (mut l, _) = established();
        let mut out = vec![0u8; MAX_INNER + 64];
        // Runs the timers; the initiations they send (keepalives are let through).
        let initiations = |l: &mut Link, out: &mut Vec<u8>| {
            let mut inits = Vec::new();
            loop {
                match l.a.tick(&mut l.engine, out, l.now) {
                    Action::Send { len, .. } if out[0] == wire::TYPE_INIT => {
                        inits.push(out[..len].to_vec())
                    }
                    Action::Send { len, .. } => l.put(true, &out[..len]),
                    _ => return inits,
                }
            }
        };
        let completed = l.a.counters.handshakes_completed;
        l.a.handshake_soon(0);
        assert_eq!(initiations(&mut l, &mut out).len(), 1);
        // Lost. Nothing more while it is fresh, then it is sent again.
        l.now += Duration::from_secs(1);
        assert!(initiations(&mut l, &mut out).is_empty());
        l.now += Duration::from_secs(5);
        let again = initiations(&mut l, &mut out);
        assert_eq!(again.len(), 1, "not resent");
        l.put(true, &again[0]);
        l.pump();
        assert_eq!(l.a.counters.handshakes_completed, completed + 1);
        // Done: no further initiation.
        l.now += Duration::from_secs(6);
        assert!(initiations(&mut l, &mut out).is_empty());
    }

    #[test]
    fn keepalive_after_silence_and_session_expiry() {
        let params = Params {
            keepalive: Some(Duration::from_secs(10)),
            ..Params::default()
        };
        let mut l = Link::new(params, false);
        l.send(true, &packet(0, 100));
        l.pump();
        l.now += Duration::from_secs(11);
        l.pump();
        assert!(l.a.counters.keepalives_sent >= 1);
        assert_eq!(l.got_b.len(), 1, "keepalives are not delivered as packets");
    }

    #[test]
    fn oversized_inner_packet_is_dropped() {
        let (mut l, _) = established();
        let mut out = vec![0u8; 20_000];
        let big = vec![0u8; MAX_INNER + 1];
        assert_eq!(
            l.a.encapsulate(&mut l.engine, 0, &big, &mut out, l.now),
            Action::Dropped(DropReason::TooBig)
        );
    }

    #[test]
    fn reload_keeps_unchanged_peers_sessions() {
        let (mut l, _) = established();
        let handshakes = l.a.counters.handshakes_initiated;
        // Add a peer in front of the existing one: indices shift, the session survives.
        let (_, other) = keypair();
        let mut specs = vec![PeerSpec {
            public: other,
            psk: [0; 32],
            endpoint: None,
            compress: false,
        }];
        let b_public = l.a.peers[0].spec.clone();
        specs.push(b_public.clone());
        l.a.set_peers(specs);
        assert_eq!(l.a.peer_count(), 2);
        assert!(l.a.has_session(1));
        let mut out = vec![0u8; MAX_INNER + 64];
        let Action::Send { len, .. } =
            l.a.encapsulate(&mut l.engine, 1, &packet(5, 80), &mut out, l.now)
        else {
            panic!()
        };
        assert!(matches!(
            l.b.receive(&mut l.engine, &out[..len], None, &mut out.clone(), l.now),
            Action::Deliver { .. }
        ));
        assert_eq!(
            l.a.counters.handshakes_initiated, handshakes,
            "no new handshake"
        );
        // B answers on its session; A maps it to the peer's new index.
        let mut out2 = vec![0u8; MAX_INNER + 64];
        let Action::Send { len, .. } =
            l.b.encapsulate(&mut l.engine, 0, &packet(6, 80), &mut out2, l.now)
        else {
            panic!()
        };
        assert!(matches!(
            l.a.receive(&mut l.engine, &out2[..len], None, &mut out, l.now),
            Action::Deliver { peer: 1, .. }
        ));
        // Removing the peer forgets its sessions.
        l.a.set_peers(vec![]);
        let Action::Send { len, .. } =
            l.b.encapsulate(&mut l.engine, 0, &packet(7, 80), &mut out2, l.now)
        else {
            panic!()
        };
        assert_eq!(
            l.a.receive(&mut l.engine, &out2[..len], None, &mut out, l.now),
            Action::Dropped(DropReason::UnknownIndex)
        );
    }

    #[test]
    fn worker_id_is_in_the_index() {
        let (l, msg) = established();
        let h = DataHeader::parse(&msg).unwrap();
        // A sends to B's session; B is worker 1.
        assert_eq!(Tunnel::owner_of(h.receiver), 1);
        drop(l);
    }
}
