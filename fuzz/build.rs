//! Builds the GPU's code for the host (`shim/device.cpp`): the serial LZ4 device functions of
//! `lz4.cu`, and the LZ4 and GCM kernels under the simulated driver's SIMT emulator
//! (`simt.h`), so the `lz4_device` and `gcm_device` targets fuzz the GPU's own code.

fn main() {
    println!("cargo:rerun-if-changed=shim/device.cpp");
    println!("cargo:rerun-if-changed=../kernels/cuda/lz4.cu");
    println!("cargo:rerun-if-changed=../kernels/cuda/common.cuh");
    println!("cargo:rerun-if-changed=../kernels/cuda/gcm.cu");
    println!("cargo:rerun-if-changed=../kernels/sim/simt.h");
    cc::Build::new()
        .cpp(true)
        .file("shim/device.cpp")
        .include("../kernels/cuda")
        .include("../kernels/sim")
        .flag("-std=c++17")
        .flag("-Wall")
        .flag("-Wextra")
        .warnings_into_errors(true)
        .opt_level(2)
        .compile("dwcp_fuzz_device");
}
