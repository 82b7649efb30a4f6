//! `dwcp demo`'s code path end to end (small sizes): two appliances in QEMU carry site A's
//! traffic to site B, the report comes from the run, and afterwards no namespace, TAP device
//! or QEMU process of the demo is left.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use std::process::Command;

use dwcp_cli::demo::{self, DemoOptions, NS_A, NS_B, TAPS};

fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    for ns in [NS_A, NS_B] {
        if String::from_utf8_lossy(&netns.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns))
        {
            found.push(format!("namespace {ns}"));
        }
    }
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    for tap in TAPS {
        if String::from_utf8_lossy(&links.stdout).contains(tap) {
            found.push(format!("TAP {tap}"));
        }
    }
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    for line in String::from_utf8_lossy(&ps.stdout).lines() {
        if line.starts_with("qemu-system") && TAPS.iter().any(|t| line.contains(t)) {
            found.push(format!("QEMU process: {line}"));
        }
    }
    found
}

#[test]
fn demo_carries_traffic_reports_and_leaves_nothing_behind() {
    if !dwcp_tests::require_qemu("demo_carries_traffic_reports_and_leaves_nothing_behind") {
        return;
    }
    assert!(
        dwcp_tests::netns::is_root(),
        "the demo needs root: run scripts/test.sh as root"
    );
    let _one = dwcp_tests::qemu_lock();
    let opts = DemoOptions {
        mib: 8,
        step_mib: 1,
        pings: 30,
        kvm: false,
        artifacts: dwcp_tests::artifacts().to_path_buf(),
        progress: true,
        backend: demo::DataPath::Dpdk,
        rdma: false,
    };
    let report = demo::run_demo(&opts);
    let left = leftovers();
    let report = report.unwrap();
    eprintln!("{}", demo::table(&report));
    assert!(left.is_empty(), "the demo left behind: {left:?}");
    assert_eq!(report.transfer.bytes, 8 << 20);
    assert_eq!(report.transfer.sha256_sent, report.transfer.sha256_received);
    assert_eq!(report.transfer.sha256_sent.len(), 64);
    assert_eq!(report.latency_ms.samples, 30, "every ping answered");
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.p50 <= report.latency_ms.p99);
    assert!(
        report.handshake_ms > 0.0,
        "handshake time comes from site A's metrics"
    );
    // The WAN counters saw at least the transferred bytes going A → B.
    assert!(report.a_to_b.bytes > 8 << 20, "{:?}", report.a_to_b);
    assert!(report.b_to_a.packets > 0);
    assert_eq!(report.step_load.len(), 3);
    assert!(report.step_load.iter().all(|(_, mbps)| *mbps > 0.0));
    assert_eq!(report.engine, "cpu");
    // A real Prometheus scraped both appliances and answered a PromQL query over the run.
    assert!(
        report.prometheus.starts_with("peak A → B "),
        "{}",
        report.prometheus
    );
    // The transfer is random: site A tried LZ4 on it in vain, then stopped trying.
    let [shrunk, in_vain, not_tried] = report.compression_packets[0];
    assert!(
        in_vain >= 16 && not_tried > in_vain && not_tried > shrunk,
        "site A LZ4 payloads: {shrunk} shrunk, {in_vain} in vain, {not_tried} not tried"
    );
    // The mixed load: a random and a text stream at once, two flows with LZ4 gates of their
    // own (checked in dataplane's `the_demo_mixed_streams_have_gates_of_their_own`): the text
    // is compressed all along while the random stream stops being tried.
    let m = &report.mixed;
    assert_eq!(m.bytes, 1 << 20);
    assert!(m.sha256_match, "{m:?}");
    assert!(m.random_mbps > 0.0 && m.text_mbps > 0.0, "{m:?}");
    let [shrunk, in_vain, not_tried] = m.packets;
    // 1 MiB of text is about 740 full segments; the handshake's and the last few are small.
    assert!(shrunk >= 600, "text payloads compressed: {m:?}");
    assert!(m.ratio > 1.5, "text compression ratio: {m:?}");
    assert!(
        not_tried >= 500 && not_tried > 4 * in_vain,
        "the random stream backed off: {m:?}"
    );
    // Kernel bypass: both appliances drove their e1000e NICs with DPDK through vfio-pci.
    assert_eq!(
        report.data_path,
        "dpdk (e1000 PMD), vfio-pci 0000:00:03.0,0000:00:04.0, 1 GiB hugepages 1"
    );
    assert!(report.boot_ms.iter().all(|&b| b > 0));
}
