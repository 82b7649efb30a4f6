//! Runs `kernels/sim/host_check.cpp`, the kernels' device functions built for the host: the
//! serial reference of the GPU's LZ4 compressor and the GCM lanes (its header gives the
//! record formats).
#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Builds `host_check.cpp` once per test binary; the program's path.
pub fn harness() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = std::env::temp_dir().join(format!("dwcp-host-check-{}", std::process::id()));
        let status = Command::new("c++")
            .args(["-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&out)
            .arg("-I")
            .arg(root.join("cuda"))
            .arg(root.join("sim/host_check.cpp"))
            .status()
            .unwrap_or_else(|e| panic!("cannot run c++ (scripts/setup.sh installs it): {e}"));
        assert!(status.success(), "host_check.cpp does not compile");
        out
    })
}

/// Runs the host check in `mode` on `input` records; its results.
pub fn run(mode: &str, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(harness())
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run host_check");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("host_check output");
    writer.join().expect("writer").expect("write records");
    assert!(
        out.status.success(),
        "host_check {mode} failed: {:?}",
        out.status
    );
    out.stdout
}

/// `v` as the records' little-endian u32.
pub fn u32le(v: usize) -> [u8; 4] {
    u32::try_from(v).expect("fits").to_le_bytes()
}

/// The LZ4 results: per record, the output, or `None` where it did not fit.
pub fn lz4_results(mut out: &[u8]) -> Vec<Option<Vec<u8>>> {
    let mut r = Vec::new();
    while !out.is_empty() {
        let n = i32::from_le_bytes(out[..4].try_into().expect("len"));
        out = &out[4..];
        if n < 0 {
            r.push(None);
        } else {
            let n = usize::try_from(n).expect("non-negative");
            r.push(Some(out[..n].to_vec()));
            out = &out[n..];
        }
    }
    r
}

/// What the serial reference compressor makes of each of `inputs`, with room for `len - 1`
/// bytes as the CUDA engine gives the kernel.
pub fn reference_compress(inputs: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
    let mut rec = Vec::new();
    for s in inputs {
        rec.extend_from_slice(&u32le(s.len().saturating_sub(1)));
        rec.extend_from_slice(&u32le(s.len()));
        rec.extend_from_slice(s);
    }
    lz4_results(&run("lz4-compress", &rec))
}

/// Real text and code: this crate's own sources and the C++ beside them.
const TEXT: [&[u8]; 11] = [
    include_bytes!("../../src/dispatch/mod.rs"),
    include_bytes!("../../src/cuda/mod.rs"),
    include_bytes!("../../src/cuda/compile.rs"),
    include_bytes!("../../src/cuda/staging.rs"),
    include_bytes!("../../src/cuda/memory.rs"),
    include_bytes!("../../src/dispatch/accelerator.rs"),
    include_bytes!("../../src/gather.rs"),
    include_bytes!("../../src/bench.rs"),
    include_bytes!("../../cuda/lz4.cu"),
    include_bytes!("../../sim/sim_driver.cpp"),
    include_bytes!("../../cuda/gcm.cu"),
];

/// Consecutive `size`-byte pieces of [`TEXT`], at most `n`.
pub fn text_chunks(size: usize, n: usize) -> Vec<Vec<u8>> {
    TEXT.iter()
        .flat_map(|t| t.chunks_exact(size))
        .take(n)
        .map(<[u8]>::to_vec)
        .collect()
}
