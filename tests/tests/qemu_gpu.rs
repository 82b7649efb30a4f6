//! The GPU image (`dwcp image build --gpu`) under QEMU, which has no NVIDIA GPU: init loads
//! the kernel modules the driver needs, tries the driver, and says in one line that this node
//! has no GPU; the data plane loads the image's libcuda, hears from the driver that there is
//! no device, and comes up READY on the CPU engine, saying why. Then the same image with the
//! simulated driver (decision 0013) in libcuda's place: the appliance's data plane compiles
//! the kernels with the image's NVRTC inside the VM and comes up READY on the GPU engine, and
//! with a stand-in NVML in its place too, the console's `status` reports that GPU.

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
    let (mut vm, _dir) = boot_from(artifacts, "gpu-image", &config, &[], |_| {}).unwrap();
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

#[test]
fn gpu_image_on_the_simulated_driver_boots_ready_on_the_gpu_engine() {
    if !require_qemu("gpu_image_on_the_simulated_driver_boots_ready_on_the_gpu_engine") {
        return;
    }
    let artifacts = gpu_artifacts();
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = dwcp_kernels::sim::build(sim_dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let nvml = dwcp_kernels::sim::build_nvml(sim_dir.path()).unwrap_or_else(|e| panic!("{e}"));
    // The stand-ins take the place of the image's libcuda and NVML (the files their links
    // name).
    let driver = dwcp_image::nvidia::NvidiaPin::committed().driver;
    let mut layer = dwcp_image::initramfs::Initramfs::new();
    for (lib, path) in [("libcuda", &sim), ("libnvidia-ml", &nvml)] {
        layer.file(
            &format!("usr/lib/x86_64-linux-gnu/{lib}.so.{driver}"),
            std::fs::read(path).unwrap(),
            0o755,
        );
    }
    let layer = layer.to_gzip().unwrap();
    let _one = qemu_lock();
    let config =
        dwcp_provisioning::example::qemu_example().unwrap() + "\n[offload]\ngpu = \"on\"\n";
    let (mut vm, _dir) = boot_from(artifacts, "gpu-image-sim", &config, &[layer], |_| {}).unwrap();
    // NVRTC compiles both sources under TCG first: give it longer than a plain boot.
    let ready = vm.wait_for("DWCP READY", BOOT_TIMEOUT * 2).unwrap();
    eprintln!("boot: {ready}");
    let console = vm.console();
    let engine = console
        .lines()
        .find(|l| l.contains("dwcp-dataplane: offload engine"))
        .unwrap_or_else(|| panic!("no engine line:\n{console}"));
    let nvrtc = dwcp_image::nvidia::NvidiaPin::committed().nvrtc.version;
    let nvrtc = nvrtc.rsplit_once('.').unwrap().0;
    assert!(
        engine.contains(&format!(
            "offload engine gpu: GPU {}",
            dwcp_kernels::sim::DEVICE_NAME
        )) && engine.contains(&format!("kernels compiled by NVRTC {nvrtc} for")),
        "{engine}"
    );
    // The kernels NVRTC compiled in the VM agree with the CPU engine before any traffic.
    assert!(
        engine.contains("passed its start-up check against the CPU engine (160 jobs, "),
        "{engine}"
    );
    // The gathering thread runs on the housekeeping core, and `status` reports the GPU path.
    assert!(engine.contains("by a thread on core 0"), "{engine}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    vm.send_line("status").unwrap();
    let offload = vm
        .wait_for("status: offload", std::time::Duration::from_secs(30))
        .unwrap();
    assert!(offload.contains("status: offload gpu"), "{offload}");
    // With the GPU's status from NVML, for the device the engine runs on.
    let gpu = dwcp_kernels::sim::NVML_DEVICE;
    assert!(
        offload.contains(&format!(
            "| gpu {} at PCI {} | memory {} MiB free of {} MiB | utilisation {}% | temperature {}C | power {} W | clocks held down by sw_thermal_slowdown | ECC errors {} corrected, {} uncorrected |",
            gpu.name,
            gpu.pci_bus_id,
            gpu.memory_free >> 20,
            gpu.memory_total >> 20,
            gpu.utilization_pct,
            gpu.temperature_c,
            (gpu.power_mw + 500) / 1000,
            gpu.ecc_errors.0,
            gpu.ecc_errors.1
        )),
        "{offload}"
    );
}
