//! A worker: polls its LAN and WAN ports in bursts, runs each frame through its gateway,
//! sends the results, runs the timers, and publishes its counters. Run to completion on one
//! pinned core; no locks, no allocation on the steady path. `af_packet` costs one `send()` per
//! port per burst with output; an idle worker sleeps briefly after many empty polls so a
//! test box with few cores keeps some for its hosts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::control::stats::{Histogram, LoopCounters, STAGES, WorkerStats, flatten};
use crate::gateway::{
    Dest, Gateway, OUTER_HEADERS, PeerPath, Side, TxBatch, rdma_handoff_header,
    rdma_handoff_message, wan_owner, wan_owner_of_message,
};
use crate::io::PacketPort;
use crate::io::memory::Mailbox;

/// Frames taken from a port per poll unless `dataplane.burst` says otherwise.
pub const BURST: usize = 32;
/// Empty polls before the worker starts napping.
const SPIN_BEFORE_NAP: u32 = 256;
const NAP: Duration = Duration::from_micros(100);
const TICK: Duration = Duration::from_millis(1);
const PUBLISH: Duration = Duration::from_millis(10);

/// A new peer list for a worker (config reload), prepared by the control thread.
pub struct Reload {
    /// Peers in config order.
    pub peers: Vec<crate::proto::tunnel::PeerSpec>,
    /// Their allowed prefixes, same order.
    pub allowed: Vec<Vec<ipnet::Ipv4Net>>,
}

/// Everything a worker runs with.
pub struct Worker {
    /// Worker number (the top byte of its session indices).
    pub id: u8,
    /// LAN port.
    pub lan: Box<dyn PacketPort>,
    /// WAN port.
    pub wan: Box<dyn PacketPort>,
    /// Its gateway and tunnel.
    pub gateway: Gateway,
    /// Output frame buffers (room for three bursts).
    pub tx: TxBatch,
    /// Most frames taken from a port (or the inbox) per poll: `dataplane.burst`.
    pub burst: usize,
    /// Frames other workers hand to this one.
    pub inbox: Arc<Mailbox>,
    /// Every worker's inbox, by worker number.
    pub inboxes: Vec<Arc<Mailbox>>,
    /// Where it publishes counters.
    pub stats: Arc<WorkerStats>,
    /// Set by the control thread to stop.
    pub stop: Arc<AtomicBool>,
    /// Reloads from the control thread, applied between bursts.
    pub reloads: Arc<crossbeam_queue::ArrayQueue<Reload>>,
    /// The data plane's clock origin.
    pub epoch: Instant,
    /// Its RDMA link, when peers use `transport = "rdma"`.
    pub rdma: Option<crate::rdma::link::Link>,
}

/// Where a worker's frames leave: its ports, and its RDMA link if it has one.
struct Out<'a> {
    lan: &'a mut dyn PacketPort,
    wan: &'a mut dyn PacketPort,
    rdma: Option<&'a mut crate::rdma::link::Link>,
}

fn send_all(
    tx: &mut TxBatch,
    gateway: &mut Gateway,
    now: Duration,
    out: &mut Out<'_>,
    counters: &mut LoopCounters,
) {
    if tx.is_empty() {
        return;
    }
    let mut full = 0u64;
    let Out { lan, wan, rdma } = out;
    // Draining opens and seals whatever is still pending first: nothing leaves unsealed.
    let refused = gateway.drain(tx, now, |dest, buf, len| {
        let ok = match dest {
            Dest::Port(Side::Lan) => lan.tx_buffer(buf, len),
            Dest::Port(Side::Wan) => wan.tx_buffer(buf, len),
            // A message the queue pair cannot take is counted by the link.
            Dest::Rdma(peer) => {
                if let Some(link) = rdma.as_deref_mut()
                    && let Some(msg) = buf.bytes().get(OUTER_HEADERS..len)
                {
                    link.send(usize::from(peer), msg);
                }
                true
            }
        };
        if !ok {
            full += 1;
        }
    });
    counters.tx_full += full;
    counters.seal_refused += refused as u64;
    lan.flush();
    wan.flush();
    counters.tx_full += lan.take_dropped() + wan.take_dropped();
}

/// The RDMA link's housekeeping (every tick): broken queue pairs are made again and their
/// peers asked for a new handshake, control records from peers answered, free queue pairs
/// offered, and the gateway told which peers' data can go by RDMA.
fn rdma_housekeeping(
    link: &mut crate::rdma::link::Link,
    gateway: &mut Gateway,
    tx: &mut TxBatch,
    now: Duration,
) {
    for peer in link.repair() {
        gateway.tunnel.handshake_soon(peer);
    }
    for c in gateway.take_controls() {
        if let Some(reply) = link.on_record(c.peer, &c.bytes[..c.len]) {
            gateway.send_control(tx, c.peer, &reply, now);
        }
    }
    for (peer, record) in link.offers_due(now, |p| gateway.tunnel.has_session(p)) {
        gateway.send_control(tx, peer, &record, now);
    }
    let peers: heapless::Vec<usize, 16> = link.rdma_peers().take(16).collect();
    for peer in peers {
        let path = if link.connected(peer) {
            PeerPath::RdmaUp
        } else {
            PeerPath::RdmaDown
        };
        gateway.set_path(peer, path);
    }
}

/// Takes up to `burst` messages from the RDMA queue pairs and opens them a burst at a time
/// like the WAN's; one for a session another worker owns goes to that worker's inbox.
/// Returns the messages taken.
fn poll_rdma(
    link: &mut crate::rdma::link::Link,
    gateway: &mut Gateway,
    tx: &mut TxBatch,
    inboxes: &[Arc<Mailbox>],
    burst: usize,
    now: Duration,
    counters: &mut LoopCounters,
) -> usize {
    let id = gateway.tunnel.worker();
    let n = link.poll(burst, |_peer, msg| match wan_owner_of_message(msg) {
        Some(owner)
            if owner != id
                && inboxes
                    .get(usize::from(owner))
                    .is_some_and(|b| b.push_parts(&rdma_handoff_header(), msg)) =>
        {
            counters.handoff += 1;
        }
        _ => gateway.from_rdma(msg, tx, now),
    });
    counters.seal_refused += gateway.finish_burst(tx, now) as u64;
    n
}

/// After a turn of the loop: spins while work comes, naps after many empty turns.
fn pause(idle: &mut u32, work: usize) {
    if work > 0 {
        *idle = 0;
        return;
    }
    *idle = idle.saturating_add(1);
    if *idle > SPIN_BEFORE_NAP {
        std::thread::sleep(NAP);
    } else {
        std::hint::spin_loop();
    }
}

/// Nanoseconds per packet of a burst that started at `t0`.
fn per_packet(t0: Instant, n: usize) -> u64 {
    let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
    ns / (n as u64).max(1)
}

fn send_timed(
    tx: &mut TxBatch,
    gateway: &mut Gateway,
    now: Duration,
    out: &mut Out<'_>,
    counters: &mut LoopCounters,
    hist: &mut Histogram,
) {
    let n = tx.len();
    if n == 0 {
        return;
    }
    let t0 = Instant::now();
    send_all(tx, gateway, now, out, counters);
    hist.record(per_packet(t0, n), n as u64);
}

/// Publishes each peer's traffic and sessions, and its RDMA queue pair's state, for the
/// control thread (every [`PUBLISH`]).
fn publish_peers(
    now: Duration,
    stats: &WorkerStats,
    gateway: &Gateway,
    rdma: Option<&crate::rdma::link::Link>,
) {
    for (peer, p) in gateway.tunnel.peer_stats(now) {
        stats.publish_peer(peer, &crate::control::stats::peer_row(&p));
    }
    if let Some(link) = rdma {
        for (peer, c, state) in link.peer_counters() {
            stats.publish_rdma(peer, &crate::control::stats::rdma_row(&c, state));
        }
    }
}

/// Publishes the worker's counters and histograms to the control thread (every
/// [`PUBLISH`], not per packet), and a GPU failure not yet told.
fn publish(
    stats: &WorkerStats,
    gateway: &Gateway,
    tx: &TxBatch,
    loop_counters: &mut LoopCounters,
    hist: &[Histogram; STAGES.len()],
    failures_told: &mut u64,
) {
    loop_counters.tx_no_room = tx.no_room();
    stats.publish_histograms(hist);
    stats.publish(&flatten(
        &gateway.counters,
        &gateway.tunnel.counters,
        loop_counters,
        gateway.engine().offload_stats(),
    ));
    if let Some(o) = gateway.engine().offload_stats() {
        let failures = o.gpu_errors + o.gpu_timeouts + o.gpu_wrong_batches;
        if failures != *failures_told {
            // Allocates, but only after a GPU failure (at most one per probe).
            let why = match (&o.out_because, &o.last_error) {
                (Some(first), Some(last)) if first != last => {
                    Some(format!("{first}; since then: {last}"))
                }
                (first, last) => first.clone().or_else(|| last.clone()),
            };
            if stats.publish_gpu_failure(failures, why.as_deref()) {
                *failures_told = failures;
            }
        }
    }
}

impl Worker {
    /// Runs until `stop` is set.
    pub fn run(mut self) {
        let mut loop_counters = LoopCounters::default();
        let mut idle: u32 = 0;
        let mut hist = [Histogram::default(); STAGES.len()];
        let mut last_tick = Duration::ZERO;
        let mut last_publish = Duration::ZERO;
        // GPU failures handed to the control thread so far.
        let mut failures_told = 0u64;
        let Worker {
            id,
            lan,
            wan,
            gateway,
            tx,
            burst,
            inbox,
            inboxes,
            stats,
            stop,
            reloads,
            epoch,
            rdma,
        } = &mut self;
        if let Some(link) = rdma.as_ref() {
            // Nothing goes to an RDMA peer by UDP, nor by RDMA before its queue pair connects.
            for peer in link.rdma_peers() {
                gateway.set_path(peer, PeerPath::RdmaDown);
            }
        }
        macro_rules! out {
            () => {
                &mut Out {
                    lan: &mut **lan,
                    wan: &mut **wan,
                    rdma: rdma.as_mut(),
                }
            };
        }
        while !stop.load(Ordering::Relaxed) {
            let now = epoch.elapsed();
            let mut work = 0;
            let t0 = Instant::now();
            let n = lan.rx_burst(*burst, &mut |f| gateway.from_lan(f, tx, now));
            // The burst's WAN messages, compressed in one engine batch and sealed in another.
            loop_counters.seal_refused += gateway.finish_burst(tx, now) as u64;
            if n > 0 {
                hist[0].record(per_packet(t0, n), n as u64);
                work += n;
            }
            send_timed(tx, gateway, now, out!(), &mut loop_counters, &mut hist[2]);
            let t0 = Instant::now();
            let n = wan.rx_burst(*burst, &mut |f| match wan_owner(f) {
                Some(owner) if owner != *id => {
                    // Not our session: the owning worker decrypts it, in order.
                    if inboxes.get(usize::from(owner)).is_some_and(|b| b.push(f)) {
                        loop_counters.handoff += 1;
                    } else {
                        gateway.from_wan(f, tx, now);
                    }
                }
                _ => gateway.from_wan(f, tx, now),
            });
            // The burst's DWCP messages, opened (and decompressed) a batch at a time.
            loop_counters.seal_refused += gateway.finish_burst(tx, now) as u64;
            if n > 0 {
                hist[1].record(per_packet(t0, n), n as u64);
                work += n;
            }
            send_timed(tx, gateway, now, out!(), &mut loop_counters, &mut hist[2]);
            let mut handed = 0;
            while handed < *burst
                && inbox.pop(&mut |f| match rdma_handoff_message(f) {
                    Some(msg) => gateway.from_rdma(msg, tx, now),
                    None => gateway.from_wan(f, tx, now),
                })
            {
                handed += 1;
            }
            work += handed;
            send_all(tx, gateway, now, out!(), &mut loop_counters);
            if let Some(link) = rdma.as_mut() {
                work += poll_rdma(link, gateway, tx, inboxes, *burst, now, &mut loop_counters);
                send_all(tx, gateway, now, out!(), &mut loop_counters);
            }
            if now.saturating_sub(last_tick) >= TICK {
                last_tick = now;
                while let Some(r) = reloads.pop() {
                    gateway.tunnel.set_peers(r.peers);
                    gateway.set_allowed(r.allowed);
                }
                gateway.tick(tx, now);
                match rdma.as_mut() {
                    Some(link) => rdma_housekeeping(link, gateway, tx, now),
                    // Records from a peer this node runs over UDP: nothing to do with them.
                    None => drop(gateway.take_controls()),
                }
                send_all(tx, gateway, now, out!(), &mut loop_counters);
            }
            if now.saturating_sub(last_publish) >= PUBLISH {
                last_publish = now;
                publish_peers(now, stats, gateway, rdma.as_ref());
                publish(
                    stats,
                    gateway,
                    tx,
                    &mut loop_counters,
                    &hist,
                    &mut failures_told,
                );
            }
            pause(&mut idle, work);
        }
        loop_counters.tx_no_room = tx.no_room();
        stats.publish(&flatten(
            &gateway.counters,
            &gateway.tunnel.counters,
            &loop_counters,
            gateway.engine().offload_stats(),
        ));
    }
}

#[cfg(test)]
mod tests {
    /// `bench offload` prices the GPU's spot checks at this worker batch size.
    #[test]
    fn the_offload_bench_knows_the_burst_size() {
        assert_eq!(dwcp_kernels::bench::WORKER_BATCH, super::BURST);
    }
}
