//! What the fuzz targets share: the host build of the GPU's LZ4 device functions, and a
//! pair of gateways to send frames to.

pub mod net;

use std::os::raw::c_int;

unsafe extern "C" {
    fn dwcp_fuzz_order(order: u64);
    fn dwcp_fuzz_lz4(which: c_int, src: *const u8, len: u32, out: *mut u8, cap: u32) -> c_int;
}

/// Sets the order the SIMT emulator runs a warp's lanes in between two barriers from a hash
/// of `input`: by lane, backwards, or (half the inputs) a random order every sweep seeded by
/// the hash. A GPU promises none, so the kernels must write the same bytes in every order;
/// the targets compare them with order-free references, and the input names its order, so a
/// crash reruns as it happened.
pub fn schedule(input: &[u8]) {
    // FNV-1a.
    let h = input.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let order = match h % 4 {
        0 => 0,
        1 => 1,
        _ => h | 2,
    };
    // SAFETY: only sets the emulator's order; no kernel runs concurrently (one fuzz thread).
    unsafe { dwcp_fuzz_order(order) };
}

/// Largest input or output the device functions are called with here.
pub const DEVICE_LIMIT: usize = 1 << 17;

/// What one of the device's LZ4 codes made of an input.
#[derive(Debug, PartialEq, Eq)]
pub enum Device {
    /// It wrote this many bytes.
    Wrote(usize),
    /// It refused (malformed input, or output that does not fit).
    Refused,
}

/// The device's LZ4 codes (the shim's `which`).
#[derive(Clone, Copy, Debug)]
pub enum Code {
    /// `lz4_decompress_block`: the serial form, what the thread-per-packet `lz4_decompress`
    /// kernel runs.
    Decompress = 0,
    /// The `lz4_decompress_warp` kernel (the engine's) on one warp under the SIMT emulator.
    DecompressWarp = 1,
    /// `lz4_compress_block`: the serial reference of the GPU's compressor.
    Compress = 2,
    /// The `lz4_compress` kernel (one warp a packet) under the SIMT emulator.
    CompressWarp = 3,
}

/// Runs `code` on `src` into `out` (its length is the capacity). Panics when a warp's lanes
/// diverged (a barrier, vote or shuffle not every lane reached at the same place).
pub fn device(code: Code, src: &[u8], out: &mut [u8]) -> Device {
    assert!(
        src.len() <= DEVICE_LIMIT && out.len() <= DEVICE_LIMIT,
        "past DEVICE_LIMIT"
    );
    let len = u32::try_from(src.len()).expect("under DEVICE_LIMIT");
    let cap = u32::try_from(out.len()).expect("under DEVICE_LIMIT");
    // SAFETY: `src` is readable for `len` bytes and `out` writable for `cap` bytes; the shim
    // copies `src` into its own guarded buffer, runs the code there with an output of `cap`
    // bytes and copies at most `cap` bytes of result into `out`.
    let r = unsafe { dwcp_fuzz_lz4(code as c_int, src.as_ptr(), len, out.as_mut_ptr(), cap) };
    match r {
        -1 => Device::Refused,
        -3 => panic!("{code:?}: the warp's lanes diverged (a barrier, vote or shuffle)"),
        _ => {
            let n = usize::try_from(r).unwrap_or_else(|_| panic!("the shim refused ({r})"));
            assert!(n <= out.len(), "{code:?} says it wrote {n} of {cap} bytes");
            Device::Wrote(n)
        }
    }
}

unsafe extern "C" {
    fn dwcp_fuzz_gcm(
        seal: c_int,
        key: *const u8,
        nonce: *const u8,
        aad: *const u8,
        aad_len: u32,
        buf: *mut u8,
        len: u32,
        ok: *mut u8,
    ) -> c_int;
}

/// The GPU's `gcm_seal` kernel on one packet (its key expanded by `gcm_key_setup`), under the
/// SIMT emulator: the kernel's ok flag, and the ciphertext and tag.
pub fn device_seal(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> (bool, Vec<u8>) {
    let mut buf = plaintext.to_vec();
    buf.resize(plaintext.len() + 16, 0);
    let ok = gcm(true, key, nonce, aad, &mut buf, plaintext.len());
    (ok, buf)
}

/// The GPU's `gcm_open` kernel on one packet of ciphertext and tag: the kernel's ok flag, and
/// the plaintext (zeroed when the tag does not verify).
pub fn device_open(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], sealed: &[u8]) -> (bool, Vec<u8>) {
    let mut buf = sealed.to_vec();
    let ok = gcm(false, key, nonce, aad, &mut buf, sealed.len());
    buf.truncate(sealed.len().saturating_sub(16));
    (ok, buf)
}

fn gcm(
    seal: bool,
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    buf: &mut [u8],
    len: usize,
) -> bool {
    assert!(aad.len() + buf.len() <= DEVICE_LIMIT, "past DEVICE_LIMIT");
    let aad_len = u32::try_from(aad.len()).expect("under DEVICE_LIMIT");
    let len_u32 = u32::try_from(len).expect("under DEVICE_LIMIT");
    let mut ok = 0u8;
    // SAFETY: `key` is 32 bytes and `nonce` 12, `aad` readable for `aad_len` bytes; `buf` is
    // readable for `len` bytes and writable for `len + 16` when sealing (the tag), `len`
    // when opening, which is what the shim copies back.
    let r = unsafe {
        dwcp_fuzz_gcm(
            c_int::from(seal),
            key.as_ptr(),
            nonce.as_ptr(),
            aad.as_ptr(),
            aad_len,
            buf.as_mut_ptr(),
            len_u32,
            &raw mut ok,
        )
    };
    match r {
        0 => {}
        -3 => panic!("gcm (seal {seal}): the warp's lanes diverged (a barrier or shuffle)"),
        _ => panic!("the shim refused ({r})"),
    }
    assert!(ok <= 1, "the kernel left its ok flag unset ({ok:#x})");
    ok == 1
}
