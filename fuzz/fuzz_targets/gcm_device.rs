//! The GPU's AES-256-GCM kernels against the CPU engine on any key, nonce, AAD and payload:
//! `gcm_seal` writes the CPU engine's bytes, and `gcm_open` accepts exactly what the CPU engine
//! accepts (a sealed packet, never one with a bit of its AAD, ciphertext or tag changed, nor
//! any bytes the fuzzer makes up) and then gives the same plaintext.
//!
//! Input: key (32 bytes), nonce (12), AAD length (1), what to change (1: its low bit says
//! whether to change a byte, and the byte XOR-ed in is it with the low bit set), where (2,
//! little-endian), then the AAD and the payload. The warp's lanes run in the order a hash of the
//! whole input picks ([`dwcp_fuzz::schedule`]).
#![no_main]

use dwcp_fuzz::{device_open, device_seal};
use dwcp_kernels::cpu::CpuEngine;
use dwcp_kernels::{AeadKey, Engine, OpenJob, SealJob};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    dwcp_fuzz::schedule(input);
    if input.len() < 48 {
        return;
    }
    let (head, rest) = input.split_at(48);
    let key: [u8; 32] = head[..32].try_into().expect("32 bytes");
    let nonce: [u8; 12] = head[32..44].try_into().expect("12 bytes");
    let aad_len = usize::from(head[44]).min(rest.len());
    let (change, at) = (
        head[45],
        usize::from(u16::from_le_bytes([head[46], head[47]])),
    );
    let (aad, payload) = rest.split_at(aad_len);
    let cpu_key = AeadKey::new(&key);
    let mut cpu = CpuEngine;

    // Seal: the same bytes.
    let mut sealed = payload.to_vec();
    sealed.resize(payload.len() + 16, 0);
    let mut job = [SealJob {
        key: &cpu_key,
        nonce,
        aad,
        buf: &mut sealed,
        len: payload.len(),
        ok: false,
    }];
    cpu.seal(&mut job);
    assert!(job[0].ok, "the CPU engine refused to seal");
    let (gpu_ok, gpu_sealed) = device_seal(&key, &nonce, aad, payload);
    assert!(gpu_ok, "gcm_seal says it did not seal");
    assert!(
        gpu_sealed == sealed,
        "gcm_seal's bytes are not the CPU engine's"
    );

    // Open what was sealed, with one byte of the AAD, ciphertext or tag changed if asked.
    let mut aad = aad.to_vec();
    let changed = change & 1 == 1;
    if changed {
        let at = at % (aad.len() + sealed.len());
        let byte = if at < aad.len() {
            &mut aad[at]
        } else {
            &mut sealed[at - aad.len()]
        };
        *byte ^= change | 1;
    }
    open_both(
        &cpu_key,
        &key,
        &nonce,
        &aad,
        &sealed,
        Some((changed, payload)),
    );
    // And the payload itself as a sealed packet: made-up bytes.
    open_both(&cpu_key, &key, &nonce, &aad, payload, None);
});

/// Opens `sealed` on both engines: the same verdict and plaintext; when `expect` is given,
/// refused exactly when a byte was changed, else giving `expect`'s plaintext.
fn open_both(
    cpu_key: &AeadKey,
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    sealed: &[u8],
    expect: Option<(bool, &[u8])>,
) {
    let mut buf = sealed.to_vec();
    let mut job = [OpenJob {
        key: cpu_key,
        nonce: *nonce,
        aad,
        buf: &mut buf,
        len: sealed.len(),
        ok: false,
    }];
    CpuEngine.open(&mut job);
    let cpu_ok = job[0].ok;
    let (gpu_ok, plain) = device_open(key, nonce, aad, sealed);
    assert_eq!(
        gpu_ok, cpu_ok,
        "gcm_open and the CPU engine disagree on the tag"
    );
    if cpu_ok {
        assert!(
            plain[..] == buf[..sealed.len() - 16],
            "gcm_open's plaintext is not the CPU engine's"
        );
    } else {
        assert!(
            plain.iter().all(|&b| b == 0),
            "gcm_open left a refused packet's plaintext"
        );
    }
    if let Some((changed, payload)) = expect {
        assert_eq!(
            gpu_ok, !changed,
            "changed {changed}, yet gcm_open says {gpu_ok}"
        );
        if gpu_ok {
            assert!(
                plain == payload,
                "the opened plaintext is not what was sealed"
            );
        }
    }
}
