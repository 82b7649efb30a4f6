//! A burst's output frames: buffers allocated once (from the hugepage pool in the data-plane
//! process), the frames the gateway builds in them, and the burst's DWCP messages in those
//! frames, which the tunnel seals and opens a burst at a time.

use super::{FRAME_MAX, Side};
use crate::proto::tunnel::Burst;

/// No RDMA: the frame goes out of a port.
const NOT_RDMA: u8 = u8::MAX;

/// Where a drained frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Out of the LAN or WAN port, as built.
    Port(Side),
    /// Its DWCP message (from `OUTER_HEADERS` to the frame's end) as an RDMA SEND on the
    /// worker's queue pair to this peer (by index).
    Rdma(u8),
}

/// Output frames of one burst, in buffers allocated once (from the hugepage pool in the
/// data-plane process), and the burst's DWCP messages in them, which the tunnel seals and
/// opens a burst at a time ([`Burst`]).
pub struct TxBatch {
    pub(super) bufs: Vec<crate::io::Buffer>,
    pub(super) lens: Vec<(Side, usize)>,
    /// Per frame: the peer whose RDMA queue pair carries its DWCP message (at
    /// `OUTER_HEADERS`, without the outer headers), or [`NOT_RDMA`].
    pub(super) rdma: Vec<u8>,
    /// The DWCP messages in the frames (at `OUTER_HEADERS`): outgoing ones still in
    /// plaintext, sealed by [`super::Gateway::finish_burst`], which [`super::Gateway::drain`] — the only
    /// way out — runs first; received ones in reserved slots (committed with length 0),
    /// opened there.
    pub(super) burst: Burst,
    /// Frames not built because every buffer was taken (counted, never silent).
    no_room: u64,
}

impl TxBatch {
    /// Room for `capacity` frames on the heap (tests, benchmarks).
    pub fn new(capacity: usize) -> Self {
        Self::with_buffers(
            (0..capacity)
                .map(|_| crate::io::Buffer::heap(FRAME_MAX))
                .collect(),
        )
    }
    /// Frames in the given buffers (each at least `FRAME_MAX` long).
    pub fn with_buffers(bufs: Vec<crate::io::Buffer>) -> Self {
        let bufs: Vec<crate::io::Buffer> = bufs
            .into_iter()
            .filter(|b| b.bytes().len() >= FRAME_MAX)
            .collect();
        let n = bufs.len();
        Self {
            bufs,
            lens: Vec::with_capacity(n),
            rdma: Vec::with_capacity(n),
            burst: Burst::with_capacity(n),
            no_room: 0,
        }
    }

    /// The frames queued, in order (after [`super::Gateway::finish_burst`]: a frame whose message
    /// is not sealed yet is not listed).
    pub fn frames(&self) -> impl Iterator<Item = (Side, &[u8])> {
        debug_assert!(
            self.burst.seals_pending() == 0,
            "frames() before finish_burst()"
        );
        self.lens
            .iter()
            .zip(&self.bufs)
            .filter(|((_, len), _)| *len > 0)
            .map(|(&(side, len), b)| (side, &b.bytes()[..len]))
    }
    /// Hands each queued frame's buffer and length to `f`, in order (a port may take the
    /// buffer and leave a fresh one), then forgets them. Messages still waiting for the
    /// tunnel (call [`super::Gateway::finish_burst`] first) are dropped, not sent, and counted in
    /// the return value.
    pub fn drain(&mut self, mut f: impl FnMut(Dest, &mut crate::io::Buffer, usize)) -> usize {
        let unfinished = self.burst.seals_pending() + self.burst.opens_pending();
        debug_assert!(unfinished == 0, "drain() before finish_burst()");
        if unfinished > 0 {
            // Never send a message that was not sealed.
            self.clear();
            return unfinished;
        }
        for ((&(side, len), &peer), buf) in
            self.lens.iter().zip(&self.rdma).zip(self.bufs.iter_mut())
        {
            if len > 0 {
                let dest = if peer == NOT_RDMA {
                    Dest::Port(side)
                } else {
                    Dest::Rdma(peer)
                };
                f(dest, buf, len);
            }
        }
        self.lens.clear();
        self.rdma.clear();
        0
    }
    /// Forgets the frames (after they were sent), sealed or not.
    pub fn clear(&mut self) {
        self.lens.clear();
        self.rdma.clear();
        self.burst.clear();
    }
    /// Number of frames.
    pub fn len(&self) -> usize {
        self.lens.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }
    pub(super) fn next_buf(&mut self) -> Option<&mut [u8; FRAME_MAX]> {
        self.buf_at(self.lens.len())
    }
    pub(super) fn buf_at(&mut self, slot: usize) -> Option<&mut [u8; FRAME_MAX]> {
        let buf = self
            .bufs
            .get_mut(slot)
            .and_then(|b| <&mut [u8; FRAME_MAX]>::try_from(&mut b.bytes_mut()[..FRAME_MAX]).ok());
        if buf.is_none() {
            self.no_room += 1;
        }
        buf
    }
    /// Frames dropped so far because the batch had no free buffer.
    pub fn no_room(&self) -> u64 {
        self.no_room
    }
    pub(super) fn commit(&mut self, side: Side, len: usize) {
        self.lens.push((side, len));
        self.rdma.push(NOT_RDMA);
    }
    /// Whether the frame in `slot` goes by RDMA.
    pub(super) fn is_rdma(&self, slot: usize) -> bool {
        self.rdma.get(slot).is_some_and(|&p| p != NOT_RDMA)
    }
    /// Commits the next frame, whose DWCP message goes by RDMA to `peer`.
    pub(super) fn commit_rdma(&mut self, peer: u8, len: usize) {
        self.lens.push((Side::Wan, len));
        self.rdma.push(peer);
    }
    /// Commits the frame in `slot`: the next one, or one reserved earlier.
    pub(super) fn place(&mut self, slot: usize, side: Side, len: usize) {
        match self.lens.get_mut(slot) {
            Some(l) => *l = (side, len),
            None => self.commit(side, len),
        }
    }
}
