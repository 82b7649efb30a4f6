//! What the fuzz targets share: the host build of the GPU's LZ4 device functions, and a
//! pair of gateways to send frames to.

pub mod net;

use std::os::raw::c_int;

unsafe extern "C" {
    fn dwcp_fuzz_lz4_decompress(src: *const u8, len: u32, out: *mut u8, cap: u32) -> c_int;
    fn dwcp_fuzz_lz4_decompress_warp(
        src: *const u8,
        len: u32,
        out: *mut u8,
        cap: u32,
        reverse: c_int,
    ) -> c_int;
    fn dwcp_fuzz_lz4_compress(src: *const u8, len: u32, out: *mut u8, cap: u32) -> c_int;
}

/// Largest input or output the device functions are called with here.
pub const DEVICE_LIMIT: usize = 1 << 17;

/// What one of the device functions made of an input.
#[derive(Debug, PartialEq, Eq)]
pub enum Device {
    /// It wrote this many bytes.
    Wrote(usize),
    /// It refused (malformed input, or output that does not fit).
    Refused,
}

/// Which of the shim's device functions to call.
#[derive(Clone, Copy, Debug)]
enum Function {
    Decompress,
    DecompressWarp { reverse: bool },
    Compress,
}

fn device(f: Function, src: &[u8], out: &mut [u8]) -> Device {
    assert!(
        src.len() <= DEVICE_LIMIT && out.len() <= DEVICE_LIMIT,
        "past DEVICE_LIMIT"
    );
    let len = u32::try_from(src.len()).expect("under DEVICE_LIMIT");
    let cap = u32::try_from(out.len()).expect("under DEVICE_LIMIT");
    let (s, o) = (src.as_ptr(), out.as_mut_ptr());
    // SAFETY: `src` is readable for `len` bytes and `out` writable for `cap` bytes; the shim
    // copies `src` into its own guarded buffer, runs the device function there with an
    // output of `cap` bytes and copies at most `cap` bytes of result into `out`.
    let r = unsafe {
        match f {
            Function::Decompress => dwcp_fuzz_lz4_decompress(s, len, o, cap),
            Function::DecompressWarp { reverse } => {
                dwcp_fuzz_lz4_decompress_warp(s, len, o, cap, c_int::from(reverse))
            }
            Function::Compress => dwcp_fuzz_lz4_compress(s, len, o, cap),
        }
    };
    match r {
        -1 => Device::Refused,
        -3 => panic!("{f:?}: the warp's lanes diverged (a barrier or a result not shared)"),
        _ => {
            let n = usize::try_from(r).unwrap_or_else(|_| panic!("the shim refused ({r})"));
            assert!(n <= out.len(), "{f:?} says it wrote {n} of {cap} bytes");
            Device::Wrote(n)
        }
    }
}

/// The GPU's thread-per-packet LZ4 decompressor (`lz4_decompress`) on `src`, into `out` (its
/// length is the capacity).
pub fn device_decompress(src: &[u8], out: &mut [u8]) -> Device {
    device(Function::Decompress, src, out)
}

/// The GPU's warp decompressor (`lz4_decompress_warp`, the engine's): its 32 lanes emulated
/// one after another between barriers, in reverse order when `reverse`.
pub fn device_decompress_warp(src: &[u8], out: &mut [u8], reverse: bool) -> Device {
    device(Function::DecompressWarp { reverse }, src, out)
}

/// The GPU's LZ4 compressor (serial form) on `src`, into `out` (its length is the capacity).
pub fn device_compress(src: &[u8], out: &mut [u8]) -> Device {
    device(Function::Compress, src, out)
}
