//! Worker counters shared with the control thread: each worker owns one cache-line-aligned
//! block of atomics and stores its latest totals there every few milliseconds (relaxed
//! stores, no shared cache lines between workers); the control thread sums them. A worker's
//! last GPU failure, in words, is handed over the same way when it changes (rarely).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::gateway::GatewayCounters;
use crate::proto::tunnel::Counters;

/// Every counter a worker publishes, in order: (metric name suffix, label).
pub const NAMES: &[&str] = &[
    "lan_rx_packets",
    "lan_rx_bytes",
    "lan_tx_packets",
    "lan_tx_bytes",
    "wan_rx_packets",
    "wan_rx_bytes",
    "wan_tx_packets",
    "wan_tx_bytes",
    "drop_malformed",
    "drop_auth_failed",
    "drop_replayed",
    "drop_unknown_index",
    "drop_no_route",
    "drop_too_big",
    "drop_no_session",
    "drop_ttl_exceeded",
    "drop_source_not_allowed",
    "drop_unresolved",
    "drop_tx_full",
    "drop_seal_refused",
    "drop_tx_no_room",
    "drop_rdma_not_connected",
    "drop_rdma_other_worker",
    "drop_control_overflow",
    "handoff_frames",
    "handshakes_initiated",
    "handshakes_completed",
    "rekeys",
    "keepalives_sent",
    "compressed_packets",
    "compress_in_bytes",
    "compress_out_bytes",
    "compress_no_gain_packets",
    "compress_skipped_packets",
    "icmp_errors_sent",
    "mss_clamped",
    "tunnel_rx_packets",
    "tunnel_tx_messages",
    "handshake_rtt_ns_max",
    "control_records_sent",
    "control_records_received",
    "offload_seal_cpu_batches",
    "offload_seal_gpu_batches",
    "offload_open_cpu_batches",
    "offload_open_gpu_batches",
    "offload_compress_cpu_batches",
    "offload_compress_gpu_batches",
    "offload_decompress_cpu_batches",
    "offload_decompress_gpu_batches",
    "offload_seal_cpu_bytes",
    "offload_seal_gpu_bytes",
    "offload_open_cpu_bytes",
    "offload_open_gpu_bytes",
    "offload_compress_cpu_bytes",
    "offload_compress_gpu_bytes",
    "offload_decompress_cpu_bytes",
    "offload_decompress_gpu_bytes",
    "offload_gpu_errors",
    "offload_gpu_timeouts",
    "offload_fallback_packets",
    "offload_declined_packets",
    "offload_gpu_probes",
    "offload_gpu_healthy",
    "offload_gpu_checked_batches",
    "offload_gpu_spot_checked_batches",
    "offload_gpu_rechecked_refusals",
    "offload_gpu_wrong_batches",
    "offload_corrected_packets",
    "offload_gpu_dropped_unchecked_packets",
    "offload_split_batches",
    "offload_seal_cpu_ns",
    "offload_seal_gpu_ns",
    "offload_open_cpu_ns",
    "offload_open_gpu_ns",
    "offload_compress_cpu_ns",
    "offload_compress_gpu_ns",
    "offload_decompress_cpu_ns",
    "offload_decompress_gpu_ns",
];

/// Number of counters.
pub const COUNT: usize = NAMES.len();

/// Extra counters the worker loop keeps itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopCounters {
    /// Frames a port's TX ring refused.
    pub tx_full: u64,
    /// WAN frames handed to the worker owning their session.
    pub handoff: u64,
    /// Deferred messages the engine refused to seal (not sent).
    pub seal_refused: u64,
    /// Frames not built because the burst's TX batch had no free buffer.
    pub tx_no_room: u64,
}

/// Flattens a worker's counters in [`NAMES`] order; `o` is its offload dispatcher's.
pub fn flatten(
    g: &GatewayCounters,
    t: &Counters,
    l: &LoopCounters,
    o: Option<&dwcp_kernels::dispatch::Stats>,
) -> [u64; COUNT] {
    // By reference: the stats carry the last error's text, which must not be copied (and
    // allocated) at every publish.
    let none = dwcp_kernels::dispatch::Stats::default();
    let d = o.unwrap_or(&none);
    let b = |op: usize, path: usize| d.batches[op][path];
    let by = |op: usize, path: usize| d.bytes[op][path];
    [
        g.lan_rx_packets,
        g.lan_rx_bytes,
        g.lan_tx_packets,
        g.lan_tx_bytes,
        g.wan_rx_packets,
        g.wan_rx_bytes,
        g.wan_tx_packets,
        g.wan_tx_bytes,
        g.malformed + t.malformed,
        t.auth_failed,
        t.replayed,
        t.unknown_index,
        g.no_route,
        g.too_big + t.too_big,
        t.no_session,
        g.ttl_exceeded,
        g.source_not_allowed,
        g.unresolved,
        l.tx_full,
        l.seal_refused,
        l.tx_no_room,
        g.rdma_not_connected,
        g.rdma_other_worker,
        g.control_dropped,
        l.handoff,
        t.handshakes_initiated,
        t.handshakes_completed,
        t.rekeys,
        t.keepalives_sent,
        t.compressed,
        t.compress_in,
        t.compress_out,
        t.compress_no_gain,
        t.compress_skipped,
        g.icmp_errors,
        g.mss_clamped,
        t.rx_packets,
        t.tx_messages,
        t.handshake_rtt_ns_max,
        t.control_sent,
        t.control_received,
        b(0, 0),
        b(0, 1),
        b(1, 0),
        b(1, 1),
        b(2, 0),
        b(2, 1),
        b(3, 0),
        b(3, 1),
        by(0, 0),
        by(0, 1),
        by(1, 0),
        by(1, 1),
        by(2, 0),
        by(2, 1),
        by(3, 0),
        by(3, 1),
        d.gpu_errors,
        d.gpu_timeouts,
        d.fallback_jobs,
        d.declined_jobs,
        d.probes,
        u64::from(d.gpu_healthy),
        d.verified_batches,
        d.spot_checked_batches,
        d.rechecked_refusals,
        d.gpu_wrong_batches,
        d.corrected_jobs,
        d.dropped_unchecked,
        d.split_batches,
        d.nanos[0][0],
        d.nanos[0][1],
        d.nanos[1][0],
        d.nanos[1][1],
        d.nanos[2][0],
        d.nanos[2][1],
        d.nanos[3][0],
        d.nanos[3][1],
    ]
}

/// Upper bounds of the latency buckets, nanoseconds (a last bucket takes the rest).
pub const BUCKETS_NS: [u64; 10] = [
    250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000,
];
/// The stages measured per packet: LAN frame to WAN output (encapsulation), WAN frame to LAN
/// output (decapsulation), and handing output frames to the ports.
pub const STAGES: [&str; 3] = ["lan_to_wan", "wan_to_lan", "tx"];
/// Slots per histogram: buckets, the overflow bucket, sum, count.
const HIST_SLOTS: usize = BUCKETS_NS.len() + 3;

/// A fixed-bucket latency histogram a worker fills without allocating.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Samples per bucket (not cumulative); the last is above every bound.
    pub buckets: [u64; BUCKETS_NS.len() + 1],
    /// Sum of the samples, nanoseconds.
    pub sum_ns: u64,
    /// Number of samples.
    pub count: u64,
}

impl Histogram {
    /// Records `n` samples of `ns` nanoseconds each (a burst's per-packet average).
    pub fn record(&mut self, ns: u64, n: u64) {
        let i = BUCKETS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(BUCKETS_NS.len());
        self.buckets[i] += n;
        self.sum_ns += ns * n;
        self.count += n;
    }

    fn slots(&self) -> [u64; HIST_SLOTS] {
        let mut out = [0u64; HIST_SLOTS];
        out[..self.buckets.len()].copy_from_slice(&self.buckets);
        out[HIST_SLOTS - 2] = self.sum_ns;
        out[HIST_SLOTS - 1] = self.count;
        out
    }

    fn from_slots(s: &[u64; HIST_SLOTS]) -> Self {
        let mut h = Self::default();
        h.buckets.copy_from_slice(&s[..BUCKETS_NS.len() + 1]);
        h.sum_ns = s[HIST_SLOTS - 2];
        h.count = s[HIST_SLOTS - 1];
        h
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.sum_ns += o.sum_ns;
        self.count += o.count;
    }
}

/// Peers whose traffic and RDMA queue pairs a worker publishes (by peer index; more are not
/// shown).
pub const PEERS: usize = 16;
/// Per RDMA peer, in order: the queue pair's state (`enum ibv_qp_state` + 1; 0: no queue
/// pair), then [`crate::rdma::PeerCounters`]' fields.
pub const RDMA_FIELDS: [&str; 15] = [
    "qp_state",
    "sends",
    "inline_sends",
    "receives",
    "send_bytes",
    "receive_bytes",
    "errors_retry",
    "errors_rnr",
    "errors_flushed",
    "errors_other",
    "post_failed",
    "connects",
    "reconnects",
    "records_refused",
    "connected",
];

/// One RDMA peer's published values, in [`RDMA_FIELDS`] order.
pub fn rdma_row(c: &crate::rdma::PeerCounters, qp_state: i32) -> [u64; RDMA_FIELDS.len()] {
    [
        u64::try_from(qp_state + 1).unwrap_or(0),
        c.sends,
        c.inline_sends,
        c.receives,
        c.send_bytes,
        c.receive_bytes,
        c.errors_retry,
        c.errors_rnr,
        c.errors_flushed,
        c.errors_other,
        c.post_failed,
        c.connects,
        c.reconnects,
        c.records_refused,
        c.connected,
    ]
}

/// Per peer, in order: [`crate::proto::tunnel::PeerStats`]' fields.
pub const PEER_FIELDS: [&str; 10] = [
    "tx_packets",
    "tx_bytes",
    "rx_packets",
    "rx_bytes",
    "handshakes",
    "rekeys",
    "last_handshake_unix_ns",
    "session_up",
    "endpoint_ip",
    "endpoint_port",
];

/// One peer's published values, in [`PEER_FIELDS`] order.
pub fn peer_row(p: &crate::proto::tunnel::PeerStats) -> [u64; PEER_FIELDS.len()] {
    [
        p.tx_packets,
        p.tx_bytes,
        p.rx_packets,
        p.rx_bytes,
        p.handshakes,
        p.rekeys,
        p.last_handshake_unix_ns,
        p.session_up,
        p.endpoint_ip,
        p.endpoint_port,
    ]
}

/// Several workers' views of one peer as one: counters add up; the last handshake and
/// whether a session is up are the latest and any; the endpoint is the one the worker with
/// the latest handshake knows (or any known one).
pub fn merge_peer(
    rows: impl Iterator<Item = [u64; PEER_FIELDS.len()]>,
) -> [u64; PEER_FIELDS.len()] {
    let mut total = [0u64; PEER_FIELDS.len()];
    let mut latest = 0;
    for r in rows {
        for i in 0..6 {
            total[i] += r[i];
        }
        total[7] = total[7].max(r[7]);
        if r[8] != 0 && (r[6] >= latest || total[8] == 0) {
            total[8] = r[8];
            total[9] = r[9];
        }
        if r[6] >= latest {
            latest = r[6];
        }
        total[6] = latest;
    }
    total
}

/// Stores a row of per-peer values (a peer past [`PEERS`] has no slots and is not shown).
fn store_row<const N: usize>(slots: Option<&[AtomicU64; N]>, row: &[u64; N]) {
    for (slot, v) in slots.into_iter().flatten().zip(row) {
        slot.store(*v, Ordering::Relaxed);
    }
}

/// Loads a row of per-peer values (all zero for a peer with no slots).
fn load_row<const N: usize>(slots: Option<&[AtomicU64; N]>) -> [u64; N] {
    slots.map_or([0; N], |s| {
        std::array::from_fn(|i| s[i].load(Ordering::Relaxed))
    })
}

/// One worker's published counters, on cache lines of its own.
#[repr(align(64))]
pub struct WorkerStats {
    values: [AtomicU64; COUNT],
    peers: [[AtomicU64; PEER_FIELDS.len()]; PEERS],
    rdma: [[AtomicU64; RDMA_FIELDS.len()]; PEERS],
    hist: [[AtomicU64; HIST_SLOTS]; STAGES.len()],
    /// The GPU failures the worker's dispatcher has had, and why it was taken out of service.
    gpu_failure: Mutex<(u64, Option<String>)>,
}

impl Default for WorkerStats {
    fn default() -> Self {
        Self {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            rdma: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            peers: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            hist: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            gpu_failure: Mutex::new((0, None)),
        }
    }
}

impl WorkerStats {
    /// Publishes the worker's totals.
    pub fn publish(&self, values: &[u64; COUNT]) {
        for (slot, v) in self.values.iter().zip(values) {
            slot.store(*v, Ordering::Relaxed);
        }
    }

    /// Publishes one peer's traffic and session values ([`peer_row`]).
    pub fn publish_peer(&self, peer: usize, row: &[u64; PEER_FIELDS.len()]) {
        store_row(self.peers.get(peer), row);
    }

    /// The last published values of peer `peer`.
    pub fn read_peer(&self, peer: usize) -> [u64; PEER_FIELDS.len()] {
        load_row(self.peers.get(peer))
    }

    /// Publishes one RDMA peer's queue-pair values ([`rdma_row`]).
    pub fn publish_rdma(&self, peer: usize, row: &[u64; RDMA_FIELDS.len()]) {
        store_row(self.rdma.get(peer), row);
    }

    /// The last published RDMA values of peer `peer` (all zero: no queue pair).
    pub fn read_rdma(&self, peer: usize) -> [u64; RDMA_FIELDS.len()] {
        load_row(self.rdma.get(peer))
    }

    /// Publishes the worker's latency histograms.
    pub fn publish_histograms(&self, h: &[Histogram; STAGES.len()]) {
        for (slots, hist) in self.hist.iter().zip(h) {
            for (slot, v) in slots.iter().zip(hist.slots()) {
                slot.store(v, Ordering::Relaxed);
            }
        }
    }

    /// Reads the last published histograms.
    pub fn read_histograms(&self) -> [Histogram; STAGES.len()] {
        std::array::from_fn(|i| {
            Histogram::from_slots(&std::array::from_fn(|j| {
                self.hist[i][j].load(Ordering::Relaxed)
            }))
        })
    }

    /// Hands over the worker's GPU failure count and why its GPU is out (the failure that took
    /// it out, then the latest if another); called only when the count changed. Never waits: false when the reader holds the slot (try again at the
    /// next publish).
    pub fn publish_gpu_failure(&self, count: u64, reason: Option<&str>) -> bool {
        match self.gpu_failure.try_lock() {
            Ok(mut slot) => {
                *slot = (count, reason.map(str::to_owned));
                true
            }
            Err(_) => false,
        }
    }

    /// The worker's GPU failure count and why its GPU is out, as last handed over.
    pub fn gpu_failure(&self) -> (u64, Option<String>) {
        self.gpu_failure
            .lock()
            .map_or_else(|e| e.into_inner().clone(), |slot| slot.clone())
    }

    /// Reads the last published totals.
    pub fn read(&self) -> [u64; COUNT] {
        std::array::from_fn(|i| self.values[i].load(Ordering::Relaxed))
    }
}

/// Sums several workers' totals.
pub fn sum<'a>(workers: impl Iterator<Item = &'a WorkerStats>) -> [u64; COUNT] {
    let mut total = [0u64; COUNT];
    for w in workers {
        for ((t, v), name) in total.iter_mut().zip(w.read()).zip(NAMES) {
            // Gauges named `_max` combine by maximum; counters add up.
            if name.ends_with("_max") {
                *t = (*t).max(v);
            } else {
                *t += v;
            }
        }
    }
    total
}

/// Sums several workers' histograms.
pub fn sum_histograms<'a>(
    workers: impl Iterator<Item = &'a WorkerStats>,
) -> [Histogram; STAGES.len()] {
    let mut total = [Histogram::default(); STAGES.len()];
    for w in workers {
        for (t, h) in total.iter_mut().zip(w.read_histograms()) {
            t.merge(&h);
        }
    }
    total
}

/// The value of a named counter in a flattened array.
pub fn get(values: &[u64; COUNT], name: &str) -> u64 {
    NAMES
        .iter()
        .position(|n| *n == name)
        .map_or(0, |i| values[i])
}

#[cfg(test)]
mod tests {

    #[test]
    fn peers_merge_over_workers() {
        // Worker 0 made the first session, worker 1 the latest; both sent and received.
        let w0 = [10, 1000, 5, 500, 1, 0, 100, 1, 0x0a000001, 51900];
        let w1 = [20, 2000, 7, 700, 2, 1, 200, 0, 0x0a000002, 51901];
        let m = merge_peer([w0, w1].into_iter());
        assert_eq!(&m[..6], &[30, 3000, 12, 1200, 3, 1]);
        assert_eq!(m[6], 200, "the latest handshake");
        assert_eq!(m[7], 1, "a session is up on some worker");
        assert_eq!(
            (m[8], m[9]),
            (0x0a000002, 51901),
            "the latest handshake's endpoint"
        );
        // No worker knows an endpoint yet: none.
        let m = merge_peer([[0; PEER_FIELDS.len()]; 2].into_iter());
        assert_eq!(m, [0; PEER_FIELDS.len()]);
    }

    use super::*;

    #[test]
    fn histogram_buckets_and_publish() {
        let mut h = Histogram::default();
        h.record(100, 3);
        h.record(1_500, 1);
        h.record(1_000_000, 2);
        assert_eq!(h.buckets[0], 3);
        assert_eq!(h.buckets[3], 1);
        assert_eq!(h.buckets[BUCKETS_NS.len()], 2);
        assert_eq!((h.count, h.sum_ns), (6, 300 + 1_500 + 2_000_000));
        let w = WorkerStats::default();
        w.publish_histograms(&[h, Histogram::default(), h]);
        let back = sum_histograms([&w, &w].into_iter());
        assert_eq!(back[0].count, 12);
        assert_eq!(back[1].count, 0);
    }

    #[test]
    fn a_gpu_failure_is_handed_over_and_a_busy_reader_never_blocks_the_worker() {
        let w = WorkerStats::default();
        assert_eq!(w.gpu_failure(), (0, None));
        assert!(w.publish_gpu_failure(2, Some("injected error")));
        assert_eq!(w.gpu_failure(), (2, Some("injected error".to_owned())));
        let held = w.gpu_failure.lock().unwrap();
        assert!(
            !w.publish_gpu_failure(3, Some("later")),
            "waited for the reader"
        );
        drop(held);
        assert_eq!(w.gpu_failure().0, 2);
    }

    #[test]
    fn the_live_check_counters_are_published() {
        let d = dwcp_kernels::dispatch::Stats {
            verified_batches: 5,
            spot_checked_batches: 7,
            rechecked_refusals: 11,
            gpu_wrong_batches: 2,
            corrected_jobs: 3,
            split_batches: 13,
            dropped_unchecked: 13,
            nanos: [[1, 2], [3, 4], [5, 6], [7, 8]],
            ..Default::default()
        };
        let v = flatten(
            &GatewayCounters::default(),
            &Counters::default(),
            &LoopCounters::default(),
            Some(&d),
        );
        assert_eq!(get(&v, "offload_gpu_checked_batches"), 5);
        assert_eq!(get(&v, "offload_gpu_spot_checked_batches"), 7);
        assert_eq!(get(&v, "offload_gpu_rechecked_refusals"), 11);
        assert_eq!(get(&v, "offload_gpu_wrong_batches"), 2);
        assert_eq!(get(&v, "offload_corrected_packets"), 3);
        assert_eq!(get(&v, "offload_split_batches"), 13);
        assert_eq!(get(&v, "offload_gpu_dropped_unchecked_packets"), 13);
        for (i, op) in ["seal", "open", "compress", "decompress"]
            .iter()
            .enumerate()
        {
            for (j, path) in ["cpu", "gpu"].iter().enumerate() {
                let want = (2 * i + j + 1) as u64;
                assert_eq!(get(&v, &format!("offload_{op}_{path}_ns")), want);
            }
        }
    }
}
