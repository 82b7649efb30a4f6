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
                &["lz4_compress", "lz4_decompress"]
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
