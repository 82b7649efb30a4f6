//! Worker counters shared with the control thread: each worker owns one cache-line-aligned
//! block of atomics and stores its latest totals there every few milliseconds (relaxed
//! stores, no shared cache lines between workers); the control thread sums them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::gateway::GatewayCounters;
use crate::tunnel::Counters;

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
    "handoff_frames",
    "handshakes_initiated",
    "handshakes_completed",
    "rekeys",
    "keepalives_sent",
    "compressed_packets",
    "compress_in_bytes",
    "compress_out_bytes",
    "icmp_errors_sent",
    "mss_clamped",
    "tunnel_rx_packets",
    "tunnel_tx_messages",
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
}

/// Flattens a worker's counters in [`NAMES`] order.
pub fn flatten(g: &GatewayCounters, t: &Counters, l: &LoopCounters) -> [u64; COUNT] {
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
        l.handoff,
        t.handshakes_initiated,
        t.handshakes_completed,
        t.rekeys,
        t.keepalives_sent,
        t.compressed,
        t.compress_in,
        t.compress_out,
        g.icmp_errors,
        g.mss_clamped,
        t.rx_packets,
        t.tx_messages,
    ]
}

/// One worker's published counters, on cache lines of its own.
#[repr(align(64))]
pub struct WorkerStats {
    values: [AtomicU64; COUNT],
}

impl Default for WorkerStats {
    fn default() -> Self {
        Self {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
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

    /// Reads the last published totals.
    pub fn read(&self) -> [u64; COUNT] {
        std::array::from_fn(|i| self.values[i].load(Ordering::Relaxed))
    }
}

/// Sums several workers' totals.
pub fn sum<'a>(workers: impl Iterator<Item = &'a WorkerStats>) -> [u64; COUNT] {
    let mut total = [0u64; COUNT];
    for w in workers {
        for (t, v) in total.iter_mut().zip(w.read()) {
            *t += v;
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
