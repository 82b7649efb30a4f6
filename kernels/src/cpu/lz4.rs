//! LZ4 block compression with state reused from packet to packet, so none is allocated per
//! packet: below 4 KiB through liblz4 (`lz4-sys` builds and links it), whose
//! `LZ4_compress_fast_extState_fastReset` keeps its hash table between packets and clears it
//! only when it must; from 4 KiB (jumbo frames), where liblz4 clears its 16 KiB table for
//! every input, through `lz4_flex` with a kept 8 KiB table it clears per packet. The output
//! is a standard LZ4 block (`lz4_flex` and the GPU decompress it).

use std::cell::RefCell;
use std::os::raw::{c_char, c_int, c_void};

/// Inputs from this size on go to `lz4_flex` (liblz4 clears its larger table for each of them).
pub const LIBLZ4_BELOW: usize = 4096;

// liblz4's own API (lz4.h), in the static library `lz4-sys` builds; `lz4-sys` binds only the
// older entry points.
unsafe extern "C" {
    fn LZ4_sizeofState() -> c_int;
    fn LZ4_initStream(buffer: *mut c_void, size: usize) -> *mut c_void;
    fn LZ4_compress_fast_extState_fastReset(
        state: *mut c_void,
        src: *const c_char,
        dst: *mut c_char,
        src_size: c_int,
        dst_capacity: c_int,
        acceleration: c_int,
    ) -> c_int;
}

/// An LZ4 compression state: liblz4's `LZ4_stream_t` (16 KiB), initialised once, and
/// `lz4_flex`'s table for large inputs (8 KiB).
pub struct Compressor {
    /// `u64`s for the state's 8-byte alignment.
    state: Box<[u64]>,
    table: lz4_flex::block::CompressTable,
}

impl Compressor {
    /// A fresh state.
    pub fn new() -> Self {
        // Keep `lz4-sys` (and with it the static liblz4) on the link line.
        let _ = lz4_sys::LZ4_compressBound as unsafe extern "C" fn(c_int) -> c_int;
        // SAFETY: no arguments; returns a constant size.
        let bytes = usize::try_from(unsafe { LZ4_sizeofState() }).unwrap_or(0);
        let mut state = vec![0u64; bytes.div_ceil(8)].into_boxed_slice();
        // SAFETY: `state` is `bytes` (rounded up) writable bytes, 8-byte aligned, ours alone.
        let init = unsafe { LZ4_initStream(state.as_mut_ptr().cast(), bytes) };
        assert!(
            !init.is_null(),
            "LZ4_initStream refused a {bytes}-byte state"
        );
        Self {
            state,
            table: lz4_flex::block::CompressTable::small(),
        }
    }

    /// Compresses `src` into `dst` when the block comes out shorter than `src`: its length,
    /// else `None` (nothing to gain, or `src` too large for LZ4).
    pub fn compress(&mut self, src: &[u8], dst: &mut [u8]) -> Option<usize> {
        if src.len() >= LIBLZ4_BELOW {
            // Jumbo inputs are under 64 KiB, so the small table is never swapped for a larger
            // one (which would allocate).
            return lz4_flex::block::compress_into_with_table(src, dst, &mut self.table)
                .ok()
                .filter(|&n| n < src.len());
        }
        // Only a shorter block is of use: let liblz4 give up past `src.len() - 1` bytes.
        let cap = dst.len().min(src.len().checked_sub(1)?);
        let src_size = c_int::try_from(src.len()).ok()?;
        let cap = c_int::try_from(cap).ok()?;
        // SAFETY: the state was initialised by `LZ4_initStream` and only ever passed to this
        // function, which leaves it valid for the next call ("fastReset"); `src` is readable
        // for `src_size` bytes and `dst` writable for `cap` (≤ its length) bytes, and neither
        // overlaps the state. liblz4 writes at most `cap` bytes and returns 0 when the block
        // does not fit.
        let n = unsafe {
            LZ4_compress_fast_extState_fastReset(
                self.state.as_mut_ptr().cast(),
                src.as_ptr().cast(),
                dst.as_mut_ptr().cast(),
                src_size,
                cap,
                1,
            )
        };
        usize::try_from(n).ok().filter(|&n| n > 0)
    }
}

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    /// Each thread's state (a worker's, a bench thread's): allocated on its first compression.
    static STATE: RefCell<Compressor> = RefCell::new(Compressor::new());
}

/// [`Compressor::compress`] with the calling thread's state.
pub fn compress(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    STATE.with(|s| s.borrow_mut().compress(src, dst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::Rng;

    #[test]
    fn blocks_decompress_with_lz4_flex_and_only_shorter_ones_are_kept() {
        let mut c = Compressor::new();
        let mut rng = Rng(7);
        let text: Vec<u8> = b"GET /ckpt/layer-0017/shard-0003 HTTP/1.1\r\n"
            .iter()
            .copied()
            .cycle()
            .take(9216)
            .collect();
        let mut dst = vec![0u8; crate::compress_bound(9216)];
        // Many sizes in a row through one state: stale table entries must never leak into a
        // later block.
        for round in 0..2000 {
            let len = rng.below(9217);
            let mut src = text[..len].to_vec();
            if round % 3 == 0 {
                rng.fill(&mut src);
            }
            match c.compress(&src, &mut dst) {
                Some(n) => {
                    assert!(n < len);
                    let back = lz4_flex::block::decompress(&dst[..n], len).unwrap();
                    assert_eq!(back, src, "round {round}, {len} bytes");
                }
                None => {
                    let reference = lz4_flex::block::compress(&src).len();
                    assert!(
                        reference + 16 >= len,
                        "round {round}: lz4_flex makes {reference} of {len}"
                    );
                }
            }
        }
        assert_eq!(c.compress(&[], &mut dst), None);
        assert_eq!(c.compress(&text[..1000], &mut []), None);
    }

    #[test]
    fn a_short_output_buffer_is_never_overrun() {
        let long_run = vec![b'a'; 4000];
        let mut rand = vec![0u8; 4000];
        Rng(3).fill(&mut rand);
        // The run fits in 40 bytes, not in 10; random data fits in neither.
        for (src, cap, fits) in [
            (&long_run, 40, true),
            (&long_run, 10, false),
            (&rand, 40, false),
        ] {
            let mut dst = [0xEEu8; 64];
            let got = compress(src, &mut dst[..cap]);
            assert_eq!(got.is_some(), fits, "{cap}");
            assert!(got.is_none_or(|n| n <= cap));
            assert!(dst[cap..].iter().all(|&b| b == 0xEE), "written past {cap}");
        }
    }
}
