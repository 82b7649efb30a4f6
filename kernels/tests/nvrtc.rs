//! Every CUDA source compiles with NVRTC, on any machine (no GPU or driver needed). The test
//! command installs NVRTC (`scripts/setup.sh` unpacks the `nvidia-cuda-nvrtc` wheel); without
//! it this test fails and says so.
#![allow(clippy::tests_outside_test_module)]

use dwcp_kernels::cuda;

#[test]
fn every_cuda_source_compiles_with_nvrtc() {
    let Some(from) = cuda::ensure_nvrtc() else {
        panic!(
            "NVRTC (libnvrtc.so.13) not found: run scripts/setup.sh, which unpacks the \
             nvidia-cuda-nvrtc wheel into ~/.cache/dwcp/nvrtc, or set DWCP_NVRTC"
        );
    };
    eprintln!("NVRTC from {from}");
    for arch in ["compute_80", "compute_90"] {
        for (file, src) in cuda::sources() {
            let ptx = cuda::compile(file, &src, arch)
                .unwrap_or_else(|e| panic!("{file} for {arch}: {e}"));
            let want: &[&str] = if file == "gcm.cu" {
                &["gcm_key_setup", "gcm_seal", "gcm_open"]
            } else {
                &["lz4_compress", "lz4_decompress", "lz4_decompress_warp"]
            };
            for entry in want {
                assert!(
                    ptx.contains(&format!(".entry {entry}")),
                    "{file}: no kernel {entry} in the PTX"
                );
            }
            assert!(
                ptx.contains(&format!(".target sm_{}", &arch[8..])),
                "{file}: target"
            );
        }
    }
}

#[test]
fn a_broken_source_is_reported_with_nvrtc_log() {
    if cuda::ensure_nvrtc().is_none() {
        panic!("NVRTC not found: run scripts/setup.sh");
    }
    let err = cuda::compile(
        "broken.cu",
        "extern \"C\" __global__ void k() { undefined_thing(); }",
        "compute_90",
    )
    .expect_err("must not compile");
    let msg = err.to_string();
    assert!(
        msg.contains("broken.cu") && msg.contains("undefined_thing"),
        "{msg}"
    );
}

/// The compiler's view of every kernel for A100 (`sm_80`) and H100/H200 (`sm_90`), from
/// ptxas's report through NVRTC (no GPU): no kernel spills registers or keeps a stack frame
/// (local memory, slow), each fits the block size it is launched with, and the table of
/// registers, shared memory and resident warps per multiprocessor is printed.
#[test]
fn every_kernel_fits_its_launch_without_spilling() {
    if cuda::ensure_nvrtc().is_none() {
        panic!("NVRTC not found: run scripts/setup.sh");
    }
    let define = |name: &str| -> u32 {
        cuda::LZ4_SOURCE
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in lz4.cu"))
    };
    assert_eq!(
        define("LZ4_COMPRESS_WARPS") * 32,
        cuda::LZ4_COMPRESS_BLOCK,
        "lz4.cu's shared tables are per warp of a block: LZ4_COMPRESS_WARPS warps must be the launch block"
    );
    assert_eq!(define("LZ4_DECOMPRESS_THREADS"), cuda::LZ4_DECOMPRESS_BLOCK);
    assert_eq!(
        define("LZ4_DECOMPRESS_WARPS") * 32,
        cuda::LZ4_DECOMPRESS_WARP_BLOCK,
        "lz4_decompress_warp strides over packets by LZ4_DECOMPRESS_WARPS warps per block: it must be the launch block"
    );
    eprintln!("arch    kernel              block  regs  smem B  warps/SM");
    for sm in ["sm_80", "sm_90"] {
        let limits = cuda::SmLimits::of(sm).expect("known architecture");
        let mut seen = Vec::new();
        for (file, src) in cuda::sources() {
            let report = cuda::resources(file, &src, sm).unwrap_or_else(|e| panic!("{e}"));
            for k in report {
                let block = cuda::launch_block(&k.kernel)
                    .unwrap_or_else(|| panic!("{file}: kernel {} is never launched", k.kernel));
                let warps = k.resident_warps(block, limits);
                eprintln!(
                    "{sm}   {:<19} {block:>5} {:>5} {:>7} {warps:>9}",
                    k.kernel, k.registers, k.shared_bytes
                );
                assert!(k.registers > 0, "{sm} {}: no register count read", k.kernel);
                assert_eq!(
                    (k.spill_bytes, k.stack_bytes),
                    (0, 0),
                    "{sm} {}: spills or stack frame (local memory)",
                    k.kernel
                );
                assert!(
                    k.shared_bytes <= 48 * 1024,
                    "{sm} {}: static shared memory over 48 KiB",
                    k.kernel
                );
                assert!(
                    warps >= block / 32,
                    "{sm} {}: not even one block of {block} fits a multiprocessor",
                    k.kernel
                );
                seen.push(k.kernel);
            }
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "gcm_key_setup",
                "gcm_open",
                "gcm_seal",
                "lz4_compress",
                "lz4_decompress",
                "lz4_decompress_warp"
            ],
            "{sm}: the kernels reported"
        );
    }
}
