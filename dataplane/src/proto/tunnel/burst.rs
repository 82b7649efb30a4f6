//! One burst's DWCP messages through the batch engine, one call per direction: outgoing
//! messages are compressed and sealed ([`Tunnel::seal_burst`]), received ones opened,
//! accepted and decompressed ([`Tunnel::open_burst`]), each step one engine batch for the
//! whole burst. The caller (the gateway, the benchmarks) keeps the frames: each message
//! lives in its own frame buffer at the same offset, and the caller learns what became of
//! each — its final length, or the inner packet to deliver. Nothing is allocated per burst
//! once the largest burst has been seen.

use std::time::Duration;

use dwcp_kernels::{CompressJob, DecompressJob, Engine, OpenJob, SealJob, TAG_LEN};

use super::{Accepted, Action, DeferredOpen, DeferredSeal, MAX_INNER, Tunnel};
use crate::proto::wire::DATA_HEADER_LEN;

/// A received message's inner packet, ready in its frame at the burst's offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The frame it is in.
    pub slot: usize,
    /// The peer it came from.
    pub peer: usize,
    /// Inner packet length (or control record length).
    pub len: usize,
    /// The payload is an authenticated control record for the gateway, not an inner packet.
    pub control: bool,
}

/// An outgoing message after [`Tunnel::seal_burst`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The frame it is in.
    pub slot: usize,
    /// The whole message's length (header, payload, tag), smaller than when it was queued if
    /// compression shrank it; `None`: the engine refused it, and it must not be sent.
    pub len: Option<usize>,
}

/// A burst's messages between the tunnel and the engine, and the results of the last call
/// each way. The job lists and the LZ4 scratch are kept between bursts.
#[derive(Default)]
pub struct Burst {
    /// Messages to seal, by frame, in frame order.
    seals: Vec<(usize, DeferredSeal)>,
    /// Messages to open, by frame, in frame order.
    opens: Vec<(usize, DeferredOpen)>,
    /// Per open: whether it had a job, then whether it authenticated.
    opened: Vec<bool>,
    /// Per open: the accepted message (`None`: dropped and counted).
    accepted: Vec<(usize, Option<Accepted>)>,
    /// One LZ4 buffer per message (grows to the largest burst, once): compressed output of
    /// outgoing payloads, a copy of incoming compressed payloads.
    lz4: Vec<Box<[u8]>>,
    lz4_lens: Vec<Option<usize>>,
    spare_seal: Vec<SealJob<'static>>,
    spare_open: Vec<OpenJob<'static>>,
    spare_compress: Vec<CompressJob<'static>>,
    spare_decompress: Vec<DecompressJob<'static>>,
    sealed: Vec<Sealed>,
    delivered: Vec<Delivered>,
}

/// An empty job list that reuses `spare`'s allocation (a `Vec` of the same layout, collected
/// in place), so building a batch's jobs allocates nothing once warm.
fn reuse<T, U>(spare: &mut Vec<T>) -> Vec<U> {
    std::mem::take(spare)
        .into_iter()
        .map(|_| unreachable!("the spare list is empty"))
        .collect()
}

impl Burst {
    /// Room for bursts of `frames` messages each way.
    pub fn with_capacity(frames: usize) -> Self {
        Self {
            seals: Vec::with_capacity(frames),
            opens: Vec::with_capacity(frames),
            opened: Vec::with_capacity(frames),
            accepted: Vec::with_capacity(frames),
            sealed: Vec::with_capacity(frames),
            delivered: Vec::with_capacity(frames),
            spare_seal: Vec::with_capacity(frames),
            spare_open: Vec::with_capacity(frames),
            ..Self::default()
        }
    }

    /// Queues the message in frame `slot` (written by [`Tunnel::encapsulate_deferred`]) for
    /// the next [`Tunnel::seal_burst`]. Slots must come in increasing order.
    pub fn push_seal(&mut self, slot: usize, d: DeferredSeal) {
        debug_assert!(self.seals.last().is_none_or(|(s, _)| *s < slot));
        self.seals.push((slot, d));
    }

    /// Queues the message in frame `slot` (copied there by [`Tunnel::receive_deferred`]) for
    /// the next [`Tunnel::open_burst`]. Slots must come in increasing order.
    pub fn push_open(&mut self, slot: usize, d: DeferredOpen) {
        debug_assert!(self.opens.last().is_none_or(|(s, _)| *s < slot));
        self.opens.push((slot, d));
    }

    /// Messages waiting to be sealed.
    pub fn seals_pending(&self) -> usize {
        self.seals.len()
    }

    /// Messages waiting to be opened.
    pub fn opens_pending(&self) -> usize {
        self.opens.len()
    }

    /// What the last [`Tunnel::seal_burst`] did with each message, in frame order.
    pub fn sealed(&self) -> &[Sealed] {
        &self.sealed
    }

    /// The inner packets the last [`Tunnel::open_burst`] delivered, in frame order.
    pub fn delivered(&self) -> &[Delivered] {
        &self.delivered
    }

    /// Forgets every queued message (their frames were dropped) and the last results.
    pub fn clear(&mut self) {
        self.seals.clear();
        self.opens.clear();
        self.sealed.clear();
        self.delivered.clear();
    }

    /// The `i`th queued seal, to break it on purpose in tests.
    #[cfg(test)]
    pub(crate) fn seal_mut(&mut self, i: usize) -> &mut (usize, DeferredSeal) {
        &mut self.seals[i]
    }

    /// Makes room for `n` LZ4 buffers.
    fn grow_lz4(&mut self, n: usize) {
        while self.lz4.len() < n {
            self.lz4
                .push(vec![0u8; dwcp_kernels::compress_bound(MAX_INNER)].into_boxed_slice());
        }
    }
}

/// The message in frame `slot` of `frames`, from offset `at` on.
fn message<F: AsMut<[u8]>>(frames: &mut [F], slot: usize, at: usize) -> Option<&mut [u8]> {
    frames.get_mut(slot).and_then(|f| f.as_mut().get_mut(at..))
}

impl Tunnel {
    /// Compresses (where the peer wants it and the flow's gate admits it) and seals every
    /// message queued in `burst`, in place in `frames` at offset `at`: one engine batch for
    /// the compressions, one for the seals. [`Burst::sealed`] then says each message's final
    /// length, or that it was refused (not to be sent). Returns how many were refused.
    pub fn seal_burst<F: AsMut<[u8]>>(
        &mut self,
        engine: &mut dyn Engine,
        burst: &mut Burst,
        frames: &mut [F],
        at: usize,
    ) -> usize {
        burst.sealed.clear();
        if burst.seals.is_empty() {
            return 0;
        }
        self.compress_queued(engine, burst, frames, at);
        let mut jobs: Vec<SealJob<'_>> = reuse(&mut burst.spare_seal);
        let mut want = burst.seals.iter().peekable();
        for (slot, frame) in frames.iter_mut().enumerate() {
            let Some((_, d)) = want.next_if(|(s, _)| *s == slot) else {
                continue;
            };
            // Every queued message gets a job, so results stay in step with `seals`; one
            // whose frame cannot hold its header gets an empty buffer, which the engine
            // refuses.
            match frame.as_mut().get_mut(at..) {
                Some(msg) if msg.len() >= DATA_HEADER_LEN => jobs.push(d.job(msg)),
                _ => jobs.push(SealJob {
                    key: &d.key,
                    nonce: d.nonce,
                    aad: &[],
                    buf: &mut [],
                    len: d.len,
                    ok: false,
                }),
            }
        }
        engine.seal(&mut jobs);
        let mut refused = 0;
        let mut results = jobs.iter().map(|j| j.ok);
        for (slot, d) in &burst.seals {
            let ok = results.next().unwrap_or(false);
            refused += usize::from(!ok);
            burst.sealed.push(Sealed {
                slot: *slot,
                len: ok.then_some(DATA_HEADER_LEN + d.len + TAG_LEN),
            });
        }
        jobs.clear();
        burst.spare_seal = reuse(&mut jobs);
        burst.seals.clear();
        refused
    }

    /// The compression step of [`Tunnel::seal_burst`]: one engine batch for the queued
    /// messages that want it; a smaller result replaces the payload (the header says LZ4).
    fn compress_queued<F: AsMut<[u8]>>(
        &mut self,
        engine: &mut dyn Engine,
        burst: &mut Burst,
        frames: &mut [F],
        at: usize,
    ) {
        let n = burst.seals.iter().filter(|(_, d)| d.compress).count();
        if n == 0 {
            return;
        }
        burst.grow_lz4(n);
        let mut jobs: Vec<CompressJob<'_>> = reuse(&mut burst.spare_compress);
        let mut outs = burst.lz4.iter_mut();
        let mut want = burst.seals.iter().filter(|(_, d)| d.compress).peekable();
        for (slot, frame) in frames.iter_mut().enumerate() {
            let Some((_, d)) = want.next_if(|(s, _)| *s == slot) else {
                continue;
            };
            let Some(dst) = outs.next() else { break };
            let from = at + DATA_HEADER_LEN;
            let src = frame.as_mut().get(from..from + d.len).unwrap_or_default();
            jobs.push(CompressJob {
                src,
                dst,
                out_len: None,
            });
        }
        engine.compress(&mut jobs);
        burst.lz4_lens.clear();
        burst.lz4_lens.extend(jobs.iter().map(|j| j.out_len));
        jobs.clear();
        burst.spare_compress = reuse(&mut jobs);
        let mut results = burst.lz4_lens.iter().zip(&burst.lz4);
        for (slot, d) in burst.seals.iter_mut().filter(|(_, d)| d.compress) {
            let (Some((&out_len, out)), Some(msg)) = (results.next(), message(frames, *slot, at))
            else {
                d.compress = false;
                continue;
            };
            let before = d.len;
            let saved = d.apply_compressed(msg, out_len.map(|n| &out[..n]));
            self.record_deferred_compression(d, before, saved);
        }
    }

    /// Compresses (when wanted) and seals one message alone, now, in place at the start of
    /// `msg`: for a message that cannot wait for its burst (its frame is parked until the
    /// next hop answers ARP; a packet staged during the handshake). Returns the message's
    /// final length, or `None` when the engine refused it (not to be sent).
    pub fn seal_alone(
        &mut self,
        engine: &mut dyn Engine,
        mut d: DeferredSeal,
        msg: &mut [u8],
    ) -> Option<usize> {
        if d.compress {
            let before = d.len;
            let src = msg.get(DATA_HEADER_LEN..DATA_HEADER_LEN + before)?;
            let mut job = [CompressJob {
                src,
                dst: &mut self.scratch[..],
                out_len: None,
            }];
            engine.compress(&mut job);
            let n = job[0].out_len;
            let saved = d.apply_compressed(msg, n.map(|n| &self.scratch[..n]));
            self.record_deferred_compression(&d, before, saved);
        }
        let mut job = [d.job(msg)];
        engine.seal(&mut job);
        job[0].ok.then_some(DATA_HEADER_LEN + d.len + TAG_LEN)
    }

    /// Opens every message queued in `burst` (in place in `frames` at offset `at`, with the
    /// key of the session each names), accepts each in order (replay window, endpoint,
    /// session confirmation), and decompresses the LZ4 payloads: one engine batch for the
    /// opens, one for the decompressions. [`Burst::delivered`] then lists the inner packets,
    /// each in its own frame at `at`; everything else was dropped and counted.
    pub fn open_burst<F: AsMut<[u8]>>(
        &mut self,
        engine: &mut dyn Engine,
        burst: &mut Burst,
        frames: &mut [F],
        at: usize,
        now: Duration,
    ) {
        burst.delivered.clear();
        if burst.opens.is_empty() {
            return;
        }
        // `opened` first says which messages have a job (a session gone since has none and
        // fails), then whether each authenticated.
        burst.opened.clear();
        let mut jobs: Vec<OpenJob<'_>> = reuse(&mut burst.spare_open);
        let mut want = burst.opens.iter().peekable();
        for (slot, frame) in frames.iter_mut().enumerate() {
            let Some((_, d)) = want.next_if(|(s, _)| *s == slot) else {
                continue;
            };
            let job = frame
                .as_mut()
                .get_mut(at..)
                .and_then(|msg| self.open_job(d, msg));
            burst.opened.push(job.is_some());
            jobs.extend(job);
        }
        engine.open(&mut jobs);
        let mut results = jobs.iter().map(|j| j.ok);
        for ok in burst.opened.iter_mut().filter(|has_job| **has_job) {
            *ok = results.next().unwrap_or(false);
        }
        jobs.clear();
        burst.spare_open = reuse(&mut jobs);
        burst.accepted.clear();
        for (&(slot, ref d), &ok) in burst.opens.iter().zip(&burst.opened) {
            burst
                .accepted
                .push((slot, self.accept_open(d, ok, now).ok()));
        }
        burst.opens.clear();
        self.decompress_accepted(engine, burst, frames, at);
        for &(slot, a) in &burst.accepted {
            let Some(a) = a else { continue };
            if a.control {
                self.counters.control_received += 1;
                burst.delivered.push(Delivered {
                    slot,
                    peer: a.peer,
                    len: a.len,
                    control: true,
                });
            } else if let Action::Deliver { peer, len } = self.delivered(a.peer, a.len) {
                burst.delivered.push(Delivered {
                    slot,
                    peer,
                    len,
                    control: false,
                });
            }
        }
    }

    /// The decompression step of [`Tunnel::open_burst`]: one engine batch for the accepted
    /// LZ4 payloads, each from a copy back into its own frame; a payload that does not
    /// decompress is dropped and counted.
    fn decompress_accepted<F: AsMut<[u8]>>(
        &mut self,
        engine: &mut dyn Engine,
        burst: &mut Burst,
        frames: &mut [F],
        at: usize,
    ) {
        let n = burst
            .accepted
            .iter()
            .filter(|(_, a)| a.is_some_and(|a| a.compressed))
            .count();
        if n == 0 {
            return;
        }
        burst.grow_lz4(n);
        let mut jobs: Vec<DecompressJob<'_>> = reuse(&mut burst.spare_decompress);
        let mut scratch = burst.lz4.iter_mut();
        let mut want = burst
            .accepted
            .iter()
            .filter_map(|&(slot, a)| a.filter(|a| a.compressed).map(|a| (slot, a.len)))
            .peekable();
        for (slot, frame) in frames.iter_mut().enumerate() {
            let Some((_, len)) = want.next_if(|&(s, _)| s == slot) else {
                continue;
            };
            let Some(src) = scratch.next() else { break };
            let msg = frame.as_mut().get_mut(at..).unwrap_or_default();
            if len > src.len() || len > msg.len() {
                // Longer than any payload that decompresses to an inner packet.
                jobs.push(DecompressJob {
                    src: &[],
                    dst: &mut msg[..0],
                    out_len: None,
                });
                continue;
            }
            src[..len].copy_from_slice(&msg[..len]);
            let cap = MAX_INNER.min(msg.len());
            jobs.push(DecompressJob {
                src: &src[..len],
                dst: &mut msg[..cap],
                out_len: None,
            });
        }
        engine.decompress(&mut jobs);
        burst.lz4_lens.clear();
        burst.lz4_lens.extend(jobs.iter().map(|j| j.out_len));
        jobs.clear();
        burst.spare_decompress = reuse(&mut jobs);
        let mut results = burst.lz4_lens.iter();
        for (_, a) in &mut burst.accepted {
            let Some(acc) = a.as_mut().filter(|a| a.compressed) else {
                continue;
            };
            match results.next().copied().flatten() {
                Some(n) => {
                    acc.len = n;
                    acc.compressed = false;
                }
                None => {
                    self.undecodable();
                    *a = None;
                }
            }
        }
    }
}
