//! Packet I/O behind one trait, so workers do not care where frames come from: `memory`
//! (paired in-process rings, for tests and benchmarks), `af_packet` (TPACKET_V3 mmap'ed
//! rings on a kernel interface) and `dpdk` (poll-mode drivers on vfio-bound NICs, or DPDK
//! virtual devices).

#[allow(unsafe_code)]
pub mod af_packet;
#[allow(unsafe_code)]
pub mod dpdk;
pub mod memory;
#[allow(unsafe_code)]
pub mod pool;

/// A packet buffer: from the start-up pool, the heap (tests, benchmarks), or the data room of
/// a DPDK mbuf that a DPDK port can send without copying.
pub enum Buffer {
    /// Owned heap memory.
    Heap(Box<[u8]>),
    /// A slice of the process-lifetime pool.
    Pool(&'static mut [u8]),
    /// An empty DPDK mbuf's data room (`data`), owned through `mbuf`; freed on drop unless a
    /// port took it ([`dpdk::TxMbuf`]).
    Mbuf(dpdk::TxMbuf),
}

impl Buffer {
    /// A zeroed heap buffer.
    pub fn heap(size: usize) -> Self {
        Buffer::Heap(vec![0u8; size].into_boxed_slice())
    }
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Buffer::Heap(b) => b,
            Buffer::Pool(b) => b,
            Buffer::Mbuf(m) => m.bytes(),
        }
    }
    /// The bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Buffer::Heap(b) => b,
            Buffer::Pool(b) => b,
            Buffer::Mbuf(m) => m.bytes_mut(),
        }
    }
}

impl AsMut<[u8]> for Buffer {
    fn as_mut(&mut self) -> &mut [u8] {
        self.bytes_mut()
    }
}

/// A port a worker polls.
pub trait PacketPort: Send {
    /// Receives up to `max` frames, handing each to `f` (borrowed from the backend's
    /// buffers, valid only during the call). Returns how many.
    fn rx_burst(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize;
    /// Queues one frame for sending; `false` when the TX ring is full (the frame is dropped
    /// and the caller counts it).
    fn tx(&mut self, frame: &[u8]) -> bool;
    /// Queues the first `len` bytes of `buf` for sending. A backend that can send the buffer
    /// itself (DPDK, for an mbuf buffer) takes it and puts a fresh one in its place; the
    /// others copy, as [`PacketPort::tx`].
    fn tx_buffer(&mut self, buf: &mut Buffer, len: usize) -> bool {
        buf.bytes().get(..len).is_some_and(|f| self.tx(f))
    }
    /// Hands the queued frames to the device (one system call for `af_packet`).
    fn flush(&mut self);
    /// Frames the device refused at flush since the last call (freed; the caller counts
    /// them as dropped).
    fn take_dropped(&mut self) -> u64 {
        0
    }
    /// The port's MAC address.
    fn mac(&self) -> [u8; 6];
}
