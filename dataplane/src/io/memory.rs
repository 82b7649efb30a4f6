//! The `memory` backend: two ports joined back to back by lock-free rings, with buffers
//! recycled through a free list, so steady traffic allocates nothing.

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::PacketPort;

/// Largest frame a memory port or mailbox carries.
pub const FRAME_MAX: usize = 9472;

use crate::io::Buffer;

type Buf = (Buffer, usize);

/// A bounded, lock-free queue of frames with recycled buffers. Used for memory links and
/// for handing a frame to the worker that owns its session.
pub struct Mailbox {
    full: ArrayQueue<Buf>,
    free: ArrayQueue<Buffer>,
}

impl Mailbox {
    /// Room for `capacity` frames in heap buffers allocated now (tests, benchmarks).
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::with_buffers((0..capacity).map(|_| Buffer::heap(FRAME_MAX)).collect())
    }

    /// A mailbox over the given buffers (each at least `FRAME_MAX` long), one frame each.
    pub fn with_buffers(bufs: Vec<Buffer>) -> Arc<Self> {
        let capacity = bufs.len().max(1);
        let free = ArrayQueue::new(capacity);
        for b in bufs.into_iter().filter(|b| b.bytes().len() >= FRAME_MAX) {
            let _ = free.push(b);
        }
        Arc::new(Self {
            full: ArrayQueue::new(capacity),
            free,
        })
    }

    /// Copies a frame in; `false` when full or too large.
    pub fn push(&self, frame: &[u8]) -> bool {
        self.push_parts(&[], frame)
    }

    /// Copies a frame made of `head` then `body` in; `false` when full or too large.
    pub fn push_parts(&self, head: &[u8], body: &[u8]) -> bool {
        let len = head.len() + body.len();
        if len > FRAME_MAX {
            return false;
        }
        let Some(mut buf) = self.free.pop() else {
            return false;
        };
        buf.bytes_mut()[..head.len()].copy_from_slice(head);
        buf.bytes_mut()[head.len()..len].copy_from_slice(body);
        match self.full.push((buf, len)) {
            Ok(()) => true,
            Err((buf, _)) => {
                let _ = self.free.push(buf);
                false
            }
        }
    }

    /// Hands the oldest frame to `f`; `false` when empty.
    pub fn pop(&self, f: &mut dyn FnMut(&[u8])) -> bool {
        let Some((buf, len)) = self.full.pop() else {
            return false;
        };
        f(&buf.bytes()[..len]);
        let _ = self.free.push(buf);
        true
    }
}

/// One end of a memory link.
pub struct MemoryPort {
    mac: [u8; 6],
    tx: Arc<Mailbox>,
    rx: Arc<Mailbox>,
    /// Frames refused because the ring was full.
    pub tx_full: u64,
}

/// Two ports, each receiving what the other sends; `capacity` frames in flight per direction.
pub fn pair(capacity: usize, mac_a: [u8; 6], mac_b: [u8; 6]) -> (MemoryPort, MemoryPort) {
    let ab = Mailbox::new(capacity);
    let ba = Mailbox::new(capacity);
    (
        MemoryPort {
            mac: mac_a,
            tx: Arc::clone(&ab),
            rx: Arc::clone(&ba),
            tx_full: 0,
        },
        MemoryPort {
            mac: mac_b,
            tx: ba,
            rx: ab,
            tx_full: 0,
        },
    )
}

impl PacketPort for MemoryPort {
    fn rx_burst(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max && self.rx.pop(f) {
            n += 1;
        }
        n
    }

    fn tx(&mut self, frame: &[u8]) -> bool {
        let ok = self.tx.push(frame);
        if !ok {
            self.tx_full += 1;
        }
        ok
    }

    fn flush(&mut self) {}

    fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_in_order_and_buffers_recycle() {
        let (mut a, mut b) = pair(4, [1; 6], [2; 6]);
        for round in 0..10u8 {
            for i in 0..4u8 {
                assert!(a.tx(&[round, i, 9]));
            }
            assert!(!a.tx(&[0]), "ring full");
            let mut got = Vec::new();
            assert_eq!(b.rx_burst(8, &mut |f| got.push(f.to_vec())), 4);
            assert_eq!(got, (0..4).map(|i| vec![round, i, 9]).collect::<Vec<_>>());
        }
        assert_eq!(a.tx_full, 10);
        assert_eq!(b.rx_burst(8, &mut |_| {}), 0);
    }
}
