//! What the fuzz targets share: the host build of the GPU's LZ4 device functions, and a
//! pair of gateways to send frames to.

pub mod net;

use std::os::raw::c_int;

unsafe extern "C" {
    fn dwcp_fuzz_lz4_decompress(src: *const u8, len: u32, out: *mut u8, cap: u32) -> c_int;
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

fn device(
    f: unsafe extern "C" fn(*const u8, u32, *mut u8, u32) -> c_int,
    src: &[u8],
    out: &mut [u8],
) -> Device {
    assert!(
        src.len() <= DEVICE_LIMIT && out.len() <= DEVICE_LIMIT,
        "past DEVICE_LIMIT"
    );
    let len = u32::try_from(src.len()).expect("under DEVICE_LIMIT");
    let cap = u32::try_from(out.len()).expect("under DEVICE_LIMIT");
    // SAFETY: `src` is readable for `len` bytes and `out` writable for `cap` bytes; the shim
    // copies `src` into its own guarded buffer, runs the device function there with an
    // output of `cap` bytes and copies at most `cap` bytes of result into `out`.
    let r = unsafe { f(src.as_ptr(), len, out.as_mut_ptr(), cap) };
    match usize::try_from(r) {
        Ok(n) => {
            assert!(
                n <= out.len(),
                "the device function says it wrote {n} of {cap} bytes"
            );
            Device::Wrote(n)
        }
        Err(_) if r == -1 => Device::Refused,
        Err(_) => panic!("the shim refused the sizes ({r})"),
    }
}

/// The GPU's LZ4 decompressor (serial form) on `src`, into `out` (its length is the capacity).
pub fn device_decompress(src: &[u8], out: &mut [u8]) -> Device {
    device(dwcp_fuzz_lz4_decompress, src, out)
}

/// The GPU's LZ4 compressor (serial form) on `src`, into `out` (its length is the capacity).
pub fn device_compress(src: &[u8], out: &mut [u8]) -> Device {
    device(dwcp_fuzz_lz4_compress, src, out)
}
