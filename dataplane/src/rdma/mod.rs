//! The RDMA transport's rules, apart from the device (docs/protocol.md, "RDMA transport"):
//! the queue-pair details two gateways exchange as authenticated control records, what a
//! worker does with one, the adaptive inline threshold, and receive-buffer accounting.
//! [`link`] carries them out on a real device.

pub mod bench;
// The verbs' memory contracts (registered buffers the device reads and writes) are kept
// here, each `unsafe` with its SAFETY note, as the packet I/O backends do.
#[allow(unsafe_code)]
pub mod link;

use std::time::Duration;

/// Control record kind: an offer of a free queue pair.
pub const RECORD_OFFER: u8 = 0x10;
/// Control record kind: the answer to an offer, after connecting to it.
pub const RECORD_ACCEPT: u8 = 0x11;
/// A queue-pair record's length.
pub const RECORD_LEN: usize = 32;
/// How often a worker whose queue pair to a peer is free offers it again.
pub const OFFER_EVERY: Duration = Duration::from_millis(500);

/// One side's queue-pair details, carried in a control record (32 bytes, big-endian):
/// kind (1), worker (1), path MTU (1, `enum ibv_mtu`), reserved zero (1), QP number (4, 24
/// bits used), starting PSN (4, 24 bits used), GID (16), and the receiver's QP number this
/// record answers (4; 0 in an offer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpRecord {
    /// [`RECORD_OFFER`] or [`RECORD_ACCEPT`].
    pub kind: u8,
    /// The sender's worker number.
    pub worker: u8,
    /// The sender's active path MTU.
    pub mtu: u8,
    /// The sender's queue pair.
    pub qpn: u32,
    /// The first packet sequence number the sender sends with.
    pub psn: u32,
    /// The sender's GID (RoCEv2: its IPv4 address, mapped).
    pub gid: [u8; 16],
    /// In an accept: the receiver's queue pair it connected to.
    pub answers: u32,
}

/// A control record that is not a valid queue-pair record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a valid RDMA queue-pair record")]
pub struct BadRecord;

impl QpRecord {
    /// The record's bytes.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0] = self.kind;
        b[1] = self.worker;
        b[2] = self.mtu;
        b[4..8].copy_from_slice(&self.qpn.to_be_bytes());
        b[8..12].copy_from_slice(&self.psn.to_be_bytes());
        b[12..28].copy_from_slice(&self.gid);
        b[28..32].copy_from_slice(&self.answers.to_be_bytes());
        b
    }

    /// Parses a record; anything but a well-formed one is refused.
    pub fn decode(b: &[u8]) -> Result<Self, BadRecord> {
        let b: &[u8; RECORD_LEN] = b.try_into().map_err(|_| BadRecord)?;
        let word = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let r = Self {
            kind: b[0],
            worker: b[1],
            mtu: b[2],
            qpn: word(4),
            psn: word(8),
            gid: b[12..28].try_into().map_err(|_| BadRecord)?,
            answers: word(28),
        };
        let kind_ok = match r.kind {
            RECORD_OFFER => r.answers == 0,
            RECORD_ACCEPT => r.answers != 0 && r.answers < 1 << 24,
            _ => false,
        };
        if !kind_ok
            || b[3] != 0
            || r.qpn == 0
            || r.qpn >= 1 << 24
            || r.psn >= 1 << 24
            || !(1..=5).contains(&r.mtu)
            || r.gid == [0; 16]
        {
            return Err(BadRecord);
        }
        Ok(r)
    }
}

/// Where a worker's queue pair to one peer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpState {
    /// In INIT, offered to the peer until it connects.
    Free,
    /// Connected (RTS) to the peer's worker `worker`, queue pair `qpn`.
    Connected {
        /// The peer's worker.
        worker: u8,
        /// The peer's queue pair.
        qpn: u32,
    },
}

/// What to do with a received queue-pair record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Connect the free queue pair to the record's; answer with an accept if `reply`.
    Connect {
        /// Answer with an accept.
        reply: bool,
    },
    /// The peer's worker has a new queue pair (it restarted): replace ours with a fresh one,
    /// connect that, and answer if `reply`.
    Reconnect {
        /// Answer with an accept.
        reply: bool,
    },
    /// Already connected to exactly this queue pair: answer again (the accept was lost).
    AcceptAgain,
    /// Nothing (stale, or the queue pair is taken by another of the peer's workers).
    Ignore,
}

/// The rule for a record `r` arriving at a worker whose queue pair `local_qpn` is in `state`
/// (docs/protocol.md, "RDMA transport"). Offers are answered by whoever is free; an accept
/// counts only if it names our current queue pair; a queue pair stays with the peer worker
/// it connected to unless that worker offers a new one.
pub fn decide(state: QpState, local_qpn: u32, r: &QpRecord) -> Decision {
    let offer = r.kind == RECORD_OFFER;
    if !offer && r.answers != local_qpn {
        return Decision::Ignore;
    }
    match state {
        QpState::Free => Decision::Connect { reply: offer },
        QpState::Connected { worker, qpn } if worker == r.worker && qpn == r.qpn => {
            if offer {
                Decision::AcceptAgain
            } else {
                Decision::Ignore
            }
        }
        QpState::Connected { worker, .. } if worker == r.worker => {
            Decision::Reconnect { reply: offer }
        }
        QpState::Connected { .. } => Decision::Ignore,
    }
}

/// The inline threshold: messages up to it are copied into the send request by the CPU
/// (no DMA read of the buffer, so lower latency for small ones), larger ones are read by the
/// device from registered memory. The best cut-off depends on the device and the host, so
/// the transport measures: one send in [`InlinePolicy::SAMPLE_EVERY`] whose size lies near the
/// threshold is timed, alternately inline and not, and the threshold moves one
/// [`InlinePolicy::STEP`] towards whichever posts faster per byte.
#[derive(Clone, Debug)]
pub struct InlinePolicy {
    threshold: u32,
    max: u32,
    sends: u64,
    /// Moving averages of nanoseconds per send near the threshold: inline, then not.
    cost: [Option<f64>; 2],
    next_probe_inline: bool,
    /// Threshold moves so far.
    pub moves: u64,
}

impl InlinePolicy {
    /// One send in this many near the threshold is timed.
    pub const SAMPLE_EVERY: u64 = 16;
    /// How far the threshold moves at a time, in bytes.
    pub const STEP: u32 = 32;
    /// Samples of each kind before the threshold moves.
    const WEIGHT: f64 = 0.125;

    /// A policy for a queue pair that sends up to `max` bytes inline, starting at half of it.
    pub fn new(max: u32) -> Self {
        Self {
            threshold: max / 2,
            max,
            sends: 0,
            cost: [None, None],
            next_probe_inline: true,
            moves: 0,
        }
    }

    /// The current threshold in bytes.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Whether a message of `len` bytes goes inline, and whether this send is to be timed
    /// (then report it with [`InlinePolicy::record`]).
    pub fn choose(&mut self, len: u32) -> (bool, bool) {
        self.sends += 1;
        let near = len.abs_diff(self.threshold) <= Self::STEP * 2 && len <= self.max;
        if near && self.sends.is_multiple_of(Self::SAMPLE_EVERY) {
            let inline = self.next_probe_inline;
            self.next_probe_inline = !inline;
            return (inline, true);
        }
        (len <= self.threshold, false)
    }

    /// A timed send: `ns` to post it, `inline` or not. Moves the threshold up when inline
    /// posts are cheaper near it, down when they are dearer.
    pub fn record(&mut self, inline: bool, ns: u64) {
        let i = usize::from(!inline);
        let ns = ns as f64;
        self.cost[i] = Some(match self.cost[i] {
            Some(avg) => avg + Self::WEIGHT * (ns - avg),
            None => ns,
        });
        let (Some(with), Some(without)) = (self.cost[0], self.cost[1]) else {
            return;
        };
        let before = self.threshold;
        if with < without {
            self.threshold = (self.threshold + Self::STEP).min(self.max);
        } else if with > without {
            self.threshold = self.threshold.saturating_sub(Self::STEP);
        }
        if self.threshold != before {
            self.moves += 1;
            // Judge the new threshold on fresh samples.
            self.cost = [None, None];
        }
    }
}

/// The shared receive queue's buffers: each is posted, or held by the worker between a
/// completion and its repost. Every buffer is always in exactly one of those states, so the
/// queue never runs dry by leak; `low_water` tells how close it came.
#[derive(Clone, Debug)]
pub struct RecvAccount {
    posted: Vec<bool>,
    outstanding: usize,
    /// Fewest buffers posted at any time since start.
    pub low_water: usize,
    /// Completions for a buffer that was not posted (a device or bookkeeping error).
    pub unexpected: u64,
}

impl RecvAccount {
    /// `count` buffers, none posted yet.
    pub fn new(count: usize) -> Self {
        Self {
            posted: vec![false; count],
            outstanding: 0,
            low_water: 0,
            unexpected: 0,
        }
    }

    /// Buffer `i` was posted. `false`: it already was (not posted twice).
    pub fn posted(&mut self, i: usize) -> bool {
        match self.posted.get_mut(i) {
            Some(p) if !*p => {
                *p = true;
                self.outstanding += 1;
                true
            }
            _ => false,
        }
    }

    /// Buffer `i` completed (holds a message, or was flushed). `false`: it was not posted.
    pub fn completed(&mut self, i: usize) -> bool {
        match self.posted.get_mut(i) {
            Some(p) if *p => {
                *p = false;
                self.outstanding -= 1;
                self.low_water = self.low_water.min(self.outstanding);
                true
            }
            _ => {
                self.unexpected += 1;
                false
            }
        }
    }

    /// Buffers posted now.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Starts measuring the low-water mark from now (after the first fill).
    pub fn filled(&mut self) {
        self.low_water = self.outstanding;
    }
}

/// Per peer, what one worker's queue pair did (summed over workers for the metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// SENDs posted.
    pub sends: u64,
    /// Of them, inline.
    pub inline_sends: u64,
    /// Messages received.
    pub receives: u64,
    /// Bytes sent (DWCP messages).
    pub send_bytes: u64,
    /// Bytes received.
    pub receive_bytes: u64,
    /// Completions with error, by status: retry exceeded (peer gone), RNR retry exceeded
    /// (peer had no receive buffer), flushed (queue pair in error), other.
    pub errors_retry: u64,
    /// See `errors_retry`.
    pub errors_rnr: u64,
    /// See `errors_retry`.
    pub errors_flushed: u64,
    /// See `errors_retry`.
    pub errors_other: u64,
    /// Sends that could not be posted (send queue full, queue pair broken).
    pub post_failed: u64,
    /// Times the queue pair connected.
    pub connects: u64,
    /// Times it was torn down and made again (broken, or the peer's worker restarted).
    pub reconnects: u64,
    /// Queue-pair records refused (malformed, or for a pair taken by another worker).
    pub records_refused: u64,
    /// State: 1 connected, 0 not.
    pub connected: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(worker: u8, qpn: u32) -> QpRecord {
        QpRecord {
            kind: RECORD_OFFER,
            worker,
            mtu: 3,
            qpn,
            psn: 0x12_3456,
            gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 50, 2],
            answers: 0,
        }
    }

    fn accept(worker: u8, qpn: u32, answers: u32) -> QpRecord {
        QpRecord {
            kind: RECORD_ACCEPT,
            answers,
            ..offer(worker, qpn)
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        for r in [offer(1, 17), accept(0, 0xff_fffe, 18)] {
            assert_eq!(QpRecord::decode(&r.encode()), Ok(r));
        }
        let good = offer(1, 17).encode();
        let bad = |at: usize, v: u8| {
            let mut b = good;
            b[at] = v;
            QpRecord::decode(&b)
        };
        assert_eq!(bad(0, 0x12), Err(BadRecord), "unknown kind");
        assert_eq!(bad(3, 1), Err(BadRecord), "reserved byte");
        assert_eq!(bad(2, 0), Err(BadRecord), "no such MTU");
        assert_eq!(bad(2, 6), Err(BadRecord), "no such MTU");
        assert_eq!(bad(4, 1), Err(BadRecord), "QP number past 24 bits");
        assert_eq!(bad(31, 1), Err(BadRecord), "an offer answers nothing");
        let mut no_gid = good;
        no_gid[12..28].fill(0);
        assert_eq!(QpRecord::decode(&no_gid), Err(BadRecord));
        assert_eq!(QpRecord::decode(&good[..31]), Err(BadRecord), "short");
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(QpRecord::decode(&long), Err(BadRecord), "long");
    }

    #[test]
    fn crossing_offers_connect_both_sides_once() {
        // A (qpn 10) and B (qpn 20) both free, both offer; each connects to the other's offer
        // and answers; the answers then change nothing.
        assert_eq!(
            decide(QpState::Free, 10, &offer(0, 20)),
            Decision::Connect { reply: true }
        );
        assert_eq!(
            decide(QpState::Free, 20, &offer(0, 10)),
            Decision::Connect { reply: true }
        );
        let a = QpState::Connected { worker: 0, qpn: 20 };
        assert_eq!(decide(a, 10, &accept(0, 20, 10)), Decision::Ignore);
        // An accept reaching a side that had not connected yet connects it, silently.
        assert_eq!(
            decide(QpState::Free, 10, &accept(0, 20, 10)),
            Decision::Connect { reply: false }
        );
    }

    #[test]
    fn a_restarted_peer_worker_gets_a_fresh_pair_and_others_cannot_take_it() {
        let a = QpState::Connected { worker: 0, qpn: 20 };
        // The same offer again: our accept was lost.
        assert_eq!(decide(a, 10, &offer(0, 20)), Decision::AcceptAgain);
        // Worker 0 of the peer comes back with a new queue pair.
        assert_eq!(
            decide(a, 10, &offer(0, 21)),
            Decision::Reconnect { reply: true }
        );
        // Another worker of the peer cannot take it over.
        assert_eq!(decide(a, 10, &offer(1, 30)), Decision::Ignore);
        // An accept for an older queue pair of ours is stale.
        assert_eq!(
            decide(QpState::Free, 11, &accept(0, 20, 10)),
            Decision::Ignore
        );
    }

    #[test]
    fn the_inline_threshold_follows_the_measured_costs() {
        let mut p = InlinePolicy::new(256);
        assert_eq!(p.threshold(), 128);
        assert_eq!(p.choose(64), (true, false));
        assert_eq!(p.choose(1000), (false, false));
        // Inline posts measure cheaper near the threshold: it climbs to the maximum.
        let mut timed = 0;
        for _ in 0..10_000 {
            let (inline, probe) = p.choose(p.threshold());
            if probe {
                timed += 1;
                p.record(inline, if inline { 200 } else { 400 });
            }
        }
        assert!(timed > 0);
        assert_eq!(p.threshold(), 256, "never past what the queue pair allows");
        // Then they measure dearer: it falls to zero (nothing inline).
        for _ in 0..20_000 {
            let (inline, probe) = p.choose(p.threshold());
            if probe {
                p.record(inline, if inline { 900 } else { 300 });
            }
        }
        assert_eq!(p.threshold(), 0);
        assert_eq!(p.choose(1), (false, false));
        assert!(p.moves >= 12, "{}", p.moves);
    }

    #[test]
    fn receive_buffers_are_each_posted_or_held_never_both() {
        let mut r = RecvAccount::new(4);
        for i in 0..4 {
            assert!(r.posted(i));
        }
        r.filled();
        assert!(!r.posted(2), "posted twice");
        assert_eq!(r.outstanding(), 4);
        assert!(r.completed(2));
        assert!(r.completed(3));
        assert_eq!(r.low_water, 2);
        assert!(!r.completed(3), "completed twice");
        assert!(!r.completed(9), "no such buffer");
        assert_eq!(r.unexpected, 2);
        assert!(r.posted(3));
        assert_eq!(r.outstanding(), 3);
        assert_eq!(r.low_water, 2);
    }
}
