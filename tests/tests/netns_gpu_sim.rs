//! The image's data-plane binary on the GPU path with real traffic, on machines without a GPU:
//! two gateways with `offload.gpu = "on"` load the simulated CUDA driver (`DWCP_LIBCUDA`,
//! `dwcp_kernels::sim`, decision 0013), so NVRTC compiles the kernels in the data plane and
//! every seal, open, compress and decompress batch goes through the gathering thread and the
//! CUDA engine to the real kernels run on the CPU; ping and a TCP transfer cross the tunnel
//! intact. Then the simulated GPU gives wrong answers without an error after its start-up
//! check: a batch checked against the CPU engine catches it, the wrong packets leave with the
//! CPU's results and the transfer arrives intact. Then the simulated GPU hangs in a kernel: the watchdog stops the data plane with
//! exit code 7 and says why, and started again as init does (`DWCP_GPU_DISABLED`), it carries
//! the traffic on the CPU engine.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use std::time::{Duration, Instant};

use dwcp_tests::netns::{
    GatewayConfig, Lab, Sites, checked_transfer, is_root, metric, metric_f, wait_for_line,
};

/// Pings host B from host A `count` times: whether none was lost, and ping's report.
fn ping(lab: &Lab, ha: &str, count: &str) -> (bool, String) {
    let out = lab
        .command(ha, "ping")
        .args(["-c", count, "-i", "0.2", "-W", "3", "10.2.0.2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success() && text.contains(" 0% packet loss"),
        text,
    )
}

#[test]
fn gateways_on_the_simulated_gpu_carry_traffic_and_a_hung_gpu_leaves_it_to_the_cpu() {
    assert!(
        is_root(),
        "the netns tier needs root (network namespaces, veth, AF_PACKET): run scripts/test.sh as root"
    );
    let dataplane = dwcp_tests::binaries().1;
    let dp = dataplane.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sim = dwcp_kernels::sim::build(&dir.path().join("sim")).unwrap_or_else(|e| panic!("{e}"));
    let libcuda = format!("DWCP_LIBCUDA={}", sim.display());
    let nvml =
        dwcp_kernels::sim::build_nvml(&dir.path().join("nvml")).unwrap_or_else(|e| panic!("{e}"));
    let libnvml = format!("DWCP_LIBNVML={}", nvml.display());
    let mut lab = Lab::new("g");
    let Sites {
        ha,
        ga,
        gb,
        hb,
        ga_ports: (ga_lan, ga_wan),
        gb_ports: (gb_lan, gb_wan),
    } = lab.two_sites();
    let n = |s: &str| lab.name(s);
    let (ga_mgmt, ga_mgmt2, gb_mgmt, gb_mgmt2) = (n("gam"), n("gam2"), n("gbm"), n("gbm2"));
    // Each gateway's management port is a veth looped within its namespace: the test scrapes
    // the metrics from there.
    lab.veth(&ga, &ga_mgmt, &ga, &ga_mgmt2);
    lab.veth(&gb, &gb_mgmt, &gb, &gb_mgmt2);
    lab.exec(
        &ga,
        "ip",
        &["addr", "add", "192.0.2.10/24", "dev", &ga_mgmt],
    );
    lab.exec(
        &gb,
        "ip",
        &["addr", "add", "192.0.3.10/24", "dev", &gb_mgmt],
    );

    let key_a = dwcp_provisioning::types::PrivateKey::generate().unwrap();
    let key_b = dwcp_provisioning::types::PrivateKey::generate().unwrap();
    let gpu_on = "[offload]\ngpu = \"on\"\n";
    let cfg_a = dir.path().join("a.toml");
    let cfg_b = dir.path().join("b.toml");
    let config = GatewayConfig {
        name: "gw-a",
        mgmt: (&ga_mgmt, "192.0.2.10"),
        lan: (&ga_lan, "10.1.0.1/24"),
        wan: (&ga_wan, "198.51.100.1/30"),
        private_key: key_a.expose_base64(),
        peer_public_key: key_b.public_key().to_string(),
        endpoint: "198.51.100.2:51900",
        allowed: "10.2.0.0/16",
        cores: (0, 1),
        dpdk: false,
        extra: gpu_on,
    };
    std::fs::write(&cfg_a, config.text()).unwrap();
    let config = GatewayConfig {
        name: "gw-b",
        mgmt: (&gb_mgmt, "192.0.3.10"),
        lan: (&gb_lan, "10.2.0.1/24"),
        wan: (&gb_wan, "198.51.100.2/30"),
        private_key: key_b.expose_base64(),
        peer_public_key: key_a.public_key().to_string(),
        endpoint: "198.51.100.1:51900",
        allowed: "10.1.0.0/16",
        cores: (1, 0),
        ..config
    };
    std::fs::write(&cfg_b, config.text()).unwrap();
    let (cfg_a, cfg_b) = (cfg_a.to_str().unwrap(), cfg_b.to_str().unwrap());
    let log_a = dir.path().join("gw-a.log");
    let log_b = dir.path().join("gw-b.log");
    // Gateway A has NVML (the stand-in) for its GPU status, gateway B none.
    let gw_a = lab.spawn(
        &ga,
        "env",
        &[&libcuda, &libnvml, dp, "--config", cfg_a],
        &log_a,
    );
    lab.spawn(&gb, "env", &[&libcuda, dp, "--config", cfg_b], &log_b);
    for log in [&log_a, &log_b] {
        let line = wait_for_line(log, "offload engine", Duration::from_secs(60));
        assert!(
            line.contains("offload engine gpu")
                && line.contains(dwcp_kernels::sim::DEVICE_NAME)
                && line.contains("PCI 0000:41:00.0")
                && line.contains("passed its start-up check against the CPU engine"),
            "the GPU engine on the simulated device, checked: {line}"
        );
        wait_for_line(log, "dwcp-dataplane: ready", Duration::from_secs(60));
    }
    let status = wait_for_line(&log_a, "GPU status", Duration::from_secs(1));
    assert!(
        status.ends_with(&format!(
            "GPU status from NVML ({}) for the GPU at PCI 0000:41:00.0",
            nvml.display()
        )),
        "{status}"
    );
    let status = wait_for_line(&log_b, "GPU status", Duration::from_secs(1));
    assert!(
        status.contains("WARNING: no GPU status") && status.contains("NVML"),
        "{status}"
    );

    let (ok, text) = ping(&lab, &ha, "5");
    assert!(
        ok,
        "ping over the simulated GPU failed:\n{text}\n{}",
        std::fs::read_to_string(&log_a).unwrap_or_default()
    );

    // 2 MiB of log-like text (compressible: LZ4 runs on the GPU path too), checked by SHA-256.
    let sent = checked_transfer(&mut lab, dir.path(), (&ha, &hb), 2, "text");
    eprintln!("TCP over the simulated GPU: {}", sent.join(" "));

    // Every batch went to the GPU path, none fell back, and LZ4 ran there.
    let scrape = |lab: &Lab| {
        let out = lab
            .command(&ga, "curl")
            .args(["-s", "-m", "3", "http://192.0.2.10:9100/metrics"])
            .output()
            .unwrap();
        assert!(out.status.success(), "gateway A's metrics did not answer");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let m = scrape(&lab);
    let batches = |op: &str, engine: &str| {
        metric(
            &m,
            &format!("dwcp_offload_batches_total{{node=\"gw-a\",op=\"{op}\",engine=\"{engine}\"}}"),
        )
    };
    for op in ["seal", "open", "compress"] {
        assert!(batches(op, "gpu") > 0, "{op} on the GPU path:\n{m}");
        assert_eq!(batches(op, "cpu"), 0, "{op} on the CPU:\n{m}");
        // The GPU's busy time is counted (the operators' achieved rate: bytes over it).
        let busy = metric_f(
            &m,
            &format!("dwcp_offload_busy_seconds_total{{node=\"gw-a\",op=\"{op}\",engine=\"gpu\"}}"),
        );
        assert!(busy > 0.0, "{op}: GPU busy {busy} s:\n{m}");
    }
    assert_eq!(
        metric(&m, "dwcp_offload_fallback_packets_total{node=\"gw-a\"}"),
        0
    );
    assert_eq!(
        metric(&m, "dwcp_offload_declined_packets_total{node=\"gw-a\"}"),
        0
    );
    assert!(metric(&m, "dwcp_compressed_packets_total{node=\"gw-a\"}") > 100);
    // The GPU's status from NVML: the engine's own device (NVML lists another GPU first).
    let gpu = dwcp_kernels::sim::NVML_DEVICE;
    assert_eq!(
        metric(
            &m,
            &format!(
                "dwcp_gpu_info{{node=\"gw-a\",name=\"{}\",pci_bus_id=\"{}\"}}",
                gpu.name, gpu.pci_bus_id
            )
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "dwcp_gpu_memory_total_bytes{node=\"gw-a\"}"),
        gpu.memory_total
    );
    assert_eq!(
        metric(&m, "dwcp_gpu_temperature_celsius{node=\"gw-a\"}"),
        u64::from(gpu.temperature_c)
    );
    assert_eq!(
        metric(
            &m,
            "dwcp_gpu_ecc_errors_total{node=\"gw-a\",kind=\"corrected\"}"
        ),
        gpu.ecc_errors.0
    );
    assert_eq!(
        metric(
            &m,
            "dwcp_gpu_clock_event_reason{node=\"gw-a\",reason=\"sw_thermal_slowdown\"}"
        ),
        1
    );
    let watts = metric_f(&m, "dwcp_gpu_power_watts{node=\"gw-a\"}");
    assert!(
        (watts - f64::from(gpu.power_mw) / 1000.0).abs() < 1e-6,
        "{watts} W"
    );
    // Sampled by its own thread every 2 s: the sample is fresh.
    let age = metric_f(&m, "dwcp_gpu_status_age_seconds{node=\"gw-a\"}");
    assert!((0.0..5.0).contains(&age), "GPU status {age} s old");
    // A sample of the GPU's batches was checked against the CPU engine whole, one packet of
    // the others, and all were right.
    assert!(metric(&m, "dwcp_offload_gpu_checked_batches_total{node=\"gw-a\"}") >= 3);
    assert!(
        metric(
            &m,
            "dwcp_offload_gpu_spot_checked_batches_total{node=\"gw-a\"}"
        ) >= 1
    );
    assert_eq!(
        metric(&m, "dwcp_offload_gpu_wrong_batches_total{node=\"gw-a\"}"),
        0
    );

    // Gateway A again, its simulated GPU giving wrong answers without an error from the first
    // launch after its start-up check: a checked batch catches it, its wrong packets leave
    // with the CPU engine's results, the GPU is kept out, and the transfer arrives intact.
    // Stops gateway A's data plane `old` and starts it again with the simulated GPU fault
    // `inject` (`DWCP_SIM_INJECT`), logging to `log`.
    let restart_a = |lab: &mut Lab, old: usize, inject: String, log: &std::path::Path| {
        lab.child(old).kill().unwrap();
        let _ = lab.child(old).wait();
        let inject = format!("DWCP_SIM_INJECT={inject}");
        lab.spawn(&ga, "env", &[&libcuda, &inject, dp, "--config", cfg_a], log)
    };
    let log_wrong = dir.path().join("gw-a-wrong.log");
    let corrupt = format!("corrupt:{}", dwcp_kernels::dispatch::selftest::LAUNCHES + 1);
    let gw_a = restart_a(&mut lab, gw_a, corrupt, &log_wrong);
    let line = wait_for_line(&log_wrong, "offload engine", Duration::from_secs(60));
    assert!(line.contains("passed its start-up check"), "{line}");
    wait_for_line(&log_wrong, "dwcp-dataplane: ready", Duration::from_secs(60));
    let sent = checked_transfer(&mut lab, dir.path(), (&ha, &hb), 1, "text");
    eprintln!("TCP over a simulated GPU turning wrong: {}", sent.join(" "));
    let m = scrape(&lab);
    assert!(
        metric(&m, "dwcp_offload_gpu_wrong_batches_total{node=\"gw-a\"}") >= 1
            && metric(&m, "dwcp_offload_corrected_packets_total{node=\"gw-a\"}") >= 1,
        "the wrong GPU was not caught:\n{m}"
    );
    assert_eq!(
        metric(&m, "dwcp_offload_gpu_healthy_workers{node=\"gw-a\"}"),
        0,
        "{m}"
    );
    // The operator is told why, once.
    let line = wait_for_line(&log_wrong, "GPU unhealthy", Duration::from_secs(10));
    assert!(
        line.contains(" packets in a checked batch were wrong, the first: ")
            && line.ends_with("until the GPU passes its start-up check again"),
        "{line}"
    );
    eprintln!("{line}");

    // Gateway A again, its simulated GPU hanging for a minute in its fourth launch after the
    // start-up check's.
    let log_hang = dir.path().join("gw-a-hang.log");
    let hang = format!(
        "hang:{}:60000",
        dwcp_kernels::dispatch::selftest::LAUNCHES + 4
    );
    let hung = restart_a(&mut lab, gw_a, hang, &log_hang);
    wait_for_line(&log_hang, "dwcp-dataplane: ready", Duration::from_secs(60));
    let t0 = Instant::now();
    // Traffic until the watchdog acts (the pings themselves may be lost).
    while lab.child(hung).try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the data plane did not leave a hung GPU:\n{}",
            std::fs::read_to_string(&log_hang).unwrap_or_default()
        );
        let _ = ping(&lab, &ha, "1");
    }
    let status = lab.child(hung).wait().unwrap();
    let said = std::fs::read_to_string(&log_hang).unwrap_or_default();
    assert_eq!(status.code(), Some(7), "exit code for a hung GPU:\n{said}");
    assert!(
        said.contains("the GPU hung: one batch has been in the driver for"),
        "{said}"
    );
    eprintln!("hung GPU left after {:.1} s", t0.elapsed().as_secs_f64());

    // Started again as init does after code 7: the CPU engine, saying why, and traffic flows.
    let log_cpu = dir.path().join("gw-a-cpu.log");
    let why = "DWCP_GPU_DISABLED=the GPU hung: one batch has been in the driver for 5.0 s";
    lab.spawn(
        &ga,
        "env",
        &[&libcuda, why, dp, "--config", cfg_a],
        &log_cpu,
    );
    let line = wait_for_line(&log_cpu, "offload engine", Duration::from_secs(60));
    assert!(
        line.contains("offload engine cpu") && line.contains("disabled until the next boot"),
        "{line}"
    );
    wait_for_line(&log_cpu, "dwcp-dataplane: ready", Duration::from_secs(60));
    let (ok, text) = ping(&lab, &ha, "5");
    assert!(ok, "ping on the CPU engine after the hang failed:\n{text}");
}
