//! The GPU image (`dwcp image build --gpu`, decision 0015) on a machine without a GPU: the
//! NVIDIA kernel modules are built for the image's kernel and carried where init loads them,
//! with the modules and firmware they need; every NVIDIA library resolves inside the image;
//! the CUDA engine calls nothing the image's libcuda lacks; and the image's data plane,
//! on the image's own libraries, compiles the kernels with the image's NVRTC and runs the GPU
//! path (on the simulated driver) with the CPU engine's output.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use dwcp_cli::image_build;
use dwcp_image::nvidia::{self, NvidiaPin};
use object::{Object as _, ObjectSymbol as _};

/// The pinned NVRTC's `major.minor` (`12.4` of `12.4.127`).
fn nvrtc_major_minor(pin: &NvidiaPin) -> String {
    pin.nvrtc
        .version
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn gpu_image_carries_the_driver_built_for_its_kernel() {
    let dir = dwcp_tests::gpu_artifacts();
    let pin = NvidiaPin::committed();
    let m = manifest(dir);
    assert_eq!(m["nvidia_driver"], pin.driver.as_str(), "manifest: {m}");
    let release = m["kernel_release"].as_str().unwrap().to_owned();
    let loaded: Vec<String> = m["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let (root, files) = dwcp_tests::unpack_initramfs(dir);

    // Init and the image builder agree on where the modules lie and in which order they load.
    assert_eq!(image_build::GPU_MODULE_DIR, dwcp_init::gpu::MODULE_DIR);
    assert_eq!(nvidia::MODULES, dwcp_init::gpu::MODULES);
    let mut firmware_wanted = BTreeSet::new();
    for name in nvidia::MODULES {
        let rel = format!(
            "lib/modules/{release}/{}/{name}",
            image_build::GPU_MODULE_DIR
        );
        assert!(files.contains_key(&rel), "{rel} missing from the GPU image");
        let info = dwcp_image::modules::modinfo(&root.path().join(&rel)).unwrap();
        let get = |k: &str| {
            info.iter()
                .filter(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            get("vermagic")[0].split_whitespace().next(),
            Some(release.as_str()),
            "{name} built for another kernel"
        );
        assert_eq!(get("version"), [pin.driver.as_str()], "{name}");
        // What it needs from the kernel is loaded before init's GPU step.
        for d in get("depends")[0].split(',').filter(|d| !d.is_empty()) {
            let d = dwcp_image::modules::canonical(d);
            assert!(
                d == "nvidia" || loaded.contains(&d),
                "{name} needs {d}, which the image does not load: {loaded:?}"
            );
        }
        firmware_wanted.extend(get("firmware"));
        // Not in modules.dep: init's generic step must not try them.
        let dep = String::from_utf8_lossy(&files[&format!("lib/modules/{release}/modules.dep")].1)
            .into_owned();
        assert!(!dep.contains(name), "{name} in modules.dep");
    }
    for fw in &pin.firmware {
        let rel = format!("nvidia/{}/{fw}", pin.driver);
        assert!(
            firmware_wanted.contains(&rel),
            "nvidia.ko does not ask for {rel}: {firmware_wanted:?}"
        );
        assert!(
            files.contains_key(&format!("lib/firmware/{rel}")),
            "{rel} missing from the image"
        );
    }

    // Every NVIDIA library resolves to the image's own files, through the image's loader
    // restricted to the image's library folders.
    let loader = root.path().join("lib64/ld-linux-x86-64.so.2");
    let libpath = format!(
        "{0}/usr/lib/x86_64-linux-gnu:{0}/lib/x86_64-linux-gnu",
        root.path().display()
    );
    let nvrtc = nvrtc_major_minor(&pin);
    for lib in [
        "libcuda.so.1".to_owned(),
        "libcuda.so".to_owned(),
        "libnvidia-ml.so.1".to_owned(),
        "libnvidia-ptxjitcompiler.so.1".to_owned(),
        format!("libnvrtc.so.{}", nvrtc.split('.').next().unwrap()),
        format!("libnvrtc-builtins.so.{nvrtc}"),
    ] {
        let lib = lib.as_str();
        let path = root.path().join("usr/lib/x86_64-linux-gnu").join(lib);
        assert!(
            path.exists(),
            "{lib} missing or a broken link in the GPU image"
        );
        let out = Command::new(&loader)
            .arg("--library-path")
            .arg(&libpath)
            .arg("--list")
            .arg(&path)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{lib}: {list}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in list.lines().filter(|l| l.contains("=>")) {
            assert!(
                line.contains(root.path().to_str().unwrap()),
                "{lib}: a library from outside the image: {line}"
            );
        }
    }

    // The disk image's ESP holds both slots of this larger image.
    let esp = image_build::esp_mib(dir).unwrap();
    let size = std::fs::metadata(dir.join("initrd.img")).unwrap().len();
    assert!(
        esp * (1 << 20) > 2 * size && esp > 96,
        "ESP {esp} MiB for a {size} B initramfs"
    );
    assert!(dir.join("disk.img").exists());
}

/// The functions whose names start with `prefix` that a shared library exports.
fn exports(path: &Path, prefix: &str) -> BTreeSet<String> {
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    file.dynamic_symbols()
        .filter(|s| s.is_definition())
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// What the stand-in `stand_in` exports (functions starting with `prefix`) and the image's
/// library `lib` does not, unless the image has the older entry point `fallbacks` names for it.
fn lacking(
    root: &Path,
    lib: &str,
    stand_in: &Path,
    prefix: &str,
    fallbacks: &[(&str, &str)],
) -> (BTreeSet<String>, Vec<String>) {
    let needed = exports(stand_in, prefix);
    let lib = std::fs::canonicalize(root.join("usr/lib/x86_64-linux-gnu").join(lib)).unwrap();
    let has = exports(&lib, prefix);
    let missing = needed
        .difference(&has)
        .filter(|n| {
            !fallbacks
                .iter()
                .any(|(preferred, fallback)| preferred == n && has.contains(*fallback))
        })
        .cloned()
        .collect();
    (needed, missing)
}

#[test]
fn the_cuda_engine_and_gpu_monitor_call_nothing_the_image_s_driver_lacks() {
    // The stand-ins implement exactly the driver calls the engine and cudarc make (built to
    // refuse anything else, decision 0013) and the NVML calls the GPU monitor makes through
    // nvml-wrapper (a call it lacks fails the monitor's tests), so their exports are what the
    // data plane needs; the image's libcuda and NVML (an older driver than the engine's CUDA
    // 13 bindings) must export every one.
    let dir = dwcp_tests::gpu_artifacts();
    let (root, _) = dwcp_tests::unpack_initramfs(dir);
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = dwcp_kernels::sim::build(sim_dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let nvml = dwcp_kernels::sim::build_nvml(sim_dir.path()).unwrap_or_else(|e| panic!("{e}"));
    // Where the engine falls back to an older entry point, the older one will do.
    let fallbacks = dwcp_kernels::cuda::DRIVER_FALLBACKS;
    let (needed, missing) = lacking(root.path(), "libcuda.so.1", &sim, "cu", fallbacks);
    assert!(
        needed.len() > 20 && needed.contains("cuLaunchKernel"),
        "{needed:?}"
    );
    assert!(missing.is_empty(), "the image's libcuda lacks {missing:?}");
    let (needed, missing) = lacking(root.path(), "libnvidia-ml.so.1", &nvml, "nvml", &[]);
    assert!(
        needed.len() >= 8 && needed.contains("nvmlDeviceGetHandleByPciBusId_v2"),
        "{needed:?}"
    );
    assert!(missing.is_empty(), "the image's NVML lacks {missing:?}");
}

#[test]
fn the_image_s_data_plane_runs_the_gpu_path_with_the_image_s_nvrtc() {
    let dir = dwcp_tests::gpu_artifacts();
    let (root, _) = dwcp_tests::unpack_initramfs(dir);
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = dwcp_kernels::sim::build(sim_dir.path()).unwrap_or_else(|e| panic!("{e}"));
    // An empty home: the NVRTC 13 that scripts/setup.sh caches there is out of reach, so only
    // the image's NVRTC (12.x) can compile the kernels.
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(root.path().join("lib64/ld-linux-x86-64.so.2"))
        .arg("--library-path")
        .arg(format!(
            "{0}/usr/lib/x86_64-linux-gnu:{0}/lib/x86_64-linux-gnu",
            root.path().display()
        ))
        .arg(root.path().join("usr/bin/dwcp-dataplane"))
        .args([
            "bench",
            "pipeline",
            "--offload",
            "on",
            "--packets",
            "300",
            "--seconds",
            "0.05",
        ])
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", "/usr/bin:/bin")
        .env("DWCP_LIBCUDA", &sim)
        .output()
        .unwrap();
    let said = dwcp_tests::output_text(&out);
    assert!(out.status.success(), "{said}");
    let check = said
        .lines()
        .skip_while(|l| !l.starts_with("offload engine"))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        check.starts_with("offload engine gpu") && check.contains(dwcp_kernels::sim::DEVICE_NAME),
        "the CUDA engine on the simulated device: {said}"
    );
    // The kernels the image's NVRTC compiled agree with the CPU engine.
    assert!(
        check.contains("passed its start-up check against the CPU engine"),
        "{said}"
    );
    assert!(
        check.contains(&format!(
            "kernels compiled by NVRTC {} for",
            nvrtc_major_minor(&NvidiaPin::committed())
        )),
        "the image's NVRTC compiled the kernels: {check}"
    );
    assert!(
        check.contains("300 packets each way, 0 mismatches"),
        "{check}"
    );
    assert!(
        check.contains("engine batches cpu 0 gpu"),
        "every batch on the GPU path: {check}"
    );
    // The first GPU batch of each operation was checked against the CPU engine, and right.
    assert!(
        check.contains(", wrong 0, packets corrected 0")
            && !check.contains("checked against the CPU engine 0 ("),
        "{check}"
    );
}
