//! The GPU's LZ4 code against `lz4_flex` on any bytes: both device decompressors (one thread a
//! packet, and the warp's 32 lanes, emulated in order or in reverse order) refuse exactly the
//! blocks `lz4_flex` refuses and otherwise write the same bytes (the live check of GPU batches
//! counts any difference as a wrong GPU, so a peer's block must not make one), and the device
//! compressor's and the CPU engine's blocks decompress with `lz4_flex` to the input.
//!
//! Input: byte 0 picks the operation, bytes 1-2 the output capacity (little-endian), the rest
//! is the block or the data.
#![no_main]

use dwcp_fuzz::{Device, device_compress, device_decompress, device_decompress_warp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let [op, c0, c1, data @ ..] = input else {
        return;
    };
    let cap = usize::from(u16::from_le_bytes([*c0, *c1]));
    match op % 4 {
        0 => decompress(data, cap, false),
        1 => compress_on_the_device(data, cap),
        2 => compress_on_the_cpu(data, cap),
        _ => decompress(data, cap, true),
    }
});

fn decompress(block: &[u8], cap: usize, reverse: bool) {
    let mut cpu = vec![0u8; cap];
    let flex = lz4_flex::block::decompress_into(block, &mut cpu);
    let mut gpu = vec![0u8; cap];
    for kernel in ["lz4_decompress", "lz4_decompress_warp"] {
        gpu.fill(0);
        let device = if kernel == "lz4_decompress" {
            device_decompress(block, &mut gpu)
        } else {
            device_decompress_warp(block, &mut gpu, reverse)
        };
        match (device, &flex) {
            (Device::Wrote(n), Ok(m)) => {
                assert_eq!(n, *m, "{kernel}: lengths differ");
                assert!(gpu[..n] == cpu[..n], "{kernel}: outputs differ");
            }
            (Device::Refused, Err(_)) => {}
            (d, f) => panic!("{kernel} says {d:?}, lz4_flex {f:?}"),
        }
    }
}

fn compress_on_the_device(data: &[u8], cap: usize) {
    let mut out = vec![0u8; cap];
    match device_compress(data, &mut out) {
        Device::Wrote(n) => {
            let back = lz4_flex::block::decompress(&out[..n], data.len())
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
    if let Some(n) = dwcp_kernels::lz4::compress(data, &mut out) {
        assert!(n < data.len(), "a block no shorter than its input was kept");
        let back = lz4_flex::block::decompress(&out[..n], data.len())
            .expect("lz4_flex decompresses the CPU engine's block");
        assert!(
            back == data,
            "the CPU engine's block decompresses to other bytes"
        );
    }
}
