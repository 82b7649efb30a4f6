//! The GPU image (`dwcp image build --gpu`) under QEMU, which has no NVIDIA GPU: init loads
//! the kernel modules the driver needs, tries the driver, and says in one line that this node
//! has no GPU; the data plane loads the image's libcuda, hears from the driver that there is
//! no device, and comes up READY on the CPU engine, saying why.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use dwcp_tests::{BOOT_TIMEOUT, boot_from, gpu_artifacts, qemu_lock, require_qemu};

#[test]
fn gpu_image_without_a_gpu_boots_ready_on_the_cpu_engine_and_says_why() {
    if !require_qemu("gpu_image_without_a_gpu_boots_ready_on_the_cpu_engine_and_says_why") {
        return;
    }
    let artifacts = gpu_artifacts();
    let _one = qemu_lock();
    let config = dwcp_provisioning::example::qemu_example().unwrap();
    let (mut vm, _dir) = boot_from(artifacts, "gpu-image", &config, |_| {}).unwrap();
    let ready = vm.wait_for("DWCP READY", BOOT_TIMEOUT).unwrap();
    eprintln!("boot: {ready}");
    let console = vm.console();
    let line = |needle: &str| {
        console
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` line on the console:\n{console}"))
            .to_owned()
    };
    // drm (nvidia.ko's dependency) came with the kernel's modules, and nothing failed.
    let modules = line("dwcp-init: modules:");
    assert!(!console.contains("modules: FAILED"), "{console}");
    eprintln!("{modules}");
    let gpu = line("dwcp-init: gpu:");
    assert!(
        gpu.contains("NVIDIA driver present, but no NVIDIA GPU on this node"),
        "{gpu}"
    );
    // The data plane found the image's libcuda and NVRTC: the driver itself says no device.
    let engine = line("dwcp-dataplane: offload engine");
    assert!(
        engine.contains("offload engine cpu: offload.gpu = auto, but no GPU engine: CUDA driver:"),
        "{engine}"
    );
    assert!(!engine.contains("no NVIDIA driver library"), "{engine}");
    // The console's `status` says it too.
    vm.send_line("status").unwrap();
    let status = vm
        .wait_for("status: gpu:", std::time::Duration::from_secs(30))
        .unwrap();
    assert!(status.contains("no NVIDIA GPU on this node"), "{status}");
}
