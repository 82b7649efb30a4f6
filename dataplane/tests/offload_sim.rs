//! The data-plane pipeline with `offload.gpu = on` on a machine without a GPU: every seal,
//! open, compress and decompress batch goes through the CUDA engine (gathering thread, NVRTC
//! PTX, staging, both streams) to the simulated driver (`dwcp_kernels::sim`, which runs the
//! real kernels on the CPU), and every packet must arrive as the CPU engine delivers it. On a
//! GPU, `scripts/gpu-test.sh` runs the same check through the real driver.
#![allow(clippy::tests_outside_test_module)]

use dwcp_dataplane::bench::offload_check;
use dwcp_provisioning::schema::GpuMode;

#[test]
fn the_pipeline_with_offload_on_through_the_cuda_engine_matches_the_cpu() {
    let dir = std::env::temp_dir().join(format!("dwcp-sim-cuda-{}", std::process::id()));
    let lib = dwcp_kernels::sim::build(&dir).unwrap_or_else(|e| panic!("{e}"));
    dwcp_kernels::cuda::use_driver(&lib).expect("load the simulated driver");
    let c = offload_check(GpuMode::On, 500, dwcp_dataplane::worker::BURST);
    let text = c.text();
    assert!(
        text.contains(dwcp_kernels::sim::DEVICE_NAME),
        "the CUDA engine on the simulated device: {text}"
    );
    assert_eq!(c.mismatches, 0, "{text}");
    assert_eq!(c.batches, [0, 64], "every batch on the GPU path: {text}");
}

#[test]
fn a_gpu_giving_wrong_answers_is_kept_out_at_start_up_and_the_cpu_carries_the_traffic() {
    let dir = std::env::temp_dir().join(format!("dwcp-sim-cuda-wrong-{}", std::process::id()));
    let lib = dwcp_kernels::sim::build(&dir).unwrap_or_else(|e| panic!("{e}"));
    // From its first launch on, every copy back from the simulated GPU has a bit flipped and
    // no error is reported: only comparing answers shows it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dwcp-dataplane"))
        .args(["bench", "pipeline", "--offload", "auto", "--packets", "300"])
        .args(["--seconds", "0.01"])
        .env("DWCP_LIBCUDA", &lib)
        .env("DWCP_SIM_INJECT", "corrupt:1")
        .output()
        .expect("run dwcp-dataplane");
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        first.starts_with("offload engine cpu (offload.gpu = auto, but GPU "),
        "{first}"
    );
    assert!(first.contains(dwcp_kernels::sim::DEVICE_NAME), "{first}");
    assert!(
        first.contains(" failed its start-up check against the CPU engine: seal "),
        "{first}"
    );
    assert!(text.contains(" 0 mismatches; "), "{text}");
    assert!(
        text.contains("engine batches cpu 40 gpu 0, 0 of them split "),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_gpu_turning_wrong_after_its_start_up_check_is_caught_in_traffic_and_no_wrong_packet_leaves() {
    let dir = std::env::temp_dir().join(format!("dwcp-sim-cuda-late-{}", std::process::id()));
    let lib = dwcp_kernels::sim::build(&dir).unwrap_or_else(|e| panic!("{e}"));
    // Right through the start-up check's launches, then every copy back has a bit flipped.
    let inject = format!("corrupt:{}", dwcp_kernels::dispatch::selftest::LAUNCHES + 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dwcp-dataplane"))
        .args(["bench", "pipeline", "--offload", "on", "--packets", "300"])
        .args(["--seconds", "0.01"])
        .env("DWCP_LIBCUDA", &lib)
        .env("DWCP_SIM_INJECT", &inject)
        .output()
        .expect("run dwcp-dataplane");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("offload engine gpu (") && first.contains("passed its start-up check"),
        "{first}"
    );
    // The first GPU batch of each operation is checked: the first wrong one is caught, its
    // packets leave with the CPU's results, and the GPU gets no more traffic (a bit flipped
    // where no packet's result lies, as in a batch of incompressible packets, is harmless).
    assert!(text.contains(" 0 mismatches; "), "{text}");
    assert!(text.contains(", wrong 1, packets corrected "), "{text}");
    assert!(
        text.contains("  last GPU failure: ")
            && text.contains(" packets in a checked batch were wrong, the first: "),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
