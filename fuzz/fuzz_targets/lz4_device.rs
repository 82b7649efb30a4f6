//! The GPU's LZ4 code against `lz4_flex` on any bytes: both decompress kernels (the
//! thread-per-packet one's serial code, and the engine's `lz4_decompress_warp` on a warp under
//! the SIMT emulator) refuse exactly the blocks `lz4_flex` refuses and otherwise write the same
//! bytes (the live check of GPU batches counts any difference as a wrong GPU, so a peer's block
//! must not make one); the `lz4_compress` kernel writes its serial reference's bytes, which
//! decompress with `lz4_flex` to the input; and so do the CPU engine's blocks.
//!
//! Input: byte 0 picks the operation, bytes 1-2 the output capacity (little-endian), the rest
//! is the block or the data. The warp's lanes run in the order a hash of the whole input picks
//! ([`dwcp_fuzz::schedule`]).
#![no_main]

use dwcp_fuzz::{Code, Device, device};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    dwcp_fuzz::schedule(input);
    let [op, c0, c1, data @ ..] = input else {
        return;
    };
    let cap = usize::from(u16::from_le_bytes([*c0, *c1]));
    match op % 3 {
        0 => decompress(data, cap),
        1 => compress_on_the_device(data, cap),
        _ => compress_on_the_cpu(data, cap),
    }
});

fn decompress(block: &[u8], cap: usize) {
    let mut cpu = vec![0u8; cap];
    let flex = lz4_flex::block::decompress_into(block, &mut cpu);
    let mut gpu = vec![0u8; cap];
    for code in [Code::Decompress, Code::DecompressWarp] {
        gpu.fill(0);
        match (device(code, block, &mut gpu), &flex) {
            (Device::Wrote(n), Ok(m)) => {
                assert_eq!(n, *m, "{code:?}: lengths differ");
                assert!(gpu[..n] == cpu[..n], "{code:?}: outputs differ");
            }
            (Device::Refused, Err(_)) => {}
            (d, f) => panic!("{code:?} says {d:?}, lz4_flex {f:?}"),
        }
    }
}

fn compress_on_the_device(data: &[u8], cap: usize) {
    let mut reference = vec![0u8; cap];
    let mut kernel = vec![0u8; cap];
    let r = device(Code::Compress, data, &mut reference);
    let k = device(Code::CompressWarp, data, &mut kernel);
    assert_eq!(r, k, "the kernel and its serial reference disagree");
    match r {
        Device::Wrote(n) => {
            assert!(
                kernel[..n] == reference[..n],
                "the kernel's bytes are not the reference's"
            );
            let back = lz4_flex::block::decompress(&reference[..n], data.len())
                .expect("lz4_flex decompresses the device's block");
            assert!(
                back == data,
                "the device's block decompresses to other bytes"
            );
        }
        Device::Refused => assert!(
            cap < lz4_flex::block::get_maximum_output_size(data.len()),
            "the device refused {} bytes with room for the worst case ({cap})",
            data.len()
        ),
    }
}

fn compress_on_the_cpu(data: &[u8], cap: usize) {
    let mut out = vec![0u8; cap];
    if let Some(n) = dwcp_kernels::cpu::lz4::compress(data, &mut out) {
        assert!(n < data.len(), "a block no shorter than its input was kept");
        let back = lz4_flex::block::decompress(&out[..n], data.len())
            .expect("lz4_flex decompresses the CPU engine's block");
        assert!(
            back == data,
            "the CPU engine's block decompresses to other bytes"
        );
    }
}
