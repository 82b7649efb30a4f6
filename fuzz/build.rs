//! Builds the GPU's LZ4 code for the host (`shim/lz4_device.cpp`): the serial device functions
//! of `lz4.cu`, and its kernels under the simulated driver's SIMT emulator (`simt.h`), so the
//! `lz4_device` target fuzzes the GPU's own code.

fn main() {
    println!("cargo:rerun-if-changed=shim/lz4_device.cpp");
    println!("cargo:rerun-if-changed=../kernels/cuda/lz4.cu");
    println!("cargo:rerun-if-changed=../kernels/cuda/common.cuh");
    println!("cargo:rerun-if-changed=../kernels/cuda/gcm.cu");
    println!("cargo:rerun-if-changed=../kernels/cuda/simt.h");
    cc::Build::new()
        .cpp(true)
        .file("shim/lz4_device.cpp")
        .include("../kernels/cuda")
        .flag("-std=c++17")
        .flag("-Wall")
        .flag("-Wextra")
        .warnings_into_errors(true)
        .opt_level(2)
        .compile("dwcp_lz4_device");
}
