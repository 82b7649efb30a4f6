//! The RDMA transport under QEMU (TCG) with Soft-RoCE made by init: two appliances carry
//! site A's traffic to site B as RDMA SENDs (`dwcp demo --rdma`'s code path, small sizes),
//! the plaintext never shows on the RDMA link, the queue-pair counters move, and traffic comes
//! back after a data plane is killed; and bad RDMA configs end in safe mode with one
//! sentence naming what is wrong.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use dwcp_cli::demo::{self, DemoOptions};
use dwcp_tests::{BOOT_TIMEOUT, boot, qemu_lock, require_qemu};

#[test]
fn two_appliances_carry_a_site_s_traffic_over_soft_roce_and_recover_from_a_restart() {
    if !require_qemu("two_appliances_carry_a_site_s_traffic_over_soft_roce") {
        return;
    }
    assert!(
        dwcp_tests::netns::is_root(),
        "the RDMA demo needs root: run scripts/test.sh as root"
    );
    let _one = qemu_lock();
    let opts = DemoOptions {
        mib: 4,
        step_mib: 1,
        pings: 20,
        kvm: false,
        artifacts: dwcp_tests::artifacts().to_path_buf(),
        progress: true,
        backend: demo::DataPath::AfPacket,
        rdma: true,
    };
    let report = demo::run_demo(&opts).unwrap();
    eprintln!("{}", demo::table(&report));
    assert_eq!(report.transfer.bytes, 4 << 20);
    assert_eq!(report.transfer.sha256_sent, report.transfer.sha256_received);
    assert!(report.mixed.sha256_match);
    assert_eq!(report.latency_ms.samples, 20, "every ping answered");
    let r = report.rdma.expect("an RDMA report");
    // The data went over the RDMA link, as RoCEv2, and never in plaintext.
    assert!(r.roce_frames > 1000, "{r:?}");
    assert_eq!(
        r.marker_seen, 0,
        "the marker crossed the RDMA link in plaintext"
    );
    assert_eq!(r.marker_pings, 10, "every marker ping answered");
    // Both appliances' queue pairs carried it, each way.
    assert!(r.sends_a > 2000 && r.receives_b >= r.sends_a - 100, "{r:?}");
    assert!(r.sends_b > 100 && r.receives_a >= r.sends_b - 100, "{r:?}");
    // Not by the WAN port: its counters saw the handshakes and control records only.
    assert!(report.a_to_b.bytes < 1 << 20, "{:?}", report.a_to_b);
    // Site B's data plane was killed: site A's queue pair broke, was made again and traffic
    // came back over a new one.
    assert!(r.reconnects_a >= 1, "{r:?}");
    assert!(r.sends_a_after > 0, "{r:?}");
    assert!(r.recovery_s < 60.0, "{r:?}");
    // The console's status shows the queue pair connected again, and the reconnect.
    assert!(
        r.status_a.starts_with("rdma site-b: qp rts sends "),
        "{}",
        r.status_a
    );
    assert!(
        r.status_a.contains(" reconnects ") && !r.status_a.ends_with(" reconnects 0"),
        "{}",
        r.status_a
    );
    // `bench rdma` ran on the appliance: a row per size, every figure measured.
    assert_eq!(r.bench.len(), 4, "{:?}", r.bench);
    assert!(
        r.bench.iter().all(|b| b[1..].iter().all(|&v| v > 0.0)),
        "{:?}",
        r.bench
    );
}

/// Site A's QEMU config with a Soft-RoCE device on a fourth NIC (`eth3`) and the peer on RDMA.
fn rdma_config(device: &str, soft_roce: bool, gid_index: u8) -> String {
    let config = dwcp_provisioning::example::qemu_example().unwrap();
    let config = config.replace(
        "[tunnel]\n",
        &format!(
            "[[rdma]]\ndevice = \"{device}\"\ninterface = \"eth3\"\naddress = \"192.168.50.1/24\"\nsoft_roce = {soft_roce}\n\n[tunnel]\n"
        ),
    );
    config.replace(
        "allowed_prefixes = [\"10.2.0.0/16\"]\n",
        &format!(
            "allowed_prefixes = [\"10.2.0.0/16\"]\ntransport = \"rdma\"\nrdma = {{ device = \"{device}\", gid_index = {gid_index} }}\n"
        ),
    )
}

fn with_fourth_nic(spec: &mut dwcp_qemu::VmSpec) {
    spec.nics.push(dwcp_qemu::Nic {
        model: "virtio-net-pci".into(),
        mac: "52:54:00:00:00:05".into(),
        slot: Some(demo::rdma::SLOT),
        netdev: "user".into(),
        dump: None,
    });
}

#[test]
fn a_missing_rdma_device_and_a_gid_index_that_does_not_exist_are_named_in_safe_mode() {
    if !require_qemu("a_missing_rdma_device_and_a_gid_index_that_does_not_exist") {
        return;
    }
    let _one = qemu_lock();
    // A GID index with no GID: init makes rxe0, the data plane refuses it in one sentence,
    // exits 6, and init's safe mode repeats the sentence without a restart loop.
    let config = rdma_config("rxe0", true, 9);
    dwcp_provisioning::check(&dwcp_provisioning::SourceFile::new("c", config.as_str()))
        .unwrap_or_else(|d| panic!("{}", d[0]));
    let (mut vm, _dir) = boot("rdma-bad-gid", &config, with_fourth_nic).unwrap();
    let safe = vm
        .wait_for("SAFE MODE: the data plane cannot start", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        safe.contains("peer `site-b` (transport rdma): RDMA device rxe0 port 1 GID index 9"),
        "{safe}"
    );
    let console = vm.console();
    assert!(
        console.contains("rdma: rxe0 on eth3 (192.168.50.1/24), Soft-RoCE"),
        "{console}"
    );
    assert!(
        console.contains("dataplane: exited (exit code 6: this node cannot run the config)"),
        "{console}"
    );
    assert!(
        !console.contains("restarting in"),
        "no restart loop: {console}"
    );
    vm.send_line("poweroff").unwrap();
    vm.wait_for("shutdown: clean", Duration::from_secs(60))
        .unwrap();
    drop(vm);

    // A hardware RDMA device this node does not have: init names it and keeps the data plane
    // down.
    let config = rdma_config("mlx5_0", false, 1);
    let (mut vm, _dir) = boot("rdma-no-device", &config, with_fourth_nic).unwrap();
    let safe = vm
        .wait_for(
            "SAFE MODE: the node does not match its config",
            BOOT_TIMEOUT,
        )
        .unwrap();
    let reason = vm
        .wait_for("rdma mlx5_0: no such RDMA device", Duration::from_secs(30))
        .unwrap();
    assert!(
        reason.contains("a ConnectX needs mlx5_core and mlx5_ib"),
        "{safe}\n{reason}"
    );
    assert!(!vm.console().contains("DWCP READY"));
    vm.send_line("poweroff").unwrap();
    vm.wait_for("shutdown: clean", Duration::from_secs(60))
        .unwrap();
}
