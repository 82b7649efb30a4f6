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
    let c = offload_check(GpuMode::On, 500);
    let text = c.text();
    assert!(
        text.contains(dwcp_kernels::sim::DEVICE_NAME),
        "the CUDA engine on the simulated device: {text}"
    );
    assert_eq!(c.mismatches, 0, "{text}");
    assert_eq!(c.batches, [0, 64], "every batch on the GPU path: {text}");
}
